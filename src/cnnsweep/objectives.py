"""What a run can be optimised for: the objectives, their directions, and how `objective=` is read.

`objective` is one name or a list of names (a multi-objective sweep, e.g. `objective=[val_acc,n_params]`).
Accuracies are maximised; losses, the parameter count and the training time are minimised. This
module is the one place that says so: runs, sweeps and reports ask it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnsweep.errors import UserError

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")  # at the final epoch
N_PARAMS = "n_params"  # trainable parameters of the network built
TRAIN_SECONDS = "train_seconds"  # seconds the run's epochs took, training and evaluation (not data loading)
OBJECTIVES = (*METRICS, N_PARAMS, TRAIN_SECONDS)
MAXIMIZE, MINIMIZE = "maximize", "minimize"


def direction_of(objective: str) -> str:
    """maximize for accuracies (and `auto`, which is one), minimize for everything else."""
    return MAXIMIZE if objective.endswith("_acc") or objective == "auto" else MINIMIZE


def is_accuracy(objective: str) -> bool:
    """Whether an objective is an accuracy (a fraction, shown in percent; maximised)."""
    return objective.endswith("_acc")


def directions_of(objectives: Sequence[str]) -> list[str]:
    return [direction_of(name) for name in objectives]


def resolve_objective(name: str, val_size: int) -> str:
    """`auto` -> val_acc with a validation split, else test_acc; other names are checked."""
    if name == "auto":
        return "val_acc" if val_size > 0 else "test_acc"
    if name not in OBJECTIVES:
        raise UserError(f"objective={name!r} is unknown; allowed: auto, {', '.join(OBJECTIVES)}")
    if name.startswith("val_") and val_size <= 0:
        raise UserError(f"objective={name} needs a validation split: set data.val_size > 0")
    return name


def resolve_objectives(objective: str | Sequence[str], val_size: int) -> list[str]:
    """The objective names of `objective` (one name or a list), resolved and checked."""
    names = [objective] if isinstance(objective, str) else list(objective)
    if not names:
        raise UserError(
            "objective=[] names no objective; give one (objective=val_acc) or several (objective=[val_acc,n_params])"
        )
    resolved = [resolve_objective(str(name), val_size) for name in names]
    if len(set(resolved)) < len(resolved):
        raise UserError(f"objective={names} names the same objective twice")
    return resolved


def checkpoint_metric(objectives: Sequence[str], val_size: int) -> str:
    """The metric that picks a run's best epoch: its first accuracy or loss objective, else `auto`'s."""
    return next((name for name in objectives if name in METRICS), resolve_objective("auto", val_size))


def checked_directions(objectives: Sequence[str], direction: Any) -> list[str]:
    """The study's directions: each objective's own, refusing an explicit `direction` that contradicts them."""
    derived = directions_of(objectives)
    if direction is None:
        return derived
    given = [direction] if isinstance(direction, str) or not isinstance(direction, Sequence) else list(direction)
    given = [getattr(item, "name", item) for item in given]  # hydra-optuna-sweeper's Direction enum, or a string
    if given != derived:
        expected = derived[0] if len(derived) == 1 else f"[{','.join(derived)}]"
        raise UserError(
            f"hydra.sweeper.direction={given[0] if len(given) == 1 else given} contradicts objective="
            f"{objectives[0] if len(objectives) == 1 else list(objectives)}, which is to {expected}; "
            "drop hydra.sweeper.direction (it follows the objective)"
        )
    return derived


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if direction_of(metric) == MAXIMIZE else value < best
