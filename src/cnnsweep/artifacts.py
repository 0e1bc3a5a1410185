"""Files a run writes into its folder, each written whole or not at all (temp file + rename).

<run>/metrics.csv             one row per finished epoch
<run>/summary.json            what the run was and how it ended (rewritten after every epoch): Summary
<run>/checkpoints/last.pt     state after the latest epoch
<run>/checkpoints/best.pt     state at the best epoch by the run's objective
<run>/.hydra/                 Hydra's record: config.yaml, overrides.yaml, hydra.yaml

The names are cnnsweep.files'; how a run ended is a RunStatus. Runs write these files; sweeps and
the tools read them.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from cnnsweep.errors import UserError, first_line

if TYPE_CHECKING:
    import torch

from cnnsweep.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    CONFIG_FILE,
    HYDRA_DIR,
    METRICS_FILE,
    OVERRIDES_FILE,
    SUMMARY_FILE,
)


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


@dataclass
class Summary:
    """What summary.json holds: what the run was, how far it got and how it ended.

    `objectives` maps each objective to its value at the latest epoch (None before the first); the
    first is the one a sweep optimises and the checkpoint is picked by (`objective`, `objective_value`
    in the file). `figures` holds final_<metric> of every metric and best_<metric>, best_<metric>_epoch
    of those maximised. Optional facts are left out of the file until known.
    """

    n_params: int
    epochs: int
    objectives: dict[str, float | int | None]
    seed: int
    git_commit: str | None
    versions: dict[str, str]
    status: RunStatus = RunStatus.RUNNING
    epochs_run: int = 0
    device: str | None = None
    device_name: str | None = None
    machine: dict[str, Any] | None = None
    precision: dict[str, str] | None = None  # {"precision": ..., "reason": ...}, pinned by a resume
    compile: dict[str, Any] | None = None  # {"compiled": ..., "reason": ...}, pinned by a resume
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

    def to_json(self) -> dict[str, Any]:
        known = {
            "status": str(self.status),
            "n_params": self.n_params,
            "epochs": self.epochs,
            "epochs_run": self.epochs_run,
            "objective": self.objective,
            "objective_value": self.objective_value,
            "objectives": dict(self.objectives),
            "seed": self.seed,
            "git_commit": self.git_commit,
            "versions": self.versions,
        }
        optional = {
            "device": self.device,
            "device_name": self.device_name,
            "machine": self.machine,
            "precision": self.precision,
            "compile": self.compile,
            "best_checkpoint_epoch": self.best_checkpoint_epoch,
            "best_checkpoint_value": self.best_checkpoint_value,
            **self.figures,
            "resumed_after_epoch": self.resumed_after_epoch,
            "wall_time_s": self.wall_time_s,
            "error": self.error,
            "diverged_at": self.diverged_at,
        }
        return known | {key: value for key, value in optional.items() if value is not None}


_UMASK = os.umask(0o022)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)  # ... and put it straight back


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(file) on a temp file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows may differ in keys; columns are their union in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: train.py reads RunStatus before its precheck, which must not wait for torch

    write_atomically(path, lambda file: torch.save(state, file))


def load_checkpoint(path: Path, purpose: str) -> dict[str, Any]:
    """A checkpoint's state, on the CPU; a UserError naming `purpose` when it cannot be read."""
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} cannot be read ({first_line(error)}); {purpose}") from error


def load_weights(model: torch.nn.Module, weights: dict[str, Any], checkpoint: Path, source: str) -> None:
    """Load `weights` (from `checkpoint`) into `model` (built from the config in `source`); a
    UserError saying how they differ when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise UserError(f"{checkpoint} does not match the model in {source}: {details}") from error


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file, with numbers as int or float and empty cells as None."""
    with open(path, newline="") as file:
        return [{key: parse_value(value) for key, value in row.items()} for row in csv.DictReader(file)]


def parse_value(text: Any) -> Any:
    """A CSV cell or override value as int or float where it is one; '' as None; else unchanged."""
    if not isinstance(text, str):
        return text
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


class RunFolder:
    """The artifacts of one run, in the folder Hydra made for it."""

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

    def write_metrics(self, history: Sequence[dict[str, Any]]) -> None:
        write_csv(self.metrics, history)

    def write_summary(self, summary: Summary) -> None:
        write_json(self.summary, summary.to_json())

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.pt (name: LAST_CHECKPOINT or BEST_CHECKPOINT)."""
        return self.checkpoints / f"{name}{CHECKPOINT_SUFFIX}"

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        save_checkpoint(self.checkpoint(name), state)
