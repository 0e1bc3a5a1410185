"""cnnsweep: Hydra-configured training and Optuna sweeps for small convolutional networks."""

__version__ = "0.1.0"
