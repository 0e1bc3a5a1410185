"""Confirmation: a study's best configurations re-trained on fresh seeds, ranked with intervals.

The analysis on made-up numbers (fast), then a tiny sweep confirmed through `python -m cnnsweep.confirm`
and as the sweep's last stage (slow: each trains a few networks)."""

from __future__ import annotations

import math

import pytest
import yaml

from cnnsweep.files import BEST_FILE, CONFIRMATION_FILE
from cnnsweep.objectives import MAXIMIZE, MINIMIZE
from cnnsweep.sweep.confirmation import (
    BEST,
    BETTER,
    TIED,
    WORSE,
    Candidate,
    SeedRun,
    pick_candidates,
    rank_confirmed,
    read_confirmation,
    winner_entry,
    write_confirmation,
)
from cnnsweep.sweep.noise import mean_interval, paired_difference
from cnnsweep.sweep.results import write_confirmed


def runs_of(trial: int, values: list[float], first_seed: int = 3, test: float = 0.99) -> list[SeedRun]:
    return [SeedRun(trial, first_seed + i, value, test + i / 1000) for i, value in enumerate(values)]


def row(number: int, value: float, state: str = "COMPLETE", **extra: object) -> dict:
    facts = {"n_params": 100, "epochs_run": 1, "duration_s": 1.0, "test_acc": 0.9, "run_dir": "", "reason": None}
    return {"number": number, "state": state, "value": value, "optimizer.lr": 0.01 * number, **extra, **facts}


def test_candidates_are_the_n_best_complete_trials_by_the_objective():
    rows = [row(0, 0.90), row(1, 0.95), row(2, 0.99, state="PRUNED"), row(3, 0.97), row(4, 0.93)]
    picked = pick_candidates(rows, ["val_acc"], [MAXIMIZE], top=3)
    assert [c.number for c in picked] == [3, 1, 4]
    assert picked[0].params == {"optimizer.lr": 0.03} and picked[0].search_value == 0.97
    assert [c.number for c in pick_candidates(rows, ["val_loss"], [MINIMIZE], top=2)] == [0, 4]


def test_a_multi_objective_study_offers_its_front_best_by_the_first_objective():
    objectives = ["val_acc", "n_params"]
    rows = [
        row(0, 0.90, value_val_acc=0.90, value_n_params=1000),
        row(1, 0.95, value_val_acc=0.95, value_n_params=3000),
        row(2, 0.94, value_val_acc=0.94, value_n_params=4000),  # dominated by 1
        row(3, 0.97, value_val_acc=0.97, value_n_params=9000),
    ]
    picked = pick_candidates(rows, objectives, [MAXIMIZE, "minimize"], top=5)
    assert [c.number for c in picked] == [3, 1, 0]  # the whole front, smaller than 5
    assert [c.number for c in pick_candidates(rows, objectives, [MAXIMIZE, "minimize"], top=2)] == [3, 1]


def test_ranking_intervals_and_paired_differences_on_made_up_numbers():
    candidates = [Candidate(7, {"lr": 0.1}, 0.995), Candidate(2, {"lr": 0.2}, 0.993), Candidate(5, {"lr": 0.3}, 0.990)]
    runs = [
        *runs_of(7, [0.990, 0.991, 0.992]),  # the search's best: confirmed below trial 2
        *runs_of(2, [0.9915, 0.9925, 0.9935]),  # better by 0.0015 on every seed: a sure difference
        *runs_of(5, [0.989, 0.995, 0.990]),  # mean 0.9913, but noisy: cannot be told from trial 2
    ]
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    assert [(c.rank, c.candidate.number) for c in confirmed] == [(1, 2), (2, 5), (3, 7)]
    best, noisy, sure = confirmed
    assert best.verdict == BEST and best.difference is None
    assert best.value == mean_interval([0.9915, 0.9925, 0.9935]) and best.seeds == (3, 4, 5)
    assert best.test_acc == mean_interval([0.990, 0.991, 0.992])
    # paired over the seeds: trial 7 is 0.0015 below trial 2 on each seed, sd 0, an interval without 0
    assert sure.difference.mean == pytest.approx(-0.0015) and sure.difference.high < 0
    assert sure.verdict == WORSE
    assert noisy.difference == paired_difference({3: 0.989, 4: 0.995, 5: 0.990}, {3: 0.9915, 4: 0.9925, 5: 0.9935})
    assert noisy.difference.contains(0) and noisy.verdict == TIED


def test_a_minimised_objective_ranks_the_lowest_first():
    runs = [*runs_of(0, [0.30, 0.31]), *runs_of(1, [0.20, 0.21])]
    confirmed = rank_confirmed([Candidate(0, {}, 0.1), Candidate(1, {}, 0.2)], runs, MINIMIZE)
    assert [c.candidate.number for c in confirmed] == [1, 0]
    assert confirmed[1].difference.mean == pytest.approx(0.10) and confirmed[1].verdict == WORSE


def test_missing_runs_one_seed_and_no_shared_seed():
    candidates = [Candidate(0, {}, 0.9), Candidate(1, {}, 0.9), Candidate(2, {}, 0.9), Candidate(3, {}, 0.9)]
    runs = [
        *runs_of(0, [0.95, 0.96]),
        *runs_of(1, [0.90]),  # one seed: no spread, no interval: the data cannot tell it apart
        *runs_of(2, [0.97], first_seed=9),  # no seed shared with the best: no paired difference
    ]  # trial 3 has no finished run: left out
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    assert [c.candidate.number for c in confirmed] == [2, 0, 1]
    assert confirmed[0].verdict == BEST and math.isnan(confirmed[0].value.low)
    assert confirmed[1].difference is None and confirmed[1].verdict == TIED
    assert confirmed[2].verdict == TIED
    # with missing seeds, the mean's order and the paired one may disagree: said as `better`
    order = rank_confirmed(
        [Candidate(0, {}, 0.9), Candidate(1, {}, 0.9)],
        [*runs_of(0, [0.90, 0.91, 0.50]), *runs_of(1, [0.80, 0.81])],
        MAXIMIZE,
    )  # trial 0's mean (0.77) is below trial 1's (0.805), yet on seeds 3 and 4 it is 0.1 above
    assert [c.candidate.number for c in order] == [1, 0] and order[1].verdict == BETTER


def test_confirmation_csv_round_trips_and_the_yaml_gets_the_winner(tmp_path):
    candidates = [Candidate(7, {"optimizer.lr": 0.1}, 0.995), Candidate(2, {"optimizer.lr": 0.2}, 0.993)]
    runs = [*runs_of(7, [0.990, 0.994]), *runs_of(2, [0.9915, 0.9935])]
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    write_confirmation(tmp_path, confirmed, "val_acc")
    rows = read_confirmation(tmp_path)
    assert [(r["rank"], r["trial"], r["verdict"], r["n_seeds"]) for r in rows] == [(1, 2, BEST, 2), (2, 7, TIED, 2)]
    first = rows[0]
    assert first["objective"] == "val_acc" and first["seeds"] == [3, 4] and first["optimizer.lr"] == 0.2
    assert first["value_mean"] == pytest.approx(0.9925) and first["value_sd"] == pytest.approx(0.001 * math.sqrt(2))
    assert (first["value_low"], first["value_high"]) == pytest.approx((confirmed[0].value.low, confirmed[0].value.high))
    assert first["diff_mean"] is None and first["search_value"] == 0.993
    assert rows[1]["diff_mean"] == pytest.approx(-0.0005) and rows[1]["diff_low"] < 0 < rows[1]["diff_high"]
    assert rows[1]["test_acc_mean"] == pytest.approx(0.9905)
    assert read_confirmation(tmp_path / "nowhere") == []

    (tmp_path / BEST_FILE).write_text(yaml.safe_dump({"best_trial": 7, "best_value": 0.995}))
    overrides = ["optimizer.lr=0.2", "seed=3"]
    write_confirmed(tmp_path, winner_entry(confirmed[0], confirmed, "val_acc", overrides, tmp_path / "confirm/2/3"))
    results = yaml.safe_load((tmp_path / BEST_FILE).read_text())
    assert results["best_trial"] == 7  # the search's own answer stays
    winner = results["confirmed"]
    assert winner["trial"] == 2 and winner["seeds"] == [3, 4] and winner["tied_with"] == [7]
    assert winner["value"]["mean"] == pytest.approx(0.9925) and winner["value"]["n"] == 2
    assert winner["command"] == "python train.py optimizer.lr=0.2 seed=3"
    assert (tmp_path / CONFIRMATION_FILE).is_file()
