"""The tracker interface (`Logger`), what a run tells it (`RunInfo`), and `Loggers`, which fans out to several
and keeps a failing tracker from stopping the run."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnsweep.errors import UserError, first_line, make
from cnnsweep.records import RUN_DIR

log = logging.getLogger(__name__)

# What a logger config may build besides the `_target_`s it names itself (a user's own logger class).
TRACK_TARGETS = ("cnnsweep.track.*",)

# user:password@ in any URL inside a text; greedy up to the authority's last @ (a password may hold a raw @).
_PASSWORD_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s]*@")


def mask_password(text: str) -> str:
    """A URL (or any text holding URLs) with each password replaced by ***: `http://me:***@host`."""
    return _PASSWORD_IN_URL.sub(r"\1***@", text)


@dataclass(frozen=True)
class SweepInfo:
    """Where a sweep trial belongs: its sweep folder, study and trial number, and the values swept for it.

    parent_run_id: the sweep's MLflow parent run, when the job cannot read it from the sweep folder
    (MLflowSweepTracker writes it there; a job on a machine without that folder gets it passed in).
    """

    sweep_dir: Path
    study_name: str
    trial_number: int
    params: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    repeat: int | None = None  # which of the trial's seeds this run is (hydra.sweeper.repeats > 1), else None


@dataclass(frozen=True)
class RunInfo:
    """What a tracker learns when a run starts.

    config: the run's resolved config as plain containers (OmegaConf.to_container(cfg, resolve=True)).
    resumed: the run continues from a checkpoint in run_dir; trackers continue the run they began there.
    sweep: set for a sweep trial.
    """

    run_dir: Path
    config: dict[str, Any]
    n_params: int
    name: str
    resumed: bool = False
    sweep: SweepInfo | None = None


class Logger:
    """One experiment tracker. Every method does nothing here: a logger of your own overrides what it needs.

    sweep_tracker: the tracker's side in the sweeper's process, for trackers that group a sweep's trials
      (MLflow's parent run); None for those that need none (TensorBoard: each trial writes its own HParams).

    start: once, when the model is built and before the first epoch of this invocation.
    log_epoch: once per finished epoch, after that epoch's metrics.csv row and checkpoint are written; a
      resumed run replays the epochs it restored (a logger skips those it already holds).
    end: once, however the run ended; status is summary.json's word (completed, pruned, failed, ...) and
      summary its content (the objectives under "objectives").
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def start(self, run: RunInfo) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        pass

    def sweep_tracker(self) -> Any | None:
        return None


class Guarded:
    """Calls each of several trackers in turn. The first exception one raises becomes one warning line, and
    that tracker gets no further calls; the others, and the run or sweep, go on."""

    def __init__(self, trackers: Iterable[Any] = ()) -> None:
        self.loggers = list(trackers)
        self.failed: dict[str, str] = {}  # tracker name -> the warning it caused

    def _each(self, method: str, *args: Any, optional: bool = False) -> None:
        """Call `method` on each tracker (an `optional` one only on the trackers that have it)."""
        for logger in list(self.loggers):
            if optional and not hasattr(logger, method):
                continue
            try:
                getattr(logger, method)(*args)
            except Exception as error:  # noqa: BLE001 -- any tracker failure: warn once, keep training
                self.loggers.remove(logger)
                name = getattr(logger, "name", type(logger).__name__)
                said = mask_password(f"{name}: {method} failed ({type(error).__name__}: {first_line(error)[:300]})")
                self.failed[name] = said
                log.warning(f"{said}; this tracker is off from here on, cnnsweep's own files are unaffected")


class Loggers(Guarded, Logger):
    """Several loggers as one (Guarded: a failing one is switched off with one warning line)."""

    def start(self, run: RunInfo) -> None:
        self._each("start", run)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._each("log_epoch", epoch, metrics)

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        self._each("end", status, summary)

    def sweep_trackers(self) -> SweepTrackers:
        """The sweeper's side of these loggers (those that have one)."""
        return SweepTrackers(found for logger in self.loggers if (found := logger.sweep_tracker()) is not None)


class SweepTrackers(Guarded):
    """The sweeper's side of a sweep's trackers: told when the sweep starts, when each trial ends (also
    trials that never ran: over budget, failed before their job) and the best trials at the end.

    Each tracker object has start(sweep_dir, study_name, directions, metric_names), trial_ended(number,
    state, params, values, run_dir, spread) and end(best_trials), and may have confirmed(winner), told after a
    confirmation on fresh seeds (see cnnsweep.track.mlflow.MLflowSweepTracker).
    """

    def __init__(self, trackers: Iterable[Any] = ()) -> None:
        super().__init__(trackers)
        self.told: set[int] = set()  # trials whose end this process has passed on

    def start(self, sweep_dir: Path, study_name: str, directions: list[str], metric_names: list[str]) -> None:
        self._each("start", sweep_dir, study_name, directions, metric_names)

    def trials_ended(self, trials: Iterable[Any], spreads: Mapping[int, Mapping[str, float]] | None = None) -> None:
        """Pass on the end of each finished trial (Optuna FrozenTrials) not passed on before; `spreads`: a
        trial's sd over its repeats (`<objective>.sd`) and how many ran (`repeats`), by trial number."""
        for trial in trials:
            if self.loggers and trial.state.is_finished() and trial.number not in self.told:
                run_dir = trial.user_attrs.get(RUN_DIR)
                values = trial.values if trial.values else None
                spread = (spreads or {}).get(trial.number)
                self._each(
                    "trial_ended", trial.number, trial.state, trial.params, values, run_dir and Path(run_dir), spread
                )
                self.told.add(trial.number)

    def end(self, best_trials: list[Mapping[str, Any]]) -> None:
        self._each("end", best_trials)

    def confirmed(self, winner: Mapping[str, Any]) -> None:
        """Pass on a confirmation's winner to the trackers that take one (an optional `confirmed(winner)`)."""
        self._each("confirmed", winner, optional=True)


def build_loggers(config: Mapping[str, Any] | None) -> Loggers:
    """The loggers a `logger` config node names: one `_target_` node per key (`{tensorboard: {...}, ...}`).

    A key set to null is skipped (`logger.mlflow=null` turns one off). Besides cnnsweep.track's classes,
    each node's own `_target_` may be built: a logger class of the user's own.
    """
    loggers = []
    for key, node in (config or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise_missing_target(key)
        target = str(node["_target_"])
        loggers.append(make(node, _convert_="all", _execution_whitelist_=(*TRACK_TARGETS, target)))
    return Loggers(loggers)


def raise_missing_target(key: str) -> None:
    raise UserError(
        f"logger.{key} has no _target_; each entry of the logger group is a `_target_` node "
        f"(e.g. logger.{key}._target_=cnnsweep.track.TensorBoardLogger), or null to turn it off"
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}.
    Lists stay values (a list of numbers reads better whole than as `key.0`, `key.1`)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{dotted}.")
        else:
            flat[dotted] = value
    return flat
