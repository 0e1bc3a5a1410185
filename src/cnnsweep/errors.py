"""The one exception type for problems the user can fix (bad config, missing data, over budget)."""

import importlib
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
    a bad value the constructor refused should reach the user as its own one-line message, and so
    should a `_target_` that cannot be imported (a user's own model class not on the path).
    """
    kwargs.setdefault("_execution_whitelist_", RUN_TARGETS)
    try:
        return instantiate(config, *args, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        if isinstance(error.__cause__, ImportError):
            target = str(config.get("_target_")) if hasattr(config, "get") else "?"
            reason = why_not_importable(target)
            fix = (
                "put its module in the folder you run train.py from, or on PYTHONPATH, or install it"
                if reason.startswith("no module named")
                else "check the name"
            )
            raise UserError(f"_target_: {target} cannot be imported ({reason}); {fix}") from None
        raise


def why_not_importable(target: str) -> str:
    """Why a dotted `_target_` path does not import: its module is missing, fails, or lacks the name."""
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:end])
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and module.startswith(error.name) and end > 1:
                continue  # a shorter prefix may be the module and the rest a class inside it
            return f"no module named {error.name!r}" if error.name else str(error)
        except Exception as error:  # noqa: BLE001 -- the user's module itself raised on import
            return f"importing {module} raised {type(error).__name__}: {error}"
        missing = parts[end]
        if not hasattr(imported, missing):
            return f"module {module} has no {missing!r}"
        return f"importing {target} failed"
    return f"no module named {parts[0]!r}"


def first_line(error: BaseException) -> str:
    """The error's message, first line only (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
