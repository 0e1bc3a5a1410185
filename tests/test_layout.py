"""The package's layout: data flows one way (track <- train <- sweep <- tools); the old module names still work."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class

import cnnsweep
from cnnsweep.moved import MOVED

PACKAGE = Path(cnnsweep.__file__).parent
# What each part may import of cnnsweep: the shared top-level modules, and the parts below it.
ALLOWED = {
    "shared": {"shared"},
    "train": {"shared", "track", "train"},
    "track": {"shared", "track"},
    "sweep": {"shared", "train", "track", "sweep"},
    "tools": {"shared", "train", "track", "sweep", "tools"},
}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "shared"


def cnnsweep_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnsweep"):
            found |= {node.module} if node.module != "cnnsweep" else {f"cnnsweep.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnnsweep")}
    return found


def test_each_part_imports_only_the_shared_modules_and_the_parts_below_it():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for imported in cnnsweep_imports(path):
            imported = MOVED.get(imported, imported)
            if part_of(imported) not in ALLOWED[part_of(module)]:
                crossings.append(f"{module} imports {imported}")
    assert crossings == []
    assert len(list(PACKAGE.rglob("*.py"))) > 30  # the walk saw the whole package


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_is_the_moved_module_itself(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_a_config_saved_with_the_old_names_builds_the_same_classes():
    from cnnsweep.train.data import MNISTData
    from cnnsweep.train.model import ConvNet

    assert get_class("cnnsweep.model.ConvNet") is ConvNet
    assert get_class("cnnsweep.data.MNISTData") is MNISTData


def test_the_tools_commands_keep_their_short_names():
    result = subprocess.run([sys.executable, "-m", "cnnsweep.stats", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m cnnsweep.stats")


def test_a_bad_override_is_refused_before_torch_is_imported():
    """train.py's precheck answers before torch loads (seconds on a CPU): nothing it imports may pull torch in."""
    train_py = Path(cnnsweep.__file__).parents[2] / "train.py"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(train_py), "optimizer.lr=abc"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "optimizer.lr" in result.stderr.splitlines()[-1]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "cnnsweep.cli" in imported and "torch" not in imported
