"""Old class paths in configs saved before the package was split into train/, sweep/ and tools/.

A run folder from then names its classes by the flat paths (`_target_: cnnsweep.model.ConvNet` in its
.hydra/config.yaml and in its checkpoints' config). Resume (cnnsweep.cli.saved_config) and evaluate
(cnnsweep.tools.evaluate) read such configs through `current_names`, so those runs still continue and
evaluate; nothing else knows the old names.
"""

from __future__ import annotations

from typing import Any

# old module -> the module it moved to: the modules whose classes and functions a run's config names
RENAMED_MODULES = {
    "cnnsweep.augment": "cnnsweep.train.augment",
    "cnnsweep.data": "cnnsweep.train.data",
    "cnnsweep.loop": "cnnsweep.train.loop",
    "cnnsweep.model": "cnnsweep.train.model",
    "cnnsweep.schedule": "cnnsweep.train.schedule",
}


def current_target(target: str) -> str:
    """A `_target_` path with its module's current name (`cnnsweep.model.ConvNet` -> `cnnsweep.train.model.ConvNet`)."""
    module, dot, name = target.rpartition(".")
    return f"{RENAMED_MODULES[module]}{dot}{name}" if module in RENAMED_MODULES else target


def current_names(config: Any) -> Any:
    """A plain config (dicts and lists, as yaml or OmegaConf.to_container gives it) with every `_target_`
    renamed by current_target; a new copy, the argument unchanged."""
    if isinstance(config, dict):
        return {
            key: current_target(value) if key == "_target_" and isinstance(value, str) else current_names(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [current_names(value) for value in config]
    return config
