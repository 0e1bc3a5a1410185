"""cnnsweep: Hydra-configured training and Optuna sweeps for small convolutional networks."""

__version__ = "0.1.0"

from cnnsweep import schema  # noqa: E402,F401  (registers config schemas and resolvers wherever cnnsweep runs)
