"""Watching a sweep in optuna-dashboard: the page that a real headless Chromium renders for a finished sweep,
served by the one command README gives."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from browser import PNG_SIGNATURE, RENDER, browse, page_text, program
from helpers import IN_PROCESS, tiny_overrides, train_py
from postgres import free_port

pytestmark = pytest.mark.slow  # a served sweep in a real headless browser

STUDY = "dash"
# What README's command names, from the folder the sweep ran in: the SQLite URL, or the journal file's path
SERVED = {"sqlite": f"sqlite:///multirun/{STUDY}/optuna.db", "journal": f"multirun/{STUDY}/study.log"}


@pytest.fixture(scope="module")
def dashboard_program() -> str:
    found = program("optuna-dashboard")
    if not found:
        pytest.skip('optuna-dashboard is not installed: pip install -e ".[dashboard]"')
    return found


@pytest.fixture(scope="module")
def finished_sweep(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a two-trial sweep named STUDY ran in: its study is in multirun/STUDY/optuna.db."""
    folder = tmp_path_factory.mktemp("watched")
    search = ("hparams_search=lr_gamma_dropout", f"hydra.sweeper.study_name={STUDY}", "hydra.sweeper.n_trials=2")
    args = tiny_overrides(tiny_mnist, "data.val_size=100", *search, *IN_PROCESS)  # in the default sweep folder
    result = train_py("--multirun", *args, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def storage_of(kind: str, folder: Path) -> optuna.storages.BaseStorage | str:
    """The study served as `kind`, to read back: the sweep's SQLite file, or the same study in a journal file
    (copied from it with optuna.copy_study: a journal sweep itself is tested in tests/test_sweep.py)."""
    sqlite = f"sqlite:///{folder}/{SERVED['sqlite'].removeprefix('sqlite:///')}"
    if kind == "sqlite":
        return sqlite
    copied = (folder / SERVED["journal"]).is_file()  # (before the backend opens it, which makes the file)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / SERVED["journal"]))
    )
    if not copied:
        optuna.copy_study(from_study_name=STUDY, from_storage=sqlite, to_storage=journal)
    return journal


@pytest.fixture(params=["sqlite", "journal"])
def dashboard(request, dashboard_program: str, finished_sweep: Path, tmp_path: Path):
    """README's command serving the finished sweep's study (in SQLite, or in a journal file) on a free loopback
    port; yields its base URL and the storage to read the study back from."""
    storage = storage_of(request.param, finished_sweep)
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "w") as log:  # not a pipe: a full pipe would block the server
        server = subprocess.Popen(
            [dashboard_program, SERVED[request.param], "--host", "127.0.0.1", "--port", str(port)],
            cwd=finished_sweep,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, f"optuna-dashboard exited: {log_path.read_text()[-1000:]}"
                assert time.monotonic() < deadline, f"optuna-dashboard did not answer in 30 s: {log_path.read_text()}"
                time.sleep(0.2)
        yield url, storage
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_dashboard_shows_a_finished_sweeps_study_and_its_trials(chromium, dashboard, tmp_path):
    url, storage = dashboard
    with urllib.request.urlopen(f"{url}/api/studies", timeout=10) as answer:
        summaries = json.load(answer)["study_summaries"]
    assert [summary["study_name"] for summary in summaries] == [STUDY]
    study_id = summaries[0]["study_id"]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert study.metric_names == ["val_acc"]  # named by the sweep (set_metric_names)
    with urllib.request.urlopen(f"{url}/api/studies/{study_id}", timeout=10) as answer:
        assert json.load(answer)["objective_names"] == ["val_acc"]  # what the dashboard labels its plots with

    page = f"{url}/dashboard/studies/{study_id}/trials"  # the study's trials, and the selected one's details
    dom = browse(chromium, *RENDER, "--dump-dom", page).stdout
    text = page_text(dom)
    assert f"{STUDY} (id={study_id})" in text  # the study's name in the page's title bar
    listed = " ".join(f"Trial {t.number} Complete" for t in trials)
    assert f"{len(trials)} Trials {listed}" in text, text[:500]
    first = trials[0]  # shown in full: its value and parameters, exactly as Python prints them
    params = " ".join(f"{name} {value}" for name, value in first.params.items())
    assert f"Trial {first.number} (trial_id=" in text and f"Value {first.value} " in text
    assert f"Parameter {params} " in text, text[:2000]

    screenshot = tmp_path / "dashboard.png"
    browse(chromium, *RENDER, f"--screenshot={screenshot}", page)
    picture = screenshot.read_bytes()
    assert picture.startswith(PNG_SIGNATURE) and picture[12:16] == b"IHDR"
    assert (int.from_bytes(picture[16:20], "big"), int.from_bytes(picture[20:24], "big")) == (1280, 900)
    assert len(picture) > 20_000  # a rendered table; a blank 1280x900 page compresses to a few kB
