"""What a trial came to: its job's values, or PRUNED or FAIL with the reason, and the facts its run left.

A job that returns one value per objective is COMPLETE. A job stopped by its pruner, or whose model
was over budget, is PRUNED; any other error, a wrong number of values, or a job lost in another
process (killed, out of memory, its node lost, past submitit's timeout) is FAIL. The facts (run
folder, parameter count, epochs, test accuracy, overrides) go on the trial as user attrs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.trial import TrialState

from cnnsweep.errors import UserError
from cnnsweep.records import RUN_DIR, RunFolder
from cnnsweep.sweep.attrs import OVER_BUDGET, OVERRIDES, REASON
from cnnsweep.sweep.results import facts_from_summary
from cnnsweep.train.model import OverBudget

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The trial's job ended without handing back its result (killed, out of memory, its node lost)."""


@dataclass
class Outcome:
    """How one trial's job ended: state and values for Optuna, the error (if any) and the user attrs."""

    state: TrialState
    values: list[float] | None
    error: BaseException | None
    attrs: dict[str, Any]


def job_outcome(job: JobReturn, trial: str, objectives: Sequence[str], timeout_min: Any) -> Outcome:
    """The outcome of a job of `trial` (its number, and its repeat if it has several), with a warning line
    if it was pruned or failed.

    `timeout_min` is hydra.launcher.timeout_min, named in the reason of a job that ran into it.
    """
    attrs = job_facts(job)
    try:
        returned = job.return_value  # (raises the job's exception when it failed)
    except Exception as raised:
        error: BaseException = raised
    else:
        values = [float(v) for v in (returned if isinstance(returned, (list, tuple)) else [returned])]
        if len(values) == len(objectives):
            return Outcome(TrialState.COMPLETE, values, None, attrs)
        error = UserError(f"the job returned {len(values)} values for the objectives {objectives}")
    pruned = isinstance(error, (optuna.TrialPruned, OverBudget))
    state = TrialState.PRUNED if pruned else TrialState.FAIL
    attrs[REASON] = str(error) if pruned else f"{type(error).__name__}: {error}"
    if timed_out(error):
        attrs[REASON] = f"timed out: the job ran into hydra.launcher.timeout_min={timeout_min}; raise it"
    if isinstance(error, OverBudget):
        attrs |= over_budget_facts(error)
    log.warning(f"trial {trial} {state.name}: {attrs[REASON]}")
    return Outcome(state, None, error, attrs)


def job_facts(job: JobReturn) -> dict[str, Any]:
    """The trial's facts from its job: overrides, run folder and what the run's summary.json holds."""
    facts: dict[str, Any] = {}
    if job.hydra_cfg is not None:
        run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
        facts[OVERRIDES] = [o for o in job.hydra_cfg.hydra.overrides.task]
        summary = RunFolder(run_dir).read_summary()
        if summary is not None:
            facts |= facts_from_summary(summary, run_dir)
        else:
            facts[RUN_DIR] = str(run_dir)
    return {key: item for key, item in facts.items() if item is not None}


def timed_out(error: BaseException) -> bool:
    """Whether submitit stopped the job at hydra.launcher.timeout_min (its signal, raised inside the job)."""
    return type(error).__name__ == "UncompletedJobError" and "timed-out" in str(error)


def over_budget_facts(error: OverBudget) -> dict[str, Any]:
    """What a trial whose network was over budget records (in the sweep's process or its job)."""
    return {"n_params": error.n_params, OVER_BUDGET: True, REASON: str(error)}


def tell(study: optuna.Study, number: int, values: list[float] | None, state: TrialState) -> None:
    """study.tell, also when the grid sampler, covered, asks the study to stop."""
    try:
        study.tell(number, values, state=state)
    except RuntimeError as stopped:
        # GridSampler calls study.stop() once the grid is covered, which only works inside
        # study.optimize; the trial's state and values are stored before that.
        if "Study.stop" not in str(stopped):
            raise
