"""The training loop's parts: one epoch of SGD steps, an evaluation pass, and the Trainer that makes both
as fast as configured (device, memory layout, precision, compiling).

Functions here compute and return metrics; the run (cnnsweep.train.run.train) calls them once per epoch
and writes the files and log lines. Running sums stay on the device, so a step never waits for the host
except where the progress bar or the divergence check reads them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from cnnsweep.errors import UserError
from cnnsweep.records import RunStatus
from cnnsweep.train.compiling import CompileChoice, cache_dir, choose, graph_key
from cnnsweep.train.data import ImageData, Split, n_batches, ordered_batches, to_unit
from cnnsweep.train.machine import PrecisionChoice, choose_precision

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EpochRecord = dict[str, float]
CHECK_EVERY = 25  # batches between reads of the running loss on accelerators (each read waits for the device)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    run_status = RunStatus.DIVERGED  # how a run stopped by this error ends

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        super().__init__(epoch, batch, loss)  # all in args, so the error pickles across processes
        self.epoch, self.batch, self.loss = epoch, batch, loss

    def __str__(self) -> str:
        return (
            f"training diverged: loss {self.loss} at epoch {self.epoch}, batch {self.batch} "
            "(a lower optimizer.lr usually helps)"
        )


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else must be available here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"trainer.device={name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from error
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise UserError(f"trainer.device={name!r} is not available on this machine; use trainer.device=auto")
    return device


Step = Callable[[Split], tuple[torch.Tensor, torch.Tensor]]  # batch -> (summed loss, correct), on the device


def train_epoch(
    step: Step,
    batches: Iterable[Split],
    total_batches: int,
    epoch: int,
    progress: bool,
    check_every: int = CHECK_EVERY,
    check_stop: Callable[[], None] = lambda: None,
) -> EpochRecord:
    """Run `step` on every batch; returns the epoch's mean train loss and accuracy.

    Every `check_every` batches the losses so far are checked (Diverged on NaN/inf, naming the
    first bad batch); after every batch `check_stop` may raise to stop the run (a signal).
    """
    batch_losses: torch.Tensor | None = None
    correct = seen = 0
    bar = tqdm(total=total_batches, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for index, batch in enumerate(batches):
        loss_sum, batch_correct = step(batch)
        if batch_losses is None:
            batch_losses = torch.zeros(total_batches, device=loss_sum.device)
        batch_losses[index] = loss_sum
        correct = correct + batch_correct
        seen += len(batch.labels)
        check_stop()
        if (index + 1) % check_every == 0 or index + 1 == total_batches:
            _check_finite(batch_losses[: index + 1], epoch)
            bar.set_postfix(
                loss=f"{batch_losses[index].item() / len(batch.labels):.4f}",
                acc=f"{100 * int(correct) / seen:.2f}%",
            )
        bar.update(1)
    bar.close()
    assert batch_losses is not None, "an epoch needs at least one batch"
    return {"train_loss": batch_losses.sum().item() / seen, "train_acc": int(correct) / seen}


def _check_finite(batch_losses: torch.Tensor, epoch: int) -> None:
    finite = torch.isfinite(batch_losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise Diverged(epoch=epoch, batch=first + 1, loss=float(batch_losses[first]))


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's update: average <- d * average + (1 - d) * current, d = min(decay, (1 + n) / (10 + n))
    after n updates. The warm-up keeps early averages from lingering on the random initial weights
    (with 0.999 they would for thousands of steps). Integer buffers (BatchNorm's counts) are copied."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # a tensor, not a Python float: reading n_averaged would make every step wait for the device
        weight = 1.0 - torch.clamp((1.0 + n_averaged) / (10.0 + n_averaged), max=decay)
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, weight.to(average.dtype))
            else:
                average.copy_(value)

    return update


@torch.inference_mode()
def predict(model: nn.Module, split: Split, batch_size: int, prepare: Prepare) -> torch.Tensor:
    """Logits (N x classes) of `model` in eval mode for every image of `split`."""
    model.eval()
    return torch.cat([model(prepare(batch.images)) for batch in ordered_batches(split, batch_size)])


def evaluate(model: nn.Module, split: Split, batch_size: int, prepare: Prepare) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on `split`."""
    return scores(predict(model, split, batch_size, prepare).float(), split.labels)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of float `logits` (N x classes) against `labels`."""
    loss = F.cross_entropy(logits, labels)
    correct = (logits.argmax(1) == labels).sum()
    return loss.item(), correct.item() / len(labels)


Prepare = Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> float model input


def preparers(data: ImageData, augmentation: Augmentation, generator: torch.Generator) -> tuple[Prepare, Prepare]:
    """uint8 batches -> normalised float input: augmented for training, as they are for evaluation."""

    def prepare_train(images: torch.Tensor) -> torch.Tensor:
        return data.normalize(augmentation(to_unit(images), generator))

    return prepare_train, eval_preparer(data)


def eval_preparer(data: ImageData) -> Prepare:
    """uint8 batches -> normalised float input, as they are: what every evaluation pass feeds the model."""

    def prepare_eval(images: torch.Tensor) -> torch.Tensor:
        return data.normalize(to_unit(images))

    return prepare_eval


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Forward passes in `precision` (a PRECISIONS name) on `device`; fp32: as they are."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_defaults(device: torch.device) -> dict[str, Any]:
    """What the null memory-layout settings mean on a device (`precision: auto` is the hardware's
    choice: cnnsweep.train.machine.choose_precision).

    Measured with `cnnsweep bench` on a 2-core CPU: NHWC made training 9% slower and
    evaluation 1.7x faster. On CUDA, NHWC is the usual win for convolutions (not measured here:
    no GPU was available).
    """
    if device.type == "cuda":
        return {"channels_last": True, "eval_channels_last": True}
    return {"channels_last": False, "eval_channels_last": True}


def layout_setting(name: str, value: bool | None, device: torch.device) -> bool:
    """A memory-layout setting (channels_last, eval_channels_last) as given, or its device default for null."""
    return device_defaults(device)[name] if value is None else value


class Trainer:
    """How a run trains `epochs` epochs on `device` ('auto': cuda, then mps, then cpu), as fast as configured:
    its steps (train_step) and evaluation passes (eval_model, evaluate, predict).

    channels_last / eval_channels_last: NHWC memory layout for training / for evaluation passes
    (null: the device's default). compile: torch.compile the model (its warm-up is paid in the
    first steps): true, false, or 'auto' (cnnsweep.train.compiling.choose: when the run is long enough
    to pay the warm-up back). precision: autocast dtype of forward passes (fp32: none; fp16 also
    scales the loss), 'auto' for bf16 where the hardware does it natively (cnnsweep.train.machine); a
    resumed run sets `self.precision` to its checkpoint's before any step uses it (run.choose_precision).
    threads: torch's intra-op CPU threads (null: torch's default). The memory-layout defaults are in
    device_defaults(). label_smoothing: of the training loss. ema_decay: evaluate an exponential
    moving average of the weights (and BatchNorm statistics) instead of the weights themselves (None: off).
    """

    def __init__(
        self,
        epochs: int,
        device: str,
        progress: bool,
        channels_last: bool | None,
        eval_channels_last: bool | None,
        compile: bool | str,
        precision: str,
        threads: int | None,
        label_smoothing: float,
        ema_decay: float | None,
    ) -> None:
        if epochs <= 0:
            raise UserError(f"trainer.epochs={epochs} must be a positive integer")
        if precision not in (*PRECISIONS, "auto"):
            raise UserError(f"trainer.precision={precision!r} is unknown; allowed: auto, {', '.join(PRECISIONS)}")
        if compile not in (True, False, "auto"):
            raise UserError(f"trainer.compile={compile!r} is not one of true, false, auto")
        if threads is not None and threads <= 0:
            raise UserError(f"trainer.threads={threads} must be a positive integer or null (torch's default)")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"trainer.label_smoothing={label_smoothing} is outside [0, 1)")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise UserError(f"trainer.ema_decay={ema_decay} must lie in (0, 1), or be null (no averaging)")
        self.epochs = epochs
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise UserError("trainer.precision=fp16 needs a CUDA device; use bf16 or fp32")
        self.precision_choice: PrecisionChoice = choose_precision(precision, self.device)
        self.precision = self.precision_choice.precision
        self.progress = progress
        self.channels_last = layout_setting("channels_last", channels_last, self.device)
        self.eval_channels_last = layout_setting("eval_channels_last", eval_channels_last, self.device)
        self.compile = compile
        self.threads = threads
        self.label_smoothing = label_smoothing
        self.ema_decay = ema_decay

    def setup(self, model: nn.Module) -> None:
        """Apply threads, device and memory layout to `model`."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        layout = torch.channels_last if self.channels_last else torch.preserve_format
        model.to(self.device, memory_format=layout)

    def compiled(
        self, model: nn.Module, train: Split, batch_size: int, epochs: int, setting: bool | str | None = None
    ) -> tuple[nn.Module, CompileChoice]:
        """The module training steps call (`model` compiled, or itself), and why, for `epochs` more
        epochs over `train` in batches of `batch_size`. `setting`: instead of self.compile (a resumed
        run's earlier choice)."""
        input_shape = (batch_size, *train.images.shape[1:])
        key = graph_key(model, input_shape, self.device, self.precision, self.channels_last)
        planned_steps = epochs * n_batches(len(train), batch_size)
        choice = choose(self.compile if setting is None else setting, self.device, planned_steps, key)
        if not choice.compile:
            return model, choice
        # Dynamo keeps what it compiled per Python function, and past 8 versions of one (another
        # network of an earlier run in this process: a sweep's worker) runs it eagerly without a
        # word; a run compiles its own network afresh. The on-disk cache outlives this.
        cache_dir()  # before reset(): torch puts its own default folder in the environment once it looks
        torch.compiler.reset()
        return torch.compile(model), choice

    def averaged(self, model: nn.Module) -> AveragedModel | None:
        """The moving average of `model`'s weights to evaluate, when ema_decay is set."""
        if self.ema_decay is None:
            return None
        return AveragedModel(model, multi_avg_fn=ema_update(self.ema_decay), use_buffers=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def train_step(
        self,
        model: nn.Module,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        prepare: Prepare,
        batch_size: int,
        ema: AveragedModel | None = None,
    ) -> Step:
        """One SGD step per call: forward (`forward`, maybe compiled, for batches of `batch_size`;
        `model` for others), loss, backward, optimizer, scheduler and the weights' moving average."""
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        def step(batch: Split) -> tuple[torch.Tensor, torch.Tensor]:
            model.train()
            # An epoch's last, smaller batch goes through the eager model (same weights): compiled,
            # it would cost a second compilation for a graph of another shape, once per process.
            call = forward if len(batch.labels) == batch_size else model
            with self.autocast():
                logits = call(prepare(batch.images)).float()
            loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            correct = (logits.detach().argmax(1) == batch.labels).sum()
            return loss.detach() * len(batch.labels), correct

        return step

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The module to evaluate with: an NHWC copy of `model` when only evaluation wants NHWC.

        Evaluation stays eager in compiled runs too: its graphs (inference mode, another batch
        size) would need compilations of their own, for passes that take a few percent of an epoch.
        """
        if self.eval_channels_last and not self.channels_last:
            return copy.deepcopy(model).to(memory_format=torch.channels_last)
        return model

    def evaluate(self, forward: nn.Module, split: Split, batch_size: int, prepare: Prepare) -> tuple[float, float]:
        """Mean loss and accuracy of `forward` (what eval_model returned) on `split`, in the run's precision."""
        with self.autocast():
            return evaluate(forward, split, batch_size, prepare)

    def predict(self, forward: nn.Module, split: Split, batch_size: int, prepare: Prepare) -> torch.Tensor:
        """Float logits of `forward` (what eval_model returned) for every image of `split`, in the run's
        precision: the pass `evaluate` scores."""
        with self.autocast():
            return predict(forward, split, batch_size, prepare).float()
