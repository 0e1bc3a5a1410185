"""The package's layout: data flows one way (track <- train <- sweep <- tools, and the Hydra plugin above them all);
one command runs the tools; a run folder from before the split still resumes and evaluates."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cnnsweep
from cnnsweep.command import TOOLS
from cnnsweep.records import RunStatus
from cnnsweep.renames import RENAMED_MODULES, current_names
from cnnsweep.tools.evaluate import evaluate_checkpoint

from helpers import REPO, read_metrics, summary, tiny_overrides, tool, train_py

PACKAGE = Path(cnnsweep.__file__).parent
PLUGIN = "hydra_plugins.cnnsweep_sweeper"
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


def imports(path: Path, prefix: str) -> set[str]:
    """The modules `path` imports whose names start with `prefix` (`from cnnsweep import x`: cnnsweep.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            found |= {node.module} if node.module != prefix else {f"{prefix}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(prefix)}
    return found


def package_modules() -> list[tuple[str, Path]]:
    modules = [
        (".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"), path)
        for path in sorted(PACKAGE.rglob("*.py"))
    ]
    assert len(modules) > 30  # the walk saw the whole package
    return modules


def test_each_part_imports_only_the_shared_modules_and_the_parts_below_it():
    crossings = [
        f"{module} imports {imported}"
        for module, path in package_modules()
        for imported in imports(path, "cnnsweep")
        if part_of(imported) not in ALLOWED[part_of(module)]
    ]
    assert crossings == []


def test_no_module_of_the_package_imports_the_hydra_plugin_above_it():
    assert [f"{module} imports {PLUGIN}" for module, path in package_modules() if imports(path, PLUGIN)] == []
    assert imports(REPO / "src" / "hydra_plugins" / "cnnsweep_sweeper" / "cnnsweep_sweeper.py", "cnnsweep")


def test_cnnsweep_names_its_tools_and_runs_each_with_its_arguments():
    listed = subprocess.run([sys.executable, "-m", "cnnsweep", "--help"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")] == list(TOOLS)
    assert list(TOOLS) == ["report", "evaluate", "bench", "runbench", "stats", "confirm", "noise_sim"]
    stats = tool("stats", "--help")
    assert stats.returncode == 0 and stats.stdout.startswith("usage: cnnsweep stats"), stats.stderr
    direct = subprocess.run([sys.executable, "-m", "cnnsweep.tools.stats", "--help"], capture_output=True, text=True)
    assert direct.returncode == 0 and direct.stdout == stats.stdout  # the module itself still runs
    confirm = subprocess.run([sys.executable, "-m", "cnnsweep.confirm", "--help"], capture_output=True, text=True)
    assert confirm.returncode == 0 and confirm.stdout == tool("confirm", "--help").stdout  # its own short name


def test_an_unknown_tool_is_refused_in_one_line_naming_the_tools():
    result = tool("reprot", "multirun/")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: cnnsweep: unknown tool 'reprot'; allowed: {', '.join(TOOLS)}\n"
    gone = subprocess.run([sys.executable, "-m", "cnnsweep.report", "--help"], capture_output=True, text=True)
    assert gone.returncode == 1 and "No module named cnnsweep.report" in gone.stderr  # the short old names are gone


def test_the_installed_cnnsweep_script_runs_the_same_command():
    script = Path(sys.executable).parent / ("cnnsweep.exe" if os.name == "nt" else "cnnsweep")
    if not script.is_file():
        pytest.skip(f"no {script}: the console script exists once the project is pip-installed (as CI does)")
    result = subprocess.run([str(script), "stats", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == tool("stats", "--help").stdout, result.stderr


def test_old_class_paths_in_a_saved_config_are_renamed_to_the_classes_they_moved_to():
    old = {
        "model": {"_target_": "cnnsweep.model.ConvNet", "widths": [8]},
        "scheduler": {"_target_": "cnnsweep.schedule.step_lr"},
        "optimizer": {"_target_": "torch.optim.SGD"},
        "logger": [{"_target_": "cnnsweep.track.TensorBoardLogger"}],
    }
    new = current_names(old)
    assert new == {
        "model": {"_target_": "cnnsweep.train.model.ConvNet", "widths": [8]},
        "scheduler": {"_target_": "cnnsweep.train.schedule.step_lr"},
        "optimizer": {"_target_": "torch.optim.SGD"},
        "logger": [{"_target_": "cnnsweep.track.TensorBoardLogger"}],
    }
    assert old["model"]["_target_"] == "cnnsweep.model.ConvNet"  # a copy: the argument is left as it was
    for before, after in RENAMED_MODULES.items():
        assert importlib.util.find_spec(before) is None and importlib.util.find_spec(after) is not None


# A runner in train.py's place that ends the process (as a kill would) once the first epoch's last.pt is written.
STOP_AFTER_FIRST_CHECKPOINT = """
import os, runpy, sys
import cnnsweep.artifacts as artifacts
write_atomically = artifacts.write_atomically

def write_then_stop(path, write):
    write_atomically(path, write)
    if path.name == "last.pt":
        os._exit(137)

artifacts.write_atomically = write_then_stop
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def with_old_names(node: object) -> object:
    """A config as a run from before the split saved it: its classes named `cnnsweep.model.ConvNet`, ..."""
    if isinstance(node, dict):
        return {key: with_old_names(value) for key, value in node.items()}
    if isinstance(node, list):
        return [with_old_names(value) for value in node]
    return node.replace("cnnsweep.train.", "cnnsweep.") if isinstance(node, str) else node


@pytest.mark.slow  # a sweep (or runs) in subprocesses: the quick loop keeps its neighbours
def test_a_run_folder_from_before_the_split_resumes_and_evaluates(tiny_mnist, tmp_path):
    runner = tmp_path / "stop.py"
    runner.write_text(STOP_AFTER_FIRST_CHECKPOINT)
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, "trainer.epochs=2", "data.val_size=100")
    stopped = train_py(*overrides, f"hydra.run.dir={run_dir}", runner=runner)
    assert stopped.returncode == 137, stopped.stdout + stopped.stderr
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    saved = run_dir / ".hydra" / "config.yaml"
    saved.write_text(yaml.safe_dump(with_old_names(yaml.safe_load(saved.read_text()))))
    for checkpoint in (run_dir / "checkpoints").glob("*.pt"):
        state = torch.load(checkpoint, weights_only=True)
        torch.save(state | {"config": with_old_names(state["config"])}, checkpoint)
    assert "_target_: cnnsweep.model.ConvNet" in saved.read_text()
    alone = tmp_path / "alone" / "epoch1.pt"  # a checkpoint without its folder: evaluate reads the config in it
    alone.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.pt", alone)

    resumed = train_py(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert summary(run_dir)["status"] == RunStatus.COMPLETED and summary(run_dir)["resumed_after_epoch"] == 1
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["1", "2"]

    for target, config in ((run_dir, str(saved)), (alone, f"the config stored in {alone}")):
        evaluation = evaluate_checkpoint(target, device="cpu")  # in this process: `cnnsweep evaluate` is tested apart
        assert evaluation["test_acc"] == pytest.approx(evaluation["recorded_test_acc"], abs=1e-9)
        assert evaluation["config"] == config
    assert evaluation["epoch"] == 1 and "cnnsweep.model.ConvNet" in str(torch.load(alone, weights_only=True))


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
