"""The names a sweep writes on its study's trials: Optuna user attrs, system attrs and constraints.

The sweeper and the study's bookkeeping (study.py) set them; the results table reads them. A module
with no imports, so that a reader needs none of the study machinery to name them.
"""

# User attrs (Optuna shows them in the dashboard; trials.csv has a column for some). The trial's run folder,
# known before its job starts, is cnnsweep.records.RUN_DIR: the trackers read it too, and they sit below sweep.
REASON = "reason"  # why the trial was pruned or failed
OVER_BUDGET = "over_budget"  # the drawn model was over budget.max_params, so it never ran
OVERRIDES = "overrides"  # the task overrides the trial's job ran with
REQUEUED = "requeued"  # this FAILed trial's parameters were queued again
SURPLUS = "surplus"  # asked beyond n_trials by a racing worker, never run
CONFIRMS = "confirms"  # a confirmation trial: the number of the search trial whose configuration it re-trains
CONFIRM_SEED = "confirm_seed"  # a confirmation trial: the fresh seed it trains on
REPEAT = "repeat_{}"  # (hydra.sweeper.repeats > 1) repeat i's record once it ended: seed, state, values, facts
VALUES_SD = "values_sd"  # (repeats > 1) a COMPLETE trial's sample sd over its repeats, one per objective
REPEATS_RAN = "repeats"  # (repeats > 1) how many of the trial's repeats ended (the dashboard shows both)

# Study user attrs
REPEAT_SEEDS = "repeat_seeds"  # (repeats > 1) the seeds every trial's repeats train on: a rerun must use the same

# System attrs
OWNER = "cnnsweep:owner"  # "host:pid" of the sweep process running the trial
BEAT = "cnnsweep:heartbeat"  # in a journal: the worker's clock (epoch seconds) at its last heartbeat
RETRIED_FROM = "failed_trial"  # set by Optuna's RetryHeartbeatStaleTrialCallback: a chain's first trial
CURVE = "cnnsweep:curve_{}"  # (repeats > 1) repeat i's objective after each epoch so far, written by its job
PRUNED_BY = "cnnsweep:pruned"  # (repeats > 1) why the pruner stopped the trial: its other repeats stop too

# Optuna constraint (trial.set_constraint): n_params - budget.max_params; feasible at <= 0
BUDGET_CONSTRAINT = "n_params_over_budget"
