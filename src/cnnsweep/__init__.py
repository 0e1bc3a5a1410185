"""cnnsweep: Hydra-configured training and Optuna sweeps for small convolutional networks.

cnnsweep/train/   one run: config -> instantiate -> Trainer -> run folder
cnnsweep/sweep/   the Hydra sweeper over an Optuna study; its jobs are train runs
cnnsweep/tools/   reports, plots, evaluation and benchmarks over the folders both write
cnnsweep/*.py     what all three share: config schema and resolvers (schema), errors, objectives,
                  the run folder's files (artifacts), train.py's command-line checks (cli)
"""

__version__ = "0.1.0"

from cnnsweep import moved, schema  # noqa: E402,F401  (schema registers config schemas and resolvers wherever cnnsweep runs)

moved.install()  # the modules' names before the split (saved configs, `python -m cnnsweep.report`)
