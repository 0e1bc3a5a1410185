"""How a sweep ends: its failure policy, its results files, and the one line it exits with.

- A trial that FAILs counts against `max_failure_rate * n_trials`; once more failed, the sweep stops
  (SweepAborted) after the trials in flight. Pruned and over-budget trials do not count.
- A trial that fails on a bad setting every trial shares (a UserError that names none of the trial's
  sampled parameters) stops the sweep after it (SharedFailure): the next ones would fail the same way.
- The sampler raising while it draws a trial (SamplerFailed) records that trial FAIL with the reason and stops
  the sweep: asking again would raise again.
- Any other error raised in a lane stops every lane after its trial in flight.
- trials.csv and optimization_results.yaml are rewritten after every trial, and once more at the end.
- `ending_line` turns what stopped the sweep into one line and an exit status (None: a bug, shown with its
  traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from cnnsweep.errors import UserError
from cnnsweep.files import TRIALS_FILE
from cnnsweep.sweep.results import REPEATS, VALUE_SD, repeat_rows, study_rows, write_repeats, write_results
from cnnsweep.sweep.storage import DATABASE_ERRORS, StorageUnavailable, error_line, shown_url
from cnnsweep.train.signals import Interrupted

log = logging.getLogger(__name__)


class SweepStopped(Exception):
    """The sweep ended before its study was full; the message says why in one line."""

    exit_code = 1


class SweepAborted(SweepStopped):
    """Too many trials of this sweep failed."""


class SamplerFailed(SweepStopped):
    """The sampler raised while drawing a trial (not inside a job): every later draw would too."""


class SharedFailure(SweepStopped):
    """A trial failed on a setting every trial shares: the next ones would fail the same way."""

    exit_code = 2


@dataclass
class FailurePolicy:
    """This sweep's failed trials and the errors that stop it (shared by its lanes, under their lock)."""

    max_failure_rate: float
    n_trials: int
    failures: int = 0  # trials of this sweep that FAILed
    stopped: bool = False  # start no more trials
    errors: list[BaseException] = field(default_factory=list)  # why it stopped; the first is raised

    def stop_with(self, error: BaseException) -> None:
        self.stopped = True
        self.errors.append(error)

    def count_failure(self) -> None:
        self.failures += 1

    def trial_failed(self, number: int, error: BaseException | None, params: dict[str, Any]) -> None:
        """Count a FAILed trial; stop the sweep if its error is one every trial would share."""
        self.count_failure()
        if isinstance(error, UserError) and not names_a_parameter(str(error), params):
            self.stop_with(SharedFailure(f"trial {number} failed: {error}; every trial would fail the same way"))

    def check_failure_rate(self) -> None:
        """Stop the sweep once more than max_failure_rate * n_trials of its trials failed."""
        if self.failures > self.max_failure_rate * self.n_trials and not self.stopped:
            self.stop_with(
                SweepAborted(
                    f"{self.failures} trials failed, more than max_failure_rate={self.max_failure_rate} "
                    f"of n_trials={self.n_trials}"
                )
            )


def names_a_parameter(message: str, params: dict[str, Any]) -> bool:
    """Whether an error message names a sampled parameter (or its list, for `model.widths.3`):
    then the failure is that trial's own, not one every trial shares."""
    keys = set(params) | {name.rpartition(".")[0] for name in params if name.rpartition(".")[2].isdigit()}
    return any(key and key in message for key in keys)


def write_sweep_results(
    sweep_dir: Path,
    trials: Sequence[FrozenTrial],
    objectives: Sequence[str],
    directions: Sequence[str],
    header: dict[str, Any],
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Write trials.csv and optimization_results.yaml (and with `repeats` > 1 repeats.csv) from the study's
    trials, and log the best so far; returns the best trial's row (none yet: no row), or the Pareto front's rows."""
    rows, overrides = study_rows(trials, objectives, repeats)
    if repeats > 1:
        write_repeats(sweep_dir, repeat_rows(trials, objectives, repeats))
    best = write_results(sweep_dir, rows, overrides, objectives, directions, header)
    if isinstance(best, list):
        log.info(f"Pareto front so far: trials {[row['number'] for row in best]}")
        return best
    if best is not None:
        spread = f" +- {best[VALUE_SD]:.4g} over {best[REPEATS]} seeds" if best.get(VALUE_SD) is not None else ""
        log.info(f"best so far: trial {best['number']}, value {best['value']}{spread}")
    return [best] if best is not None else []


def ending_line(error: BaseException, sweep_dir: Path | None, storage: str) -> tuple[str, int] | None:
    """The one line (and exit status) that ends a sweep stopped by `error`; None for a bug."""
    table = f"trials on record in {sweep_dir / TRIALS_FILE}" if sweep_dir else "no trial ran"
    if isinstance(error, Interrupted):
        return f"sweep {error}: {table}; rerun the same command to continue", error.exit_code
    if isinstance(error, SweepStopped):
        return f"{error}; {table}", error.exit_code
    if isinstance(error, UserError):
        return str(error), 2
    if isinstance(error, StorageUnavailable):
        return f"{error}; {table}", error.exit_code
    if isinstance(error, DATABASE_ERRORS):  # a connection that broke in the middle of a statement
        said = error_line(error, storage)
        return f"database {shown_url(storage)} failed: {said}; rerun the same command to continue; {table}", 1
    return None
