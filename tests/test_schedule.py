import pytest
import torch
from omegaconf import OmegaConf

from cnnsweep.errors import UserError
from cnnsweep.train.schedule import cosine_lr, one_cycle_lr, step_lr

from helpers import compose_train


def sgd(lr: float = 0.025) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def one_cycle(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, **changes) -> object:
    """one_cycle_lr with conf/scheduler/onecycle.yaml's settings, and `changes`."""
    settings = OmegaConf.to_container(compose_train(["scheduler=onecycle"]).scheduler)
    del settings["_target_"], settings["_partial_"]
    return one_cycle_lr(optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch, **(settings | changes))


def lrs_per_step(scheduler, optimizer, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_step_lr_per_batch_gives_the_seed_logs_learning_rates_per_epoch():
    optimizer, steps_per_epoch = sgd(), 7
    scheduler = step_lr(optimizer, epochs=19, steps_per_epoch=steps_per_epoch, step_size=9, gamma=0.15)
    seen = lrs_per_step(scheduler, optimizer, 19 * steps_per_epoch)
    per_epoch = [seen[e * steps_per_epoch : (e + 1) * steps_per_epoch] for e in range(19)]
    assert all(len(set(epoch)) == 1 for epoch in per_epoch)  # constant within an epoch
    expected = [0.025] * 9 + [0.00375] * 9 + [0.0005625]  # the seed log's "Learning Rate" lines
    assert [epoch[0] for epoch in per_epoch] == pytest.approx(expected)


def test_cosine_and_one_cycle_span_the_whole_run():
    optimizer = sgd(0.1)
    seen = lrs_per_step(cosine_lr(optimizer, epochs=4, steps_per_epoch=5, eta_min=0.0), optimizer, 20)
    assert seen[0] == pytest.approx(0.1) and seen[-1] < 0.002 and seen == sorted(seen, reverse=True)

    optimizer = sgd()
    scheduler = one_cycle(optimizer, epochs=4, steps_per_epoch=5, max_lr=0.2, pct_start=0.25, div_factor=25.0)
    seen = lrs_per_step(scheduler, optimizer, 20)  # exactly total_steps: one more step would raise
    assert seen[0] == pytest.approx(0.2 / 25) and max(seen) == pytest.approx(0.2)
    assert seen.index(max(seen)) == 4


def test_bad_schedule_settings_are_refused():
    with pytest.raises(UserError, match="step_size=0"):
        step_lr(sgd(), epochs=2, steps_per_epoch=3, step_size=0, gamma=0.1)
    with pytest.raises(UserError, match="pct_start=1.5"):
        one_cycle(sgd(), epochs=2, steps_per_epoch=3, pct_start=1.5)
