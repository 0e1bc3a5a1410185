"""The one exception type for problems the user can fix (bad config, missing data, over budget)."""

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate


class UserError(Exception):
    """A bad input: the message names the value, what was expected and how to fix it.

    `python train.py` prints it as one line and exits non-zero; in a sweep the trial fails
    with this message as its reason.
    """


# What a run's config may build: cnnsweep's own classes and torch's optimizers and layers. Hydra 1.4
# warns about (and 1.5 refuses) instantiating a config's _target_ without such a list.
RUN_TARGETS = ("cnnsweep.*", "torch.optim.*", "torch.nn.*")


def make(config: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate of RUN_TARGETS (or the `_execution_whitelist_` given), but a UserError
    raised by the target comes through as itself.

    Hydra wraps whatever a constructor raises in an InstantiationException with a traceback;
    a bad value the constructor refused should reach the user as its own one-line message.
    """
    kwargs.setdefault("_execution_whitelist_", RUN_TARGETS)
    try:
        return instantiate(config, *args, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise
