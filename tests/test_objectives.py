"""Objectives and their directions: accuracies up, the rest down; contradictions refused."""

from __future__ import annotations

import pytest

from cnnsweep.errors import UserError
from cnnsweep.objectives import checked_directions, checkpoint_metric, direction_of, resolve_objectives


def test_each_objective_has_its_direction():
    assert [direction_of(name) for name in ("val_acc", "test_acc", "train_acc", "auto")] == ["maximize"] * 4
    minimized = ("val_loss", "test_loss", "train_loss", "n_params", "train_seconds")
    assert [direction_of(name) for name in minimized] == ["minimize"] * 5


def test_one_or_several_objectives_are_resolved_and_checked():
    assert resolve_objectives("auto", 5000) == ["val_acc"]
    assert resolve_objectives("auto", 0) == ["test_acc"]
    assert resolve_objectives(["auto", "n_params", "train_seconds"], 100) == ["val_acc", "n_params", "train_seconds"]
    with pytest.raises(UserError, match="objective='params' is unknown; allowed: auto, train_loss"):
        resolve_objectives(["val_acc", "params"], 100)
    with pytest.raises(UserError, match="names the same objective twice"):
        resolve_objectives(["auto", "val_acc"], 100)
    with pytest.raises(UserError, match="needs a validation split"):
        resolve_objectives(["val_loss", "n_params"], 0)
    with pytest.raises(UserError, match="names no objective"):
        resolve_objectives([], 0)


def test_directions_follow_the_objectives_unless_set_and_contradictions_are_refused():
    assert checked_directions(["val_loss"], None) == ["minimize"]
    assert checked_directions(["val_acc", "n_params"], None) == ["maximize", "minimize"]
    assert checked_directions(["val_acc", "n_params"], ["maximize", "minimize"]) == ["maximize", "minimize"]
    assert checked_directions(["val_loss"], "minimize") == ["minimize"]
    with pytest.raises(UserError) as refused:
        checked_directions(["val_loss"], "maximize")
    assert str(refused.value) == (
        "hydra.sweeper.direction=maximize contradicts objective=val_loss, which is to minimize; "
        "drop hydra.sweeper.direction (it follows the objective)"
    )
    with pytest.raises(UserError, match=r"contradicts objective=\['val_acc', 'n_params'\]"):
        checked_directions(["val_acc", "n_params"], ["maximize"])


def test_the_best_checkpoint_follows_the_first_metric_objective():
    assert checkpoint_metric(["n_params", "val_loss"], 100) == "val_loss"
    assert checkpoint_metric(["n_params", "train_seconds"], 100) == "val_acc"
    assert checkpoint_metric(["train_seconds"], 0) == "test_acc"
