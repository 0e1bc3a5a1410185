"""What `python train.py` checks before Hydra starts a run, and how it resumes one.

Hydra reports a bad override (an unknown option, a misspelt key, a value of the wrong type) in
several lines and only once its run folder exists; `precheck` composes the same config first and
refuses it in one line, also when a mandatory value (`???`) is left unset, a value cannot be resolved,
an option's package is not installed (cnnsweep.packages) or the output folder cannot be written, before
anything is made. `check_config` is the part of that
which every job repeats on the config Hydra composed for it (sweeps, `--config-dir` runs).
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
from cnnsweep.files import CONFIG_FILE, HYDRA_DIR
from cnnsweep.packages import check_launcher, check_packages
from cnnsweep.renames import current_names
from cnnsweep.schema import CONF_DIR, TrainSchema, compose_config, register_options

# Hydra flags after which a plain run's precheck does not apply (sweeps, info, help, completion).
NOT_A_RUN = ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc")
NOT_A_RUN_PREFIXES = ("--shell-completion", "--config-name", "-cn", "--config-path", "-cp")
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")  # a folder of the user's own configs, searched beside conf/
MISSING = "???"  # OmegaConf's mark of a mandatory value


def precheck(argv: Sequence[str], conf_dir: Path) -> None:
    """Exit with a one-line error (status 2) if `python train.py ...` cannot start: for a plain run, its
    config (composed from conf_dir and any --config-dir) and folder; for any, an environment variable
    that an override reads and that is not set."""
    try:
        check_environment(argv)
        check_launcher(list(argv))
        overrides, config_dirs = split_config_dirs(list(argv))
        for folder in config_dirs:  # the schemas of a --config-dir's own options, before Hydra composes any
            register_options(folder)
        if not any(arg in NOT_A_RUN or arg.startswith(NOT_A_RUN_PREFIXES) for arg in argv):
            check_run(overrides, conf_dir, config_dirs)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def split_config_dirs(argv: list[str]) -> tuple[list[str], list[Path]]:
    """The overrides, and the folders `--config-dir DIR` / `-cd DIR` / `--config-dir=DIR` name."""
    overrides, folders = [], []
    arguments = iter(argv)
    for arg in arguments:
        flag, equals, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            folder = Path(value if equals else next(arguments, "")).absolute()
            if not folder.is_dir():
                raise UserError(f"{flag} {folder}: no such folder (it should hold your own config groups, e.g. model/)")
            folders.append(folder)
        else:
            overrides.append(arg)
    return overrides, folders


def check_environment(argv: Sequence[str]) -> None:
    """UserError for an override that reads an unset variable (`'hydra.sweeper.storage=${oc.env:NAME}'`):
    Hydra would stop on it with a traceback, a sweep only once it has started."""
    for arg in argv:
        for name in re.findall(r"\$\{oc\.env:([^,}]+)", arg):
            if name.strip() not in os.environ:
                key = arg.split("=", 1)[0]
                raise UserError(f"{key} reads the environment variable {name.strip()}, which is not set: export it")


def check_run(overrides: list[str], conf_dir: Path = CONF_DIR, config_dirs: Sequence[Path] = ()) -> None:
    """UserError if the overrides do not compose into a complete config or the run's folder cannot be written."""
    if config_dirs:  # Hydra searches a --config-dir beside conf/; hydra.searchpath does the same for compose
        overrides = [*overrides, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in config_dirs) + "]"]
    try:
        cfg = compose_config(overrides, with_hydra=True, config_dir=conf_dir)
        run_dir = Path(cfg.hydra.run.dir)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(one_line(error)) from error
    if cfg.resume is not None:
        saved_config(Path(cfg.resume))
        return  # the run continues with its own saved config, checked there
    check_config(cfg)
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=False)
    check_packages(job, cfg.hydra.runtime.choices)
    check_writable(run_dir)


def check_config(cfg: DictConfig) -> None:
    """UserError naming every mandatory value (???) the config leaves unset, or the first value that
    cannot be resolved (an interpolation to a key that does not exist, a folder that is not there).
    The `hydra` node, if present, is Hydra's own and not checked."""
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    unset = missing_values(OmegaConf.to_container(job, resolve=False))
    if unset:
        are = "is not set" if len(unset) == 1 else "are not set"
        examples = " ".join(f"{key}=VALUE" for key in unset)
        raise UserError(f"{', '.join(unset)} {are} (??? in the config): give {examples} on the command line")
    try:
        OmegaConf.to_container(job, resolve=True)
    except OmegaConfBaseException as error:
        refusal = resolver_refusal(error)
        raise (refusal or UserError(one_line(error))) from None


def resolver_refusal(error: BaseException) -> UserError | None:
    """The UserError a resolver (cnnsweep.class_count) raised, which OmegaConf wraps in its own errors."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__ or error.__context__
    return error


def missing_values(node: object, key: str = "") -> list[str]:
    """The dotted keys of every `???` in a plain (unresolved) container."""
    if isinstance(node, dict):
        return [found for name, value in node.items() for found in missing_values(value, f"{key}{name}.")]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in missing_values(value, f"{key}{i}.")]
    return [key.rstrip(".")] if node == MISSING else []


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
    """The config a run was started with (its .hydra/config.yaml), with the classes' current names (a run from
    before the package's split names them by the old ones), checked against the schema."""
    path = run_dir / HYDRA_DIR / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"resume={run_dir}: no run to resume there ({path} does not exist)")
    try:
        saved = current_names(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
        return OmegaConf.merge(OmegaConf.structured(TrainSchema), saved)
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
