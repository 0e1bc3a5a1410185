"""Sweeping: cnnsweep's Hydra sweeper over an Optuna study, and the sweep's records.

    hydra.sweeper.params -> StudySweeper (sweeper.py) asks the study for trials, holds them to the
    parameter budget, launches them as Hydra jobs -> each job is one `cnnsweep.train` run that
    reports to its trial (trial.py) -> study (study.py, storage.py) -> trials.csv (results.py)

It uses the training package only through its public entry (train.py's job and the model's
parameter count); the tools read what it writes.
"""
