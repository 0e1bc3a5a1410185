"""The records a run leaves on disk, each with its one owner here: the run folder (RunFolder), how the run
ended (RunStatus), summary.json (Summary) and a checkpoint (Checkpoint). Runs write them; resume,
evaluate, the report, the trackers and the sweeper read them through these classes.

The folder's files and their names are listed in cnnsweep.files; the generic writers (whole or not at
all: temp file + rename) are cnnsweep.artifacts'. torch is imported only where a checkpoint is read or
written: train.py reads RunStatus before its precheck, which must not wait for torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnnsweep.artifacts import read_csv, read_json, read_torch, write_csv, write_json, write_torch
from cnnsweep.errors import UserError
from cnnsweep.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    CONFIG_FILE,
    HYDRA_DIR,
    METRICS_FILE,
    OVERRIDES_FILE,
    SUMMARY_FILE,
)

if TYPE_CHECKING:
    import torch

BEST_FACTS = ("best_checkpoint_epoch", "best_checkpoint_value")  # Summary's fields that a checkpoint keeps as `best`
RUN_DIR = "run_dir"  # a trial's run folder, as its user attrs, trials.csv, repeats.csv and confirmed.json name it


class RunStatus(str, enum.Enum):
    """How a run ended, as summary.json's `status` says it (its value is the word written there)."""

    def __str__(self) -> str:
        return self.value

    RUNNING = "running"  # not ended yet (or killed outright, e.g. SIGKILL)
    COMPLETED = "completed"
    OVER_BUDGET = "over_budget"  # the model had more parameters than budget.max_params: never trained
    PRUNED = "pruned"  # the sweep's pruner stopped it
    DIVERGED = "diverged"  # a loss became NaN or infinite
    FAILED = "failed"  # any other error
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: stopped after a batch, resumable


@dataclass(kw_only=True)
class Summary:
    """What summary.json holds: what the run was, how far it got and how it ended, in the file's key order.

    `objectives` maps each objective to its value at the latest epoch (None before the first); the
    first is the one a sweep optimises and the checkpoint is picked by (`objective`, `objective_value`
    in the file, before `objectives`). `figures` holds final_<metric> of every metric and best_<metric>,
    best_<metric>_epoch of those maximised, written as keys of their own. The facts that default to
    None are optional: left out of the file until known.
    """

    status: RunStatus = RunStatus.RUNNING
    n_params: int
    epochs: int
    epochs_run: int = 0
    objectives: dict[str, float | int | None]
    seed: int
    git_commit: str | None
    versions: dict[str, str]
    device: str | None = None
    device_name: str | None = None
    machine: dict[str, Any] | None = None
    precision: dict[str, str] | None = None  # {"precision": ..., "reason": ...}
    compile: dict[str, Any] | None = None  # {"compiled": ..., "reason": ...}
    best_checkpoint_epoch: int | None = None
    best_checkpoint_value: float | None = None
    figures: dict[str, float | int] = field(default_factory=dict)
    resumed_after_epoch: int | None = None
    wall_time_s: float | None = None
    error: str | None = None
    diverged_at: dict[str, Any] | None = None

    @property
    def objective(self) -> str:
        return next(iter(self.objectives))

    @property
    def objective_value(self) -> float | int | None:
        return self.objectives[self.objective]

    @property
    def best(self) -> dict[str, Any]:
        """The best epoch so far by the checkpoint metric and its value: what a checkpoint keeps as `best`."""
        return {name: getattr(self, name) for name in BEST_FACTS}

    @best.setter
    def best(self, best: dict[str, Any]) -> None:
        for name in BEST_FACTS:
            setattr(self, name, best[name])

    def to_json(self) -> dict[str, Any]:
        written: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "objectives":
                written |= {"objective": self.objective, "objective_value": self.objective_value}
                written[item.name] = dict(value)
            elif item.name == "figures":
                written |= value
            elif value is not None or item.default is not None:  # an optional fact: written once known
                written[item.name] = str(value) if isinstance(value, RunStatus) else value
        return written


@dataclass(kw_only=True)
class Checkpoint:
    """checkpoints/{last,best}.pt: everything a resume needs to continue after `epoch`, and what evaluate
    rebuilds the evaluated model from. Saved as a plain dict keyed by these fields' names, in this order.

    Only `model` is required to read one: a checkpoint from before the run recorded `compile` and
    `precision` has neither (the config decides, as it did then), and one without `ema` is a run
    without a weight average. `best` is Summary.best (the best epoch so far and its value), `rng` what
    cnnsweep.train.run.rng_state returns.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    epoch: int | None = None
    metrics: dict[str, float] | None = None  # the epoch's row of metrics.csv
    history: list[dict[str, float]] = field(default_factory=list)  # every row of metrics.csv so far
    config: dict[str, Any] | None = None  # the run's config, interpolations resolved
    rng: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    compile: dict[str, Any] | None = None  # summary.json's compile: {"compiled": ..., "reason": ...}
    precision: dict[str, str] | None = None  # summary.json's precision: {"precision": ..., "reason": ...}
    wall_time_s: float | None = None  # the run's wall time up to this checkpoint, over all its invocations
    ema: dict[str, Any] | None = None  # the weight average's state (the weights evaluated), if the run kept one

    def to_state(self) -> dict[str, Any]:
        """The dict torch.save writes: every field, but `ema` only where the run keeps an average."""
        return {
            item.name: getattr(self, item.name) for item in fields(self) if item.name != "ema" or self.ema is not None
        }

    @classmethod
    def from_state(cls, state: Any, path: Path) -> Checkpoint:
        """The record of a state torch.load read from `path`; keys it does not know are dropped."""
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"{path} holds no model weights: it is not a run's checkpoint (checkpoints/*.pt)")
        known = {item.name for item in fields(cls)}
        return cls(**{name: value for name, value in state.items() if name in known})

    def save(self, path: Path) -> None:
        write_torch(path, self.to_state())

    @classmethod
    def load(cls, path: Path, purpose: str) -> Checkpoint:
        """The checkpoint at `path`, on the CPU; a UserError naming `purpose` when it cannot be read."""
        return cls.from_state(read_torch(path, purpose), path)

    def evaluated_weights(self) -> dict[str, Any]:
        """The weights the run evaluated: its moving average's where it kept one, else the model's."""
        if self.ema is None:
            return self.model
        # AveragedModel's state: module.<name> for each weight, plus its n_averaged count
        return {name.removeprefix("module."): value for name, value in self.ema.items() if name != "n_averaged"}


def load_weights(model: torch.nn.Module, weights: dict[str, Any], checkpoint: Path, source: str) -> None:
    """Load `weights` (from `checkpoint`) into `model` (built from the config in `source`); a
    UserError saying how they differ when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise UserError(f"{checkpoint} does not match the model in {source}: {details}") from error


class RunFolder:
    """One run's folder, made by Hydra, and the records in it (their names: cnnsweep.files)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics = self.path / METRICS_FILE
        self.summary = self.path / SUMMARY_FILE
        self.checkpoints = self.path / CHECKPOINT_DIR
        self.hydra = self.path / HYDRA_DIR

    def is_run(self) -> bool:
        return self.hydra.is_dir() or self.summary.is_file()

    def read_summary(self) -> dict[str, Any] | None:
        return read_json(self.summary) if self.summary.is_file() else None

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_csv(self.metrics) if self.metrics.is_file() else []

    def read_overrides(self) -> list[str]:
        """The task overrides the run was started with (Hydra's .hydra/overrides.yaml)."""
        path = self.hydra / OVERRIDES_FILE
        return [str(item) for item in yaml.safe_load(path.read_text()) or []] if path.is_file() else []

    def read_config(self) -> dict[str, Any] | None:
        """The run's composed config (.hydra/config.yaml), interpolations unresolved."""
        path = self.hydra / CONFIG_FILE
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.csv: one row per finished epoch; its columns are the rows' keys in first-seen order."""
        write_csv(self.metrics, history)

    def write_summary(self, summary: Summary) -> None:
        write_json(self.summary, summary.to_json())

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.pt (name: LAST_CHECKPOINT or BEST_CHECKPOINT)."""
        return self.checkpoints / f"{name}{CHECKPOINT_SUFFIX}"
