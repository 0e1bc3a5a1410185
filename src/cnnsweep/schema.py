"""Typed schemas for every config group option, registered in Hydra's ConfigStore.

Each YAML option in conf/ starts its defaults list with its schema (e.g. `/schema/optimizer@_here_:
sgd`), so a misspelt key or a value of the wrong type is refused while the config is composed,
before any work starts. The schemas hold types only: every value lives in the YAML files, and the
classes they build take every setting from there (their constructors have no defaults of their own).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from cnnsweep.errors import UserError

# The repository's conf/, for the tests and tools run from a checkout (an editable install). A run finds
# its configs through Hydra's search path instead (train.py's conf/, --config-dir, hydra.searchpath).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# OmegaConf reads these annotations at runtime: use typing.Optional/List forms it understands.
# ruff: noqa: UP006, UP007, UP035, UP045


@dataclass
class ConvNetSchema:
    _target_: str = MISSING
    widths: list[int] = MISSING
    layout: list[str] = MISSING
    dropout: float = MISSING
    head: str = MISSING
    in_channels: int = MISSING  # the data's shape: ${data.in_channels} etc. in every model option
    image_size: int = MISSING
    num_classes: int = MISSING


@dataclass
class SGDSchema:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamWSchema:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING


@dataclass
class StepSchema:
    _target_: str = MISSING
    _partial_: bool = True
    step_size: int = MISSING
    gamma: float = MISSING


@dataclass
class CosineSchema:
    _target_: str = MISSING
    _partial_: bool = True
    eta_min: float = MISSING


@dataclass
class OneCycleSchema:
    _target_: str = MISSING
    _partial_: bool = True
    max_lr: float = MISSING
    pct_start: float = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING
    anneal_strategy: str = MISSING
    three_phase: bool = MISSING
    cycle_momentum: bool = MISSING
    base_momentum: float = MISSING
    max_momentum: float = MISSING


@dataclass
class RotationSchema:
    _target_: str = MISSING
    degrees: float = MISSING
    interpolation: str = MISSING


@dataclass
class AffineSchema:
    _target_: str = MISSING
    degrees: float = MISSING
    translate: float = MISSING
    scale: list[float] = MISSING
    interpolation: str = MISSING


@dataclass
class CropFlipSchema:
    _target_: str = MISSING
    padding: int = MISSING
    flip: bool = MISSING


@dataclass
class NoAugmentationSchema:
    _target_: str = MISSING


@dataclass
class ImageDataSchema:
    _target_: str = MISSING
    root: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    train_limit: Optional[int] = MISSING
    test_limit: Optional[int] = MISSING
    in_channels: int = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING
    mean: Optional[List[float]] = MISSING
    std: Optional[List[float]] = MISSING
    download: bool = MISSING


@dataclass
class MNISTSchema(ImageDataSchema):
    dataset: str = MISSING


@dataclass
class CIFAR10Schema(ImageDataSchema):
    check_md5: bool = MISSING


@dataclass
class ImageFolderSchema(ImageDataSchema):
    test_fraction: float = MISSING


@dataclass
class TrainerSchema:
    _target_: str = MISSING
    epochs: int = MISSING
    device: str = MISSING
    progress: bool = MISSING
    channels_last: Optional[bool] = MISSING
    eval_channels_last: Optional[bool] = MISSING
    compile: Any = MISSING  # true, false or 'auto' (Trainer checks)
    precision: str = MISSING
    threads: Optional[int] = MISSING
    label_smoothing: float = MISSING
    ema_decay: Optional[float] = MISSING


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


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"convnet": ConvNetSchema},
    "optimizer": {"sgd": SGDSchema, "adamw": AdamWSchema},
    "scheduler": {"step": StepSchema, "cosine": CosineSchema, "onecycle": OneCycleSchema},
    "augmentation": {
        "rotation": RotationSchema,
        "affine": AffineSchema,
        "crop_flip": CropFlipSchema,
        "none": NoAugmentationSchema,
    },
    "data": {"mnist": MNISTSchema, "cifar10": CIFAR10Schema, "image_folder": ImageFolderSchema},
    "trainer": {"trainer": TrainerSchema},
}


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
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


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
