"""Every option of every config group imports in the installed environment; a missing package is one line.

README's `pip install -e ".[dev]"` must install what every option imports: a package installed by hand
(cmaes was) hides a missing install step. The test below imports each option's classes and the packages
they import only once used (cnnsweep.packages.NEEDS), so that it fails naming the missing package.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from cnnsweep.errors import UserError
from cnnsweep.files import TRIALS_FILE
from cnnsweep.packages import LAUNCHER_PLUGINS, NEEDS, check_launcher, check_packages, needs, targets
from cnnsweep.schema import ConfigOptions
from cnnsweep.sweep.states import COMPLETE, FAIL

from helpers import IN_PROCESS, read_trials, sweep_overrides, train_py

GROUPS = (
    "model", "optimizer", "scheduler", "augmentation", "data", "trainer", "logger", "experiment", "hparams_search",
    "hydra/sweeper/sampler", "hydra/sweeper/pruner", "hydra/launcher",
)  # fmt: skip
OPTIONS = ConfigOptions.of_folder()
# what an option needs besides itself to compose: the user's own folder, a sweep's sweeper
NEEDED = {"image_folder": ["data.root=folder", "data.num_classes=3"]}
SWEEPER = ["hydra/sweeper=cnnsweep"]


def import_target(target: str) -> object:
    """The class or function a `_target_` names, imported as Hydra would."""
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:  # a nested name: cnnsweep.track.MLflowLogger.something
        return getattr(import_target(module), name)


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in OPTIONS.names(group)]
)  # fmt: skip
def test_every_option_imports_what_it_names(group, option):
    overrides = [*(SWEEPER if group.startswith("hydra/sweeper/") else []), f"{group}={option}", *NEEDED.get(option, [])]
    cfg = OPTIONS.loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN)
    found = list(targets(OmegaConf.to_container(cfg, resolve=False)))
    assert found, f"{group}={option} names no _target_"
    for key, target in found:
        assert callable(import_target(target)), f"{key}: {target}"
        need = needs(target)
        if need is not None:
            importlib.import_module(need.module)  # ModuleNotFoundError names the package README's install lacks


def test_the_table_names_packages_the_dev_install_brings():
    for need in [*NEEDS.values(), *LAUNCHER_PLUGINS.values()]:
        assert importlib.util.find_spec(need.module) is not None, need.install


@pytest.fixture
def without_cmaes(monkeypatch):
    """`cmaes` as if not installed, in this process (find_spec finds nothing)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))


def test_a_missing_package_is_refused_in_one_line_naming_the_option_and_the_install(without_cmaes):
    config = {"hydra": {"sweeper": {"sampler": {"_target_": "optuna.samplers.CmaEsSampler", "seed": 0}}}}
    with pytest.raises(UserError) as refused:
        check_packages(config, {"hydra/sweeper/sampler": "cmaes"})
    assert str(refused.value) == (
        "hydra/sweeper/sampler=cmaes (optuna.samplers.CmaEsSampler) needs the Python package 'cmaes', "
        "which is not installed here: " + NEEDS["optuna.samplers.cmaessampler"].install
    )
    check_packages({"sampler": {"_target_": "optuna.samplers.TPESampler"}})  # nothing extra: no refusal


def test_a_launcher_plugin_not_installed_is_refused_in_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "submitit" in name else real(name, *a)
    )  # fmt: skip
    with pytest.raises(UserError, match=r"^hydra/launcher=submitit_local needs the Hydra plugin .*\[cluster\]"):
        check_launcher(["-m", "hydra/launcher=submitit_local"])
    check_launcher(["-m", "hydra/launcher=joblib"])


HIDE_CMAES = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cmaes" or name.startswith("cmaes."):
            raise ModuleNotFoundError("No module named 'cmaes'", name="cmaes")
sys.meta_path.insert(0, Hide())
"""
BROKEN_CMAES = "raise ImportError('cmaes is broken here (a test stand-in)')\n"


def environment_with(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    """The environment with tmp_path/<name> first on PYTHONPATH (a sitecustomize or a stand-in package)."""
    (tmp_path / "path").mkdir(exist_ok=True)
    (tmp_path / "path" / name).write_text(text)
    paths = [str(tmp_path / "path"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


CMAES_SWEEP = (
    "hparams_search=lr_gamma_dropout", "hydra/sweeper/sampler=cmaes", "hydra.sweeper.n_trials=3",
    "hydra.sweeper.sampler.n_startup_trials=1", *IN_PROCESS,
)  # fmt: skip


def test_a_sweep_whose_sampler_package_is_missing_stops_before_any_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = environment_with(tmp_path, "sitecustomize.py", HIDE_CMAES)
    result = train_py(*sweep_overrides(tiny_mnist, sweep_dir, *CMAES_SWEEP), env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1].startswith("error: hydra/sweeper/sampler=cmaes (optuna.samplers.CmaEsSampler) needs the Python "
                                "package 'cmaes', which is not installed here: pip install cmaes")  # fmt: skip
    assert not (sweep_dir / TRIALS_FILE).exists()  # before any trial


def test_a_sampler_that_raises_while_drawing_fails_its_trial_and_ends_the_sweep_in_one_line(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = environment_with(tmp_path, "cmaes.py", BROKEN_CMAES)  # importable by name, raises once imported
    result = train_py(*sweep_overrides(tiny_mnist, sweep_dir, *CMAES_SWEEP), env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert lines[-1].startswith("error: the sampler failed while drawing trial 1: ImportError: cmaes is broken here")
    rows = read_trials(sweep_dir)
    assert [row["state"] for row in rows] == [COMPLETE, FAIL]  # the random start ran; nothing RUNNING
    assert rows[1]["reason"] == "the sampler failed while drawing this trial: ImportError: cmaes is broken here " \
        "(a test stand-in)"  # fmt: skip
