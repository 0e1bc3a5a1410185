"""`cnnsweep runbench` times whole runs and whole sweeps from the outside."""

import json

import pytest

from cnnsweep.artifacts import read_json
from cnnsweep.tools.runbench import runs_table
from cnnsweep.train.machine import machine_facts, machine_label

from helpers import IN_PROCESS, tiny_overrides, tool


def test_runbench_times_whole_runs_and_keeps_their_files(tiny_mnist, tmp_path):
    keep = ["--seeds", "0,1", "--keep", tmp_path, "--json"]
    result = tool("runbench", "runs", *tiny_overrides(tiny_mnist), "--recipe", "narrow=model=tiny", *keep)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["command"].startswith("cnnsweep runbench runs data.root=")
    (row,) = report["rows"]
    assert (row["recipe"], row["overrides"][-1]) == ("narrow", "model=tiny")
    assert [run["seed"] for run in row["runs"]] == [0, 1] and all(run["epochs"] == 1 for run in row["runs"])
    assert row["wall_s_mean"] == pytest.approx(sum(run["wall_s"] for run in row["runs"]) / 2)
    kept = [read_json(tmp_path / "narrow" / f"seed{n}.summary.json") for n in (0, 1)]
    assert [summary["final_test_acc"] for summary in kept] == [run["test_acc"] for run in row["runs"]]
    assert 100 * sum(run["test_acc"] for run in row["runs"]) / 2 == pytest.approx(row["test_acc_mean"])
    assert [summary["n_params"] for summary in kept] == [7_834, 7_834]  # the recipe's own network
    assert (tmp_path / "narrow" / "seed1.metrics.csv").is_file()
    assert report["machine"] == machine_facts() and row["machine"] == machine_label(machine_facts())
    assert [run["precision"] for run in row["runs"]] == [summary["precision"]["precision"] for summary in kept]
    assert runs_table(report["rows"]).splitlines()[1].endswith(f"{kept[0]['precision']['precision']}  {row['machine']}")


@pytest.mark.slow
def test_runbench_counts_a_sweeps_trials_and_epochs_per_hour(tiny_mnist):
    overrides = tiny_overrides(
        tiny_mnist, "hparams_search=lr_gamma_dropout", "data.val_size=100", "hydra.sweeper.n_trials=2", *IN_PROCESS
    )
    result = tool("runbench", "sweep", *overrides, "--variant", "eager=trainer.compile=false", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["variant"] == "eager" and row["overrides"] == ["trainer.compile=false"]
    assert row["machine"] == machine_label(machine_facts())
    assert (row["trials_completed"], row["trials_pruned"]) == (2, 0)  # a trial's last epoch is never pruned
    assert row["trials_per_hour"] == pytest.approx(3600 * 2 / row["wall_s"])
    assert row["epochs_per_hour"] == pytest.approx(3600 * 2 / row["wall_s"])  # one epoch each
