"""Sweeping: cnnsweep's Hydra sweeper over an Optuna study, and the sweep's records.

    hydra.sweeper.params -> StudySweeper (sweeper.py) asks the study for trials and claims them
    (claims.py), holds them to the parameter budget (budget.py), launches them as Hydra jobs -> each
    job is one `cnnsweep.train` run that reports to its trial (trial.py) -> what it came to
    (outcomes.py) -> study (study.py, storage.py) -> trials.csv (results.py), after every trial;
    the failure policy and the sweep's last line (endings.py)
    repeats=K: each trial's K seeds as K jobs, told as their mean (repeats.py)
    confirm.top=N: the N best re-trained on fresh seeds, ranked with intervals (confirming.py, confirmation.py)
    the seeds both use and the intervals over seeds (noise.py)

Trials carry the attribute names of attrs.py and the state names of states.py. What the package knows of
its Hydra plugin above it (hydra_plugins/cnnsweep_sweeper: its `_target_`, what its sampler and pruner configs
may build, its TPE config) is in plugin_facts.py, which the plugin imports. The package uses the
training package through a few public names: each job runs train.py's task; the sweep's own process
builds and counts a trial's model (train.model) and catches Ctrl-C / SIGTERM as a run does
(train.signals). The tools read what it writes.
"""
