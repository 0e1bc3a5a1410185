"""The trainer's speed options: each one trains, and bad values are refused."""

import copy
import re

import pytest
import torch
from torch import nn

from cnnsweep.errors import UserError
from cnnsweep.train.loop import Trainer

from helpers import seed_cnn


def trainer(**changes) -> Trainer:
    settings = dict(
        epochs=1,
        device="cpu",
        progress=False,
        channels_last=False,
        eval_channels_last=None,
        compile=False,
        precision="fp32",
        threads=None,
        label_smoothing=0.0,
        ema_decay=None,
    )
    return Trainer(**(settings | changes))


def one_step(chosen: Trainer) -> tuple[torch.nn.Module, float]:
    from cnnsweep.train.data import Split

    torch.manual_seed(0)
    model = seed_cnn(dropout=0.0)  # dropout masks follow memory layout
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    # labels the untrained model's own predictions (a copy's, in training mode as in the step) get right
    # on the first 11 images only: the step must count 11 correct, whatever the layout or precision
    predicted = copy.deepcopy(model).train()(images).argmax(1)
    labels = torch.cat([predicted[:11], (predicted[11:] + 1) % 10])
    chosen.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    step = chosen.train_step(model, model, optimizer, scheduler, lambda images: images, batch_size=16)
    loss_sum, correct = step(Split(images, labels))
    assert int(correct) == 11
    return model, float(loss_sum) / 16


def test_channels_last_and_bf16_steps_match_the_plain_step():
    _, plain = one_step(trainer())
    model, nhwc = one_step(trainer(channels_last=True))
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc == pytest.approx(plain, rel=1e-4)
    _, bf16 = one_step(trainer(precision="bf16"))
    assert bf16 == pytest.approx(plain, rel=0.05)


def test_threads_are_applied_by_setup():
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1  # not what it was already
    try:
        trainer(threads=wanted).setup(seed_cnn())
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "trainer.epochs=0 must be a positive integer"),
        ({"precision": "fp8"}, "trainer.precision='fp8' is unknown"),
        ({"precision": "fp16"}, "trainer.precision=fp16 needs a CUDA device"),
        ({"threads": 0}, "trainer.threads=0 must be a positive integer"),
        ({"compile": "yes"}, "trainer.compile='yes' is not one of true, false, auto"),
        ({"device": "cuda:7"}, "is not available on this machine"),
        ({"label_smoothing": 1.0}, "trainer.label_smoothing=1.0 is outside [0, 1)"),
        ({"ema_decay": 1.0}, "trainer.ema_decay=1.0 must lie in (0, 1)"),
    ],
)
def test_bad_trainer_settings_are_refused(changes, message):
    if changes.get("device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(UserError, match=re.escape(message)):
        trainer(**changes)


def test_auto_settings_take_the_devices_defaults():
    cpu = trainer(channels_last=None, precision="auto")
    assert (cpu.channels_last, cpu.eval_channels_last) == (False, True)  # precision: tests/test_machine.py
    model = seed_cnn()
    cpu.setup(model)
    evaluated = cpu.eval_model(model)
    assert evaluated is not model and evaluated.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.features[0].weight.is_contiguous()  # the trained model keeps its layout
    plain = trainer(eval_channels_last=False)
    assert plain.eval_model(model) is model


class Counting(torch.nn.Module):
    """Stands in for a compiled model: calls it, counting the batch sizes it was given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(images))
        return self.model(images)


def test_full_batches_go_through_the_compiled_module_and_the_last_smaller_one_through_the_model():
    from cnnsweep.train.data import Split

    model = seed_cnn(dropout=0.0)
    compiled = Counting(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    step = trainer().train_step(model, compiled, optimizer, scheduler, lambda images: images, batch_size=16)
    for size in (16, 16, 7):
        step(Split(torch.randn(size, 1, 28, 28), torch.arange(size) % 10))
    assert compiled.sizes == [16, 16]


def test_a_model_returning_log_probabilities_trains_exactly_as_its_logits_twin():
    """The loss is cross-entropy on logits; log-softmax leaves log-probabilities as they are, so a model
    that returns them (as the seed network once did) takes the same steps, label smoothing included."""
    from cnnsweep.train.data import Split

    losses = {}
    for name, last in (("logits", nn.Identity()), ("log_probs", nn.LogSoftmax(dim=1))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10), last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        step = trainer(label_smoothing=0.1).train_step(
            model, model, optimizer, scheduler, lambda images: images, batch_size=16
        )
        batch = Split(torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10)
        losses[name] = [step(batch)[0].item() for _ in range(5)]
    assert losses["logits"] == pytest.approx(losses["log_probs"], rel=1e-5)
    assert losses["logits"][-1] < 0.5 * losses["logits"][0]  # and it learns (one batch, seen five times)


def test_weight_average_warms_up_then_decays_at_its_rate():
    from cnnsweep.train.loop import ema_update

    update = ema_update(0.9)
    average, current = [torch.zeros(3), torch.zeros((), dtype=torch.long)], [torch.ones(3), torch.tensor(7)]
    update(average, current, torch.tensor(0))  # first update: d = 1/10, mostly the new weights
    assert torch.allclose(average[0], torch.full((3,), 0.9)) and int(average[1]) == 7
    update(average, [torch.zeros(3), torch.tensor(8)], torch.tensor(1000))  # late: d = decay
    assert torch.allclose(average[0], torch.full((3,), 0.81)) and int(average[1]) == 8
