"""The packages an option imports beyond what every run needs, and the one line that names one missing.

Optuna and the trackers import some packages only when an option is first used: CMA-ES imports `cmaes`
at its first draw after the random start, a logger its tracker when the run starts, submitit's launcher
`submitit` when it launches. A missing one would stop a sweep in its middle with a traceback and a trial
left RUNNING. `check_packages(cfg)` reads every `_target_` a composed config names (the sweeper's sampler
and the launcher included) and refuses, before anything runs, one whose package is not installed, naming
the `pip install` that adds it. README's `pip install -e ".[dev]"` installs every package named here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cnnsweep.errors import UserError


@dataclass(frozen=True)
class Needs:
    module: str  # what the option imports
    install: str  # the command that installs it


# `_target_` prefix, lower case -> the package its class imports only once it is used. Lower case, so that one
# prefix names a tracker by its module path (cnnsweep.track.mlflow.MLflowLogger) or its short one
# (cnnsweep.track.MLflowLogger).
NEEDS = {
    "optuna.samplers.cmaessampler": Needs("cmaes", 'pip install cmaes (or reinstall cnnsweep: pip install -e ".")'),
    "cnnsweep.track.tensorboard": Needs("tensorboard", 'pip install -e ".[tensorboard]"'),
    "cnnsweep.track.mlflow": Needs("mlflow", 'pip install -e ".[mlflow]"'),
    "hydra_plugins.hydra_submitit_launcher.": Needs("submitit", 'pip install -e ".[cluster]"'),
}
# Launchers are options of Hydra's own group, there only once their plugin package is installed.
LAUNCHER_PLUGINS = {
    "submitit_local": Needs("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[cluster]"'),
    "submitit_slurm": Needs("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[cluster]"'),
    "joblib": Needs("hydra_plugins.hydra_joblib_launcher", 'pip install -e "."'),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a broken one
        return False


def needs(target: str) -> Needs | None:
    """What the class `target` names imports beyond cnnsweep's own dependencies, if anything."""
    return next((need for prefix, need in NEEDS.items() if target.lower().startswith(prefix)), None)


def targets(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, target) for every `_target_` in a plain container (a resolved config)."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield key or "the config", node["_target_"]
        for name, value in node.items():
            yield from targets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from targets(value, f"{key}.{index}")


def missing_package(where: str, target: str) -> UserError | None:
    """The refusal for the option at `where` (naming `target`), if the package it imports is missing."""
    need = needs(target)
    if need is None or installed(need.module):
        return None
    return UserError(
        f"{where} ({target}) needs the Python package {need.module!r}, which is not installed here: {need.install}"
    )


def check_packages(config: dict[str, Any], choices: dict[str, Any] | None = None) -> None:
    """UserError for the first option in `config` (a plain, resolved container) whose package is missing.

    `choices` (hydra.runtime.choices) lets the line name the option as chosen: `hydra/sweeper/sampler=cmaes`.
    """
    options = {group.replace("/", "."): f"{group}={option}" for group, option in (choices or {}).items()}
    for key, target in targets(config):
        where = options.get(key) or options.get(key.rpartition(".")[0]) or key  # logger.mlflow: logger=...
        refusal = missing_package(where, target)
        if refusal is not None:
            raise refusal


def check_launcher(arguments: list[str]) -> None:
    """UserError for `hydra/launcher=NAME` on the command line whose plugin package is not installed
    (Hydra would say only that the option is not found, in several lines)."""
    for argument in arguments:
        key, _, option = argument.partition("=")
        need = LAUNCHER_PLUGINS.get(option) if key.lstrip("+~") == "hydra/launcher" else None
        if need is not None and not installed(need.module):
            raise UserError(
                f"hydra/launcher={option} needs the Hydra plugin {need.module!r}, which is not installed here: "
                f"{need.install}"
            )
