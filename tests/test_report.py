"""`cnnsweep report` and `cnnsweep evaluate` on tiny runs and sweeps."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cnnsweep.files import SUMMARY_FILE
from cnnsweep.records import RunStatus

from helpers import read_metrics, summary, tool, train_py


def sweep(*args: str) -> None:
    result = train_py(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def tiny(root: Path, sweep_dir: Path) -> list[str]:
    return [
        "--multirun", f"data.root={root}", "data.download=false", "data.val_size=100", "trainer.epochs=2",
        "trainer.progress=false", "trainer.device=cpu", "trainer.compile=auto", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def grid_sweep(tiny_mnist, tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("report") / "grid"
    sweep(*tiny(tiny_mnist, sweep_dir), "model.dropout=0.0,0.1", "optimizer.lr=0.02,0.05")
    return sweep_dir


@pytest.fixture(scope="module")
def optuna_sweep(tiny_mnist, tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("report") / "optuna"
    sweep(*tiny(tiny_mnist, sweep_dir), "hparams_search=lr_gamma_dropout", "hydra.sweeper.n_trials=3")
    return sweep_dir


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 300 <= image.width <= 3000 and 200 <= image.height <= 3000, (path, image.size)


def test_report_of_a_grid_sweep_lists_every_run_best_first_with_plots(grid_sweep):
    result = tool("report", grid_sweep)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header, runs = lines[0], lines[1:5]
    assert header.split() == ["run", "state", "objective", "value", "test_acc", "n_params", "epochs", "duration_s",
                              "overrides"]  # fmt: skip
    values = []
    for line in runs:
        cells = line.lstrip("* ").split()
        run = summary(cells[0])
        assert cells[1] == "completed" and cells[2] == "val_acc" and cells[4] == f"{run['final_test_acc']:.4f}"
        assert cells[3] == f"{run['objective_value']:.4f}" and cells[5] == "18,970" and cells[6] == "2/2"
        assert any(c.startswith("model.dropout=") for c in cells) and any(c.startswith("optimizer.lr=") for c in cells)
        values.append(run["objective_value"])
    assert values == sorted(values, reverse=True)
    assert runs[0].startswith("*") and not any(line.startswith("*") for line in runs[1:])
    assert "(grid sweep, maximize val_acc): 4 trials: COMPLETE 4" in result.stdout
    for name in ("optimization_history.png", "slice.png", "param_importances.png", "accuracy_vs_params.png"):
        assert_png(grid_sweep / name)
    for number in range(4):
        assert_png(grid_sweep / str(number) / "learning_curves.png")


@pytest.mark.slow
def test_report_of_an_optuna_sweep_counts_trials_and_draws_optunas_plots(optuna_sweep):
    result = tool("report", optuna_sweep, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["runs"]) == 3
    [sweep] = report["sweeps"]
    assert sweep["study_name"] == "lr_gamma_dropout" and sweep["trials_by_state"] == {"COMPLETE": 3}
    best = max(report["runs"], key=lambda row: row["value"])
    assert sweep["best"]["value"] == best["value"] and best["best"] is True
    names = ("optimization_history", "intermediate_values", "slice", "param_importances", "accuracy_vs_params")
    for name in names:
        assert str(optuna_sweep / f"{name}.png") in report["plots"]
        assert_png(optuna_sweep / f"{name}.png")


def test_csv_format_is_one_row_per_run(grid_sweep):
    result = tool("report", grid_sweep, "--format", "csv", "--no-plots")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4 and sum(row["best"] == "True" for row in rows) == 1
    assert {float(row["value"]) for row in rows} == {summary(row["run"])["objective_value"] for row in rows}


@pytest.mark.slow
def test_report_refuses_an_empty_folder_and_a_run_without_an_epoch(tmp_path):
    empty = tool("report", tmp_path)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert f"no runs under {tmp_path}" in empty.stderr
    half = tmp_path / "half"
    (half / ".hydra").mkdir(parents=True)
    (half / SUMMARY_FILE).write_text(json.dumps({"status": RunStatus.RUNNING, "n_params": 18970}))
    result = tool("report", half)
    assert result.returncode == 2 and "has no finished epoch (status: running" in result.stderr
    missing = tool("report", tmp_path / "nowhere")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_evaluate_reproduces_the_recorded_test_accuracy(grid_sweep):
    run_dir = grid_sweep / "0"
    result = tool("evaluate", run_dir, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    best = summary(run_dir)["best_checkpoint_epoch"]
    metrics = read_metrics(run_dir)
    assert evaluation["epoch"] == best
    assert evaluation["test_acc"] == pytest.approx(float(metrics[best - 1]["test_acc"]), abs=1e-9)
    assert evaluation["test_acc"] == pytest.approx(evaluation["recorded_test_acc"], abs=1e-9)
    assert evaluation["test_loss"] == pytest.approx(float(metrics[best - 1]["test_loss"]), rel=1e-4)
    assert sum(map(sum, evaluation["confusion_matrix"])) == evaluation["n_images"] == 200
    assert set(evaluation["per_class_acc"]) == {str(d) for d in range(10)}
    assert f"test accuracy {100 * evaluation['test_acc']:.2f}%" in result.stdout
    assert_png(run_dir / "evaluation" / "confusion_matrix.png")
    assert_png(run_dir / "evaluation" / "misclassified.png")
    last = tool("evaluate", run_dir / "checkpoints" / "last.pt", "--device", "cpu")
    assert last.returncode == 0 and "(epoch 2)" in last.stdout


def test_evaluate_refuses_a_run_without_checkpoint_and_a_mismatched_config(grid_sweep, tmp_path):
    half = tmp_path / "half"
    (half / ".hydra").mkdir(parents=True)
    (half / SUMMARY_FILE).write_text(json.dumps({"status": RunStatus.RUNNING}))
    result = tool("evaluate", half)
    assert result.returncode == 2 and "stopped before its first epoch ended, so it has no checkpoint" in result.stderr

    edited = tmp_path / "edited"
    shutil.copytree(grid_sweep / "1", edited)
    config = yaml.safe_load((edited / ".hydra" / "config.yaml").read_text())
    config["model"]["widths"][6] = 64
    (edited / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    result = tool("evaluate", edited)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "best.pt does not match the model in" in result.stderr and "size mismatch" in result.stderr


def test_runs_that_differ_only_in_seed_are_summarised_with_mean_and_spread():
    from cnnsweep.tools.report import format_seed_groups, seed_groups

    def row(overrides, test_acc, state="completed"):
        return {"state": state, "overrides": overrides, "test_acc": test_acc, "value": test_acc, "duration_s": 10.0}

    rows = [
        row(["experiment=fast", "seed=0"], 0.9940),
        row(["experiment=fast", "seed=1"], 0.9950),
        row(["experiment=fast", "seed=2"], 0.9930),
        row(["experiment=fast", "seed=3"], None, state="interrupted"),  # unfinished runs do not count
        row(["experiment=tiny", "seed=0"], 0.9900),  # a single seed is no spread
        row(["optimizer.lr=0.1"], 0.9800),
    ]
    [group] = seed_groups(rows)
    assert group["recipe"] == "experiment=fast" and group["seeds"] == ["0", "1", "2"]
    assert group["test_acc_mean"] == pytest.approx(0.9940) and group["test_acc_std"] == pytest.approx(0.0010)
    assert "experiment=fast  seeds 0,1,2: test_acc 99.40% +- 0.10" in format_seed_groups([group])


def test_misclassified_grid_draws_colour_images_in_colour(tmp_path):
    import torch

    from cnnsweep.tools.plots import image_grid

    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    images[0, 0], images[1, 2] = 255, 255  # one pure red, one pure blue image
    path = image_grid(images, [0, 1], [1, 0], tmp_path / "grid.png", columns=2)
    with Image.open(path) as image:
        colours = {pixel for _, pixel in image.convert("RGB").getcolors(1 << 16)}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours
