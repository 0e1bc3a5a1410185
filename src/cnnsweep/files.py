"""The names of the files runs and sweeps write, in one place (every module and tool reads them from here).

A run's folder (each file written whole or not at all; cnnsweep.records reads and writes them):
    <run>/metrics.csv             one row per finished epoch
    <run>/summary.json            what the run was and how it ended, rewritten after every epoch (records.Summary)
    <run>/checkpoints/last.pt     the state after the latest epoch (records.Checkpoint)
    <run>/checkpoints/best.pt     the state at the best epoch by the run's objective
    <run>/.hydra/                 Hydra's record: config.yaml, overrides.yaml, hydra.yaml
A sweep's folder:
    <sweep>/multirun.yaml (Hydra's), optuna.db (the default study storage), trials.csv,
            optimization_results.yaml, and one run folder per trial: <sweep>/<trial number>/
            confirmation.csv and, for a confirmation's runs, <sweep>/confirm/<trial number>/<seed>/
            (hydra.sweeper.repeats > 1: repeats.csv, and one run folder per repeat: <sweep>/<trial>/<repeat>/)

A module with no imports, so that the Hydra plugin can name the study's file without loading torch.
"""

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last"  # checkpoints/last.pt: the state after the latest epoch
BEST_CHECKPOINT = "best"  # checkpoints/best.pt: the state at the best epoch by the run's objective
CHECKPOINT_SUFFIX = ".pt"
HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"

MULTIRUN_FILE = "multirun.yaml"
STUDY_DB = "optuna.db"
TRIALS_FILE = "trials.csv"
REPEATS_FILE = "repeats.csv"  # one row per repeat of a sweep with hydra.sweeper.repeats > 1
BEST_FILE = "optimization_results.yaml"
CONFIRMATION_FILE = "confirmation.csv"  # the confirmed configurations, best first (cnnsweep.sweep.confirmation)
CONFIRMATION_PLOT = "confirmation.png"  # their intervals, drawn by the report
CONFIRM_DIR = "confirm"  # <sweep>/confirm/<trial>/<seed>/: one configuration's run on one fresh seed
