"""A trial's state as the sweep's records spell it: Optuna's TrialState names.

trials.csv's `state` column holds them: an Optuna sweep writes each trial's `TrialState.name`, and a
plain Hydra sweep maps each run's summary.json status to the same names (STATE_OF_STATUS). The
results table, the report, the plots and the benches read them from here.
"""

from __future__ import annotations

from optuna.trial import TrialState

from cnnsweep.records import RunStatus

COMPLETE = TrialState.COMPLETE.name
PRUNED = TrialState.PRUNED.name
FAIL = TrialState.FAIL.name
RUNNING = TrialState.RUNNING.name
FINISHED = tuple(state.name for state in TrialState if state.is_finished())  # COMPLETE, PRUNED, FAIL

STATE_OF_STATUS = {  # summary.json status -> the state a plain sweep's table shows (any other: FAIL)
    RunStatus.COMPLETED: COMPLETE,
    RunStatus.RUNNING: RUNNING,
    RunStatus.PRUNED: PRUNED,
    RunStatus.OVER_BUDGET: PRUNED,
    RunStatus.DIVERGED: FAIL,
    RunStatus.FAILED: FAIL,
    RunStatus.INTERRUPTED: FAIL,
}
