"""Learning-rate schedules, all stepped once per batch and timed to the run's length.

Each factory takes the optimizer and the run's length (`epochs`, `steps_per_epoch`) from the
trainer, and its own settings from conf/scheduler/*.yaml under torch's argument names. Stepping
every schedule per batch keeps the training loop uniform; StepLR with its step size scaled to
batches gives exactly the learning rates of StepLR stepped per epoch.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

from cnnsweep.errors import UserError


def step_lr(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, step_size: int, gamma: float) -> LRScheduler:
    """Multiply the learning rate by `gamma` every `step_size` epochs."""
    if step_size <= 0:
        raise UserError(f"scheduler.step_size={step_size} must be a positive number of epochs")
    if gamma <= 0:
        raise UserError(f"scheduler.gamma={gamma} must be positive")
    return StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)


def cosine_lr(optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, eta_min: float) -> LRScheduler:
    """Cosine decay from the optimizer's lr to `eta_min` over the whole run."""
    return CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch, eta_min=eta_min)


def one_cycle_lr(
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
    anneal_strategy: str,
    three_phase: bool,
    cycle_momentum: bool,
    base_momentum: float,
    max_momentum: float,
) -> LRScheduler:
    """One cycle over the whole run: warm up to `max_lr` for `pct_start` of it, then anneal.

    The optimizer's own lr is ignored: the cycle starts at max_lr / div_factor. With
    cycle_momentum, momentum (SGD) or beta1 (Adam) moves inversely between max_ and base_momentum.
    """
    if max_lr <= 0:
        raise UserError(f"scheduler.max_lr={max_lr} must be positive")
    if not 0 < pct_start < 1:
        raise UserError(f"scheduler.pct_start={pct_start} must lie in (0, 1)")
    return OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=epochs * steps_per_epoch,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
        three_phase=three_phase,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )
