"""The records a run writes, through their one owner (cnnsweep.records): summary.json's keys and their order, and a
checkpoint's keys, read back whole, also from before compile and precision were recorded."""

import pytest
import torch

from cnnsweep.errors import UserError
from cnnsweep.records import Checkpoint, RunFolder, RunStatus, Summary


def a_summary() -> Summary:
    return Summary(n_params=100, epochs=3, objectives={"val_acc": None, "n_params": None}, seed=0, git_commit=None,
                   versions={"torch": "x"})  # fmt: skip


def test_a_new_summary_writes_its_known_facts_in_order_and_leaves_the_optional_ones_out():
    written = a_summary().to_json()
    assert list(written) == [
        "status", "n_params", "epochs", "epochs_run", "objective", "objective_value", "objectives", "seed",
        "git_commit", "versions",
    ]  # fmt: skip
    assert written["status"] == "running" and written["git_commit"] is None and written["objective"] == "val_acc"


def test_a_finished_summary_writes_every_fact_its_figures_flattened_before_the_resume_and_wall_time():
    summary = a_summary()
    summary.status, summary.device, summary.epochs_run = RunStatus.COMPLETED, "cpu", 3
    summary.objectives = {"val_acc": 0.9, "n_params": 100}
    summary.precision = {"precision": "fp32", "reason": "trainer.precision=fp32"}
    summary.best = {"best_checkpoint_epoch": 2, "best_checkpoint_value": 0.9}
    summary.figures = {"final_val_acc": 0.9, "best_val_acc": 0.9}
    summary.resumed_after_epoch, summary.wall_time_s = 1, 12.5
    written = summary.to_json()
    assert list(written)[10:] == [
        "device", "precision", "best_checkpoint_epoch", "best_checkpoint_value", "final_val_acc", "best_val_acc",
        "resumed_after_epoch", "wall_time_s",
    ]  # fmt: skip
    assert written["status"] == "completed" and type(written["status"]) is str
    assert (written["objective_value"], written["best_checkpoint_epoch"]) == (0.9, 2)
    assert summary.best == {"best_checkpoint_epoch": 2, "best_checkpoint_value": 0.9}


def test_a_checkpoint_saves_its_keys_in_order_and_reads_back_whole(tmp_path):
    weights = {"w": torch.ones(2)}
    checkpoint = Checkpoint(model=weights, optimizer={}, scheduler={}, epoch=1, metrics={"epoch": 1},
                            history=[{"epoch": 1}], config={"seed": 0}, rng={}, best={}, compile={}, precision={},
                            wall_time_s=1.0)  # fmt: skip
    path = RunFolder(tmp_path).checkpoint("last")
    checkpoint.save(path)
    state = torch.load(path, weights_only=True)
    assert list(state) == [
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "metrics",
        "history",
        "config",
        "rng",
        "best",
        "compile",
        "precision",
        "wall_time_s",
    ]  # fmt: skip  (no "ema": the run kept no weight average)
    read = Checkpoint.load(path, "test")
    assert read.epoch == 1 and read.evaluated_weights() is read.model and torch.equal(read.model["w"], weights["w"])

    averaged = Checkpoint(model=weights, ema={"module.w": torch.zeros(2), "n_averaged": torch.tensor(3)})
    assert list(averaged.to_state())[-1] == "ema"
    assert list(averaged.evaluated_weights()) == ["w"] and not averaged.evaluated_weights()["w"].any()


def test_a_checkpoint_from_before_compile_and_precision_were_recorded_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(1)}, "epoch": 3, "metrics": {"test_acc": 0.5}, "config": {}}, path)
    old = Checkpoint.load(path, "test")
    assert (old.epoch, old.compile, old.precision, old.ema) == (3, None, None, None)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(UserError, match="holds no model weights: it is not a run's checkpoint"):
        Checkpoint.load(path, "test")
    path.write_bytes(b"half a file")
    with pytest.raises(UserError, match=r"other.pt cannot be read \(.*\); test"):
        Checkpoint.load(path, "test")
