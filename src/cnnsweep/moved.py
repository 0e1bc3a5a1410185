"""The modules' names before the package was split into train/, sweep/ and tools/, kept importable.

Configs saved by earlier runs name their classes by the old paths (`_target_: cnnsweep.model.ConvNet`
in a run's .hydra/config.yaml, read again by resume and cnnsweep.evaluate), and the tools' commands
keep their short names (`python -m cnnsweep.report`). Each old name is the new module itself (the
same object: its classes are the same classes), and `python -m` runs the new module's code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

MOVED = {
    **{f"cnnsweep.{name}": f"cnnsweep.train.{name}" for name in (
        "augment", "compiling", "data", "loop", "machine", "memory", "model", "run", "schedule", "signals",
    )},
    **{f"cnnsweep.{name}": f"cnnsweep.sweep.{name}" for name in ("results", "samplers", "storage", "study", "trial")},
    **{f"cnnsweep.{name}": f"cnnsweep.tools.{name}" for name in (
        "bench", "confirm", "evaluate", "noise_sim", "plots", "report", "runbench", "stats",
    )},
}  # fmt: skip


class OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module it moved to."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        new = importlib.util.find_spec(MOVED[name])
        return importlib.util.spec_from_loader(name, self, origin=new.origin if new else None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported."""

    def get_code(self, name: str) -> CodeType | None:
        """The new module's code, for `python -m <old name>` (runpy runs it as __main__)."""
        spec = importlib.util.find_spec(MOVED[name])
        return (
            spec.loader.get_code(MOVED[name]) if spec and isinstance(spec.loader, importlib.abc.InspectLoader) else None
        )


def install() -> None:
    if not any(isinstance(finder, OldNames) for finder in sys.meta_path):
        sys.meta_path.append(OldNames())
