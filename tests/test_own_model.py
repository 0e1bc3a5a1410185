"""README's "Bring your own model", done as a user does it: the README's own model file and config
written into a folder outside the repository, then a run, a budget refusal, a sweep over the model's
own argument and an evaluation, each started from that folder."""

from __future__ import annotations

import pytest

from cnnsweep.artifacts import read_json
from cnnsweep.records import RunStatus
from cnnsweep.tools.evaluate import EVALUATION_DIR

from helpers import IN_PROCESS, read_trials, readme_files, summary, tiny_overrides, tool, train_py, write_files

pytestmark = pytest.mark.slow  # four train.py processes, one of them a sweep: about a minute on 2 cores


def test_readme_own_model_runs_sweeps_is_offered_and_evaluates_from_its_own_folder(tiny_mnist, tmp_path):
    files = readme_files("Bring your own model")
    assert set(files) == {"mynet.py", "myconf/model/mynet.yaml"}
    write_files(tmp_path, files)
    mine = ["--config-dir", "myconf", "model=mynet"]

    run = tmp_path / "run"
    result = train_py(*mine, "model.width=24", *tiny_overrides(tiny_mnist), f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = summary(run)
    assert said["status"] == RunStatus.COMPLETED and said["n_params"] == 18 * 24**2 + 198 * 24 + 10
    assert said["final_test_acc"] > 0.2  # 1 epoch of 600 synthetic digits: well above chance (0.1)

    evaluated = tool("evaluate", run, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert read_json(run / EVALUATION_DIR / "evaluation.json")["test_acc"] == said["final_test_acc"]

    refused = train_py(
        "--config-dir", "myconf", "budget.max_params=7800", *tiny_overrides(tiny_mnist),
        f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "over the budget of 7,800 (for this data, model=mynet (7,786) fits;" in refused.stdout + refused.stderr

    sweep = tmp_path / "sweep"
    result = train_py(
        "--multirun", *mine, "hparams_search=lr_gamma_dropout", "model.width=int(interval(8, 48))",
        *tiny_overrides(tiny_mnist, "data.val_size=100", "trainer.compile=false"), "hydra.sweeper.n_trials=3",
        "hydra/sweeper/pruner=nop", *IN_PROCESS, f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    trials = read_trials(sweep)
    completed = [trial for trial in trials if trial["state"] == "COMPLETE"]
    assert len(completed) == 3
    for trial in completed:  # each trial trained MyNet at its own drawn width, within the budget
        trained = summary(trial["run_dir"])
        width = int(trial["model.width"])
        assert 8 <= width <= 28 and trained["n_params"] == 18 * width**2 + 198 * width + 10
        assert float(trial["value"]) == pytest.approx(trained["objectives"]["val_acc"])
    over = [trial for trial in trials if trial["state"] == "PRUNED"]
    assert all(int(trial["model.width"]) > 28 for trial in over)
