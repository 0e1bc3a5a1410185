"""Experiment trackers: a run's epochs and outcome, and a sweep's trials, sent to TensorBoard or MLflow.

A tracker is a `Logger`: `start(RunInfo)` once the model is built, `log_epoch(epoch, metrics)` once per
finished epoch (after its checkpoint is written), `end(status, summary)` however the run ends. `Loggers`
sends each call to several and, when one of them raises (server down, disk full), says so in one warning
line and switches that one off for the rest of the run: the run's own files never depend on a tracker.
`build_loggers(cfg.logger)` makes them from the `logger` config group (`logger=[tensorboard,mlflow]`).

For sweeps, `MLflowSweepTracker` is the sweeper's side: one parent MLflow run per sweep, one child run per
trial (also those that never ran), and the best trials at the end. TensorBoard needs no sweeper side: each
trial writes HParams into its own event folder under the sweep folder.

This package reads nothing from the rest of cnnsweep but `cnnsweep.errors`; tensorboard and mlflow are
optional extras, imported only when their logger is made.
"""

from cnnsweep.track.logger import (
    Logger,
    Loggers,
    RunInfo,
    SweepInfo,
    SweepTrackers,
    build_loggers,
    flatten,
    mask_password,
)
from cnnsweep.track.mlflow import MLflowLogger, MLflowSweepTracker, default_tracking_uri
from cnnsweep.track.tensorboard import TensorBoardLogger

__all__ = [
    "Logger",
    "Loggers",
    "MLflowLogger",
    "MLflowSweepTracker",
    "RunInfo",
    "SweepInfo",
    "SweepTrackers",
    "TensorBoardLogger",
    "build_loggers",
    "default_tracking_uri",
    "flatten",
    "mask_password",
]
