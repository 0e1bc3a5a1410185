"""Typed schemas for every config group option, registered in Hydra's ConfigStore.

Each option of a group in conf/ (a `_target_` node) starts its defaults list with its schema, under its own
name (`/schema/optimizer@_here_: sgd`), so that a misspelt key or a value of the wrong type is refused
while the config is composed, before any work starts. The schemas are not written by hand: `import
cnnsweep` reads each option file's `_target_` and makes its schema from that target's signature
(`option_schema`; cnnsweep.signatures reads it from source). Adding an option is its YAML file (and its
class, if new). The schemas hold types only: every value lives in the YAML files, and the classes they
build take every setting from there (their constructors have no defaults of their own).
"""

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from cnnsweep.errors import UserError
from cnnsweep.signatures import Parameter, SignatureError, parameters

# The repository's conf/, for the tests and tools run from a checkout (an editable install). A run finds
# its configs through Hydra's search path instead (train.py's conf/, --config-dir, hydra.searchpath).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# OmegaConf reads these annotations at runtime: use typing.Optional/List forms it understands.
# ruff: noqa: UP006, UP007, UP035, UP045


@dataclass
class BudgetSchema:
    max_params: Optional[int] = MISSING


@dataclass
class TrainSchema:
    # Group nodes are typed by their own option's schema (above), whichever option is chosen.
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    augmentation: Any = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    seed: int = MISSING
    objective: Any = MISSING  # one name, or a list of names for a multi-objective sweep
    budget: BudgetSchema = MISSING
    resume: Optional[str] = MISSING
    logger: Any = None  # {name: a logger's _target_ node, ...} from the logger group's options (empty: none)


# The config groups whose options are `_target_` nodes, each checked against its target's signature.
GROUPS = ("model", "optimizer", "scheduler", "augmentation", "data", "trainer", "logger")
# Keys Hydra's instantiate reads beside the constructor's own arguments.
INSTANTIATE_KEYS: dict[str, Any] = {"_partial_": bool, "_convert_": str, "_recursive_": bool, "_args_": List[Any]}


def target_nodes(path: Path) -> dict[str, dict[str, Any]]:
    """The `_target_` nodes of an option file by schema name: the file itself under its own name, or (the
    logger group, one tracker per key) each top-level key that holds one. Read as plain YAML: only the keys
    matter here, and OmegaConf's loader costs every `import cnnsweep` several times more."""
    try:
        option = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}  # Hydra reports an unreadable option file itself, when it is chosen
    if not isinstance(option, dict):
        return {}
    if "_target_" in option:
        return {path.stem: option}
    return {key: node for key, node in option.items() if isinstance(node, dict) and "_target_" in node}


def option_schema(node: dict[str, Any]) -> type:
    """The schema of one `_target_` node, derived from its target's signature: a field for each parameter
    the node sets and, unless the node is `_partial_` (completed in code with what a run knows then: the
    model's parameters, the optimizer), each parameter without a default; typed as the signature is. A key
    that is no parameter of the target gets no field, so composing the option refuses it, naming it. Every
    field is mandatory (???): values live in the YAML only."""
    target = str(node["_target_"])
    try:
        found = parameters(target)
    except (SignatureError, OSError, SyntaxError, ValueError):
        # No source to read (a compiled class, a base class the reader cannot follow): the keys the option
        # sets, unchecked in type, so that a misspelt override is still refused and the option still composes.
        found = [Parameter(str(key), Any, required=False) for key in node if not str(key).startswith("_")]
    partial = bool(node.get("_partial_", False))
    sets = set(node.keys())
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=MISSING))]
    for key, kind in INSTANTIATE_KEYS.items():
        if key in sets:
            fields.append((key, kind, dataclasses.field(default=partial if key == "_partial_" else MISSING)))
    for parameter in found:
        if parameter.name in sets or (parameter.required and not partial):
            fields.append((parameter.name, parameter.type, dataclasses.field(default=MISSING)))
    return dataclasses.make_dataclass(schema_name(target), fields)


def schema_name(target: str) -> str:
    """`torch.optim.SGD` -> SGDSchema, `cnnsweep.train.schedule.step_lr` -> StepLrSchema (errors name it)."""
    name = target.rpartition(".")[2]
    if "_" in name or name.islower():
        name = "".join(part.capitalize() for part in name.split("_"))
    return f"{name}Schema"


def register_options(conf_dir: Path = CONF_DIR) -> dict[str, dict[str, type]]:
    """Store a schema for each option of conf_dir's groups as `schema/<group>/<name>` (what an option's
    defaults list names: `/schema/optimizer@_here_: sgd`); returns them by group and name."""
    store = ConfigStore.instance()
    stored: dict[str, dict[str, type]] = {}
    for group in GROUPS:
        for path in sorted((conf_dir / group).glob("*.yaml")):
            for name, node in target_nodes(path).items():
                schema = option_schema(node)
                store.store(group=f"schema/{group}", name=name, node=schema)
                stored.setdefault(group, {})[name] = schema
    return stored


def if_set(value: Any, then: Any, otherwise: Any) -> Any:
    """`${cnnsweep.if_set:${key},A,B}`: A when key holds a value, B when it is null."""
    return otherwise if value is None else then


def cpu_cores() -> int:
    """`${cnnsweep.cpu_cores:}`: the CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def class_count(root: str) -> int:
    """`${cnnsweep.class_count:${.root}}`: the number of class sub-folders of an image folder (of its
    train/ folder where it has one), as torchvision's ImageFolder counts them (every sub-folder)."""
    folder = Path(root)
    if not folder.is_dir():
        raise UserError(f"data.root={root} is not a folder; point it at a folder of class sub-folders")
    if (folder / "train").is_dir():
        folder = folder / "train"
    classes = [entry for entry in folder.iterdir() if entry.is_dir()]
    if not classes:
        raise UserError(f"{folder} has no sub-folders; it needs one sub-folder of images per class")
    return len(classes)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore and the resolvers in OmegaConf (idempotent).

    Runs on import of this module, which `import cnnsweep` does: every process that composes a
    config (the sweep, and each parallel job) has them.
    """
    OmegaConf.register_resolver("cnnsweep.if_set", if_set, replace=True)
    OmegaConf.register_resolver("cnnsweep.cpu_cores", cpu_cores, replace=True)
    OmegaConf.register_resolver("cnnsweep.class_count", class_count, replace=True)
    ConfigStore.instance().store(name="train_schema", node=TrainSchema)
    register_options(CONF_DIR)


def compose_config(overrides: Sequence[str] = (), with_hydra: bool = False, config_dir: Path = CONF_DIR) -> DictConfig:
    """config_dir/train.yaml composed with `overrides`, as `python train.py` composes it (no Hydra run).

    with_hydra keeps the `hydra` node (run folder, sweeper, launcher).
    """
    with initialize_config_dir(config_dir=str(config_dir)):
        return compose("train", overrides=list(overrides), return_hydra_config=with_hydra)


class ConfigOptions:
    """The options of the config groups where Hydra finds them (its config search path: train.py's
    conf/, a --config-dir, hydra.searchpath), and the primary config composed with any of them."""

    def __init__(self, loader: ConfigLoader, config_name: str = "train") -> None:
        self.loader, self.config_name = loader, config_name

    @classmethod
    def of_running_app(cls, config_name: str) -> "ConfigOptions | None":
        """The search path of the Hydra app this process runs (also in a launcher's job process, which
        Hydra hands its global state); None where there is none."""
        running = GlobalHydra.instance()
        return cls(running.config_loader(), config_name) if running.is_initialized() else None

    @classmethod
    def of_folder(cls, config_dir: Path = CONF_DIR) -> "ConfigOptions":
        with initialize_config_dir(config_dir=str(config_dir)):
            return cls(GlobalHydra.instance().config_loader())

    def names(self, group: str) -> list[str]:
        return sorted(self.loader.get_group_options(group))

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        return self.loader.load_configuration(self.config_name, list(overrides), RunMode.RUN)


register()
