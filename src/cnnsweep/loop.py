"""The training loop: one epoch of SGD steps, an evaluation pass, and the Trainer that runs epochs.

Functions here compute and return metrics; writing files and log lines is the caller's job
(the `on_epoch_end` callback). Running sums stay on the device, so a step never waits for
the host except where the progress bar or the divergence check reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnnsweep.data import MNISTData, Split, Splits, n_batches, ordered_batches, shuffled_batches, to_unit
from cnnsweep.errors import UserError

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EpochRecord = dict[str, float]
CHECK_EVERY = 25  # batches between reads of the running loss (progress bar, divergence check)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    run_status = "diverged"  # summary.json status of a run stopped by this error

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        super().__init__(epoch, batch, loss)  # all in args, so the error pickles across processes
        self.epoch, self.batch, self.loss = epoch, batch, loss

    def __str__(self) -> str:
        return f"training diverged: loss {self.loss} at epoch {self.epoch}, batch {self.batch}"


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


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[Split],
    total_batches: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    epoch: int,
    progress: bool,
) -> EpochRecord:
    """One pass over `batches`, stepping optimizer and scheduler per batch. Returns train loss/acc."""
    model.train()
    device = next(model.parameters()).device
    batch_losses = torch.zeros(total_batches, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    bar = tqdm(total=total_batches, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for index, batch in enumerate(batches):
        log_probs = model(prepare(batch.images))
        loss = F.nll_loss(log_probs, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        batch_losses[index] = loss.detach() * len(batch.labels)
        correct += (log_probs.detach().argmax(1) == batch.labels).sum()
        seen += len(batch.labels)
        if (index + 1) % CHECK_EVERY == 0 or index + 1 == total_batches:
            _check_finite(batch_losses[: index + 1], epoch)
            bar.set_postfix(
                loss=f"{batch_losses[index].item() / len(batch.labels):.4f}",
                acc=f"{100 * correct.item() / seen:.2f}%",
            )
        bar.update(1)
    bar.close()
    return {"train_loss": batch_losses.sum().item() / seen, "train_acc": correct.item() / seen}


def _check_finite(batch_losses: torch.Tensor, epoch: int) -> None:
    finite = torch.isfinite(batch_losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise Diverged(epoch=epoch, batch=first + 1, loss=float(batch_losses[first]))


@torch.inference_mode()
def predict(
    model: nn.Module, split: Split, batch_size: int, prepare: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Log-probabilities (N x classes) of `model` in eval mode for every image of `split`."""
    model.eval()
    return torch.cat([model(prepare(batch.images)) for batch in ordered_batches(split, batch_size)])


def evaluate(
    model: nn.Module, split: Split, batch_size: int, prepare: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[float, float]:
    """Mean NLL loss and accuracy of `model` on `split`."""
    log_probs = predict(model, split, batch_size, prepare)
    loss = F.nll_loss(log_probs, split.labels)
    correct = (log_probs.argmax(1) == split.labels).sum()
    return loss.item(), correct.item() / len(split)


class Trainer:
    """Runs `epochs` epochs on `device` ('auto': cuda, then mps, then cpu)."""

    def __init__(self, epochs: int, device: str, progress: bool) -> None:
        if epochs <= 0:
            raise UserError(f"trainer.epochs={epochs} must be a positive integer")
        self.epochs = epochs
        self.device = resolve_device(device)
        self.progress = progress

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        data: MNISTData,
        splits: Splits,
        augmentation: Augmentation,
        generator: torch.Generator,
        on_epoch_end: Callable[[EpochRecord], None],
    ) -> list[EpochRecord]:
        """Train for self.epochs epochs; after each, evaluate and hand the record to on_epoch_end."""

        def prepare_train(images: torch.Tensor) -> torch.Tensor:
            return data.normalize(augmentation(to_unit(images), generator))

        def prepare_eval(images: torch.Tensor) -> torch.Tensor:
            return data.normalize(to_unit(images))

        history = []
        steps = n_batches(len(splits.train), data.batch_size)
        for epoch in range(1, self.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            batches = shuffled_batches(splits.train, data.batch_size, generator)
            record: EpochRecord = {"epoch": epoch, "lr": lr}
            record |= train_epoch(model, optimizer, scheduler, batches, steps, prepare_train, epoch, self.progress)
            train_seconds = time.perf_counter() - start
            if splits.val is not None:
                record["val_loss"], record["val_acc"] = evaluate(model, splits.val, data.eval_batch_size, prepare_eval)
            record["test_loss"], record["test_acc"] = evaluate(model, splits.test, data.eval_batch_size, prepare_eval)
            record["seconds"] = time.perf_counter() - start
            record["images_per_s"] = len(splits.train) / train_seconds
            history.append(record)
            on_epoch_end(record)
        return history
