"""cnnsweep: Hydra-configured training and Optuna sweeps for small convolutional networks.

cnnsweep/train/   one run: config -> instantiate -> Trainer -> run folder
cnnsweep/sweep/   the Hydra sweeper over an Optuna study; its jobs are train runs
cnnsweep/tools/   reports, plots, evaluation and benchmarks over the folders both write
cnnsweep/*.py     what all three share: config schema and resolvers (schema), errors, objectives,
                  the files' names (files), the records on disk and their one reader and writer each
                  (records: run folder, status, summary, checkpoint), files written whole (artifacts),
                  train.py's command-line checks (cli), the `cnnsweep TOOL` command (command), old
                  class paths in saved configs (renames)
"""

__version__ = "0.1.0"

from cnnsweep import schema  # noqa: E402,F401  (registers config schemas and resolvers wherever cnnsweep runs)
