"""cnnsweep: Hydra-configured training and Optuna sweeps for small convolutional networks."""

import os

__version__ = "0.1.0"

# optuna 2.10 uses SQLAlchemy 1.x APIs and warns about SQLAlchemy 2.0 on import; we pin sqlalchemy<2
# (pyproject.toml), so the warning only adds noise to every sweep.
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")

from cnnsweep import schema  # noqa: E402,F401  (registers config schemas and resolvers wherever cnnsweep runs)
