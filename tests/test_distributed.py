"""Sweep workers sharing one study in a real PostgreSQL server, as on several machines."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from postgres import throwaway_server

from conftest import REPO


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with throwaway_server() as url:
            yield url
    except RuntimeError as reason:
        pytest.skip(f"no PostgreSQL server could be started: {reason}")


def worker(tiny_mnist: Path, sweep_dir: Path, url: str, study: str, n_trials: int, epochs: int) -> subprocess.Popen:
    args = [
        "--multirun", f"data.root={tiny_mnist}", "data.download=false", "data.val_size=100",
        f"trainer.epochs={epochs}", "trainer.progress=false", "trainer.device=cpu", "hparams_search=lr_gamma_dropout",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweep.dir={sweep_dir}", "hydra/sweeper/pruner=nop", "hydra/launcher=basic", "hydra.sweeper.n_jobs=1",
    ]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_two_workers_on_postgres_run_every_trial_once(tiny_mnist, tmp_path, postgres_url):
    workers = [worker(tiny_mnist, tmp_path / f"worker{i}", postgres_url, "shared", 6, 1) for i in range(2)]
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = [t for t in optuna.load_study(study_name="shared", storage=postgres_url).trials]
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(counted) == 6 and {t.state.name for t in counted} == {"COMPLETE"}
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number used twice
    assert len({t.system_attrs["cnnsweep:owner"] for t in counted}) == 2, "both workers ran trials"


def test_a_killed_worker_loses_nothing_the_other_retries_its_trial(tiny_mnist, tmp_path, postgres_url):
    victim = worker(tiny_mnist, tmp_path / "victim", postgres_url, "kill", 6, 3)
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the victim is inside a trial
        studies = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        running = (
            optuna.load_study(study_name="kill", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if "kill" in studies
            else []
        )
        if running:
            break
        time.sleep(0.1)
    assert running, "the victim never started a trial"
    survivor = worker(tiny_mnist, tmp_path / "survivor", postgres_url, "kill", 6, 3)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)  # halfway: its trial is left RUNNING
    victim.wait()
    output = survivor.communicate(timeout=600)[0].decode()
    assert survivor.returncode == 0, output

    trials = optuna.load_study(study_name="kill", storage=postgres_url).trials
    lost = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert lost and all(t.user_attrs["reason"].startswith("interrupted: worker") for t in lost)
    assert len(complete) == 6, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    assert not [t for t in trials if t.state.name == "RUNNING"]
    for t in lost:  # each lost trial's parameters ran again, to the end
        assert any(c.params == t.params for c in complete)
