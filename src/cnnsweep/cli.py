"""What `python train.py` checks before Hydra starts a run, and how it resumes one.

Hydra reports a bad override (an unknown option, a misspelt key, a value of the wrong type) in
several lines and only once its run folder exists; `precheck` composes the same config first and
refuses it in one line, also when the output folder cannot be written, before anything is made.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cnnsweep.errors import UserError
from cnnsweep.schema import TrainSchema, compose_config

# Hydra flags after which a plain run's precheck does not apply (sweeps, info, help, completion).
NOT_A_RUN = ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc")
NOT_A_RUN_PREFIXES = ("--shell-completion", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def precheck(argv: Sequence[str]) -> None:
    """Exit with a one-line error (status 2) if `python train.py ...` cannot start: for a plain run, its
    config and folder; for any, an environment variable that an override reads and that is not set."""
    try:
        check_environment(argv)
        if not any(arg in NOT_A_RUN or arg.startswith(NOT_A_RUN_PREFIXES) for arg in argv):
            check_run(list(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def check_environment(argv: Sequence[str]) -> None:
    """UserError for an override that reads an unset variable (`'hydra.sweeper.storage=${oc.env:NAME}'`):
    Hydra would stop on it with a traceback, a sweep only once it has started."""
    for arg in argv:
        for name in re.findall(r"\$\{oc\.env:([^,}]+)", arg):
            if name.strip() not in os.environ:
                key = arg.split("=", 1)[0]
                raise UserError(f"{key} reads the environment variable {name.strip()}, which is not set: export it")


def check_run(overrides: list[str]) -> None:
    """UserError if the overrides do not compose or the run's folder cannot be written."""
    try:
        cfg = compose_config(overrides, with_hydra=True)
        run_dir = Path(cfg.hydra.run.dir)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(one_line(error)) from error
    if cfg.resume is not None:
        saved_config(Path(cfg.resume))
    check_writable(run_dir)


def check_writable(folder: Path) -> None:
    """UserError unless `folder` exists as a writable folder or can be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write the output folder {folder}: {existing} is not writable; "
            "choose another with hydra.run.dir=PATH (or hydra.sweep.dir=PATH for sweeps)"
        )


def one_line(error: Exception) -> str:
    """Hydra's and OmegaConf's composition errors, said in one line with what is allowed."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        allowed = ", ".join(sorted(error.options or [])) or "(none)"
        return f"{group}={option} is not an option of the {group} group; allowed: {allowed}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        schema = getattr(cause, "object_type", None)
        keys = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")] if schema else []
        allowed = f"; allowed keys: {', '.join(keys)}" if keys else ""
        parent = cause.full_key.rpartition(".")[0] or "the config"
        return f"{cause.full_key} is not a key of {parent}{allowed}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
        return f"{cause.full_key}: {message}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (its .hydra/config.yaml), checked against the schema."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"resume={run_dir}: no run to resume there ({path} does not exist)")
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainSchema), OmegaConf.load(path))
    except OmegaConfBaseException as error:
        raise UserError(f"resume={run_dir}: {path} is not a valid cnnsweep config ({one_line(error)})") from error


def resumed_run(resume: str, task_overrides: Sequence[str]) -> DictConfig:
    """The config to continue `resume` with; refuses other overrides, which would change the run."""
    others = [override for override in task_overrides if not override.startswith("resume=")]
    if others:
        raise UserError(
            f"resume={resume} continues that run with its own saved config; drop the other overrides {others}"
        )
    return saved_config(Path(resume))
