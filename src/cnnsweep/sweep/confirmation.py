"""A confirmation's analysis and its record: which of a study's best configurations are really best.

A confirmation re-trains a finished study's N best configurations (a multi-objective study: the N of
its Pareto front best by the first objective) on M fresh seeds (cnnsweep.sweep.noise.confirmation_seeds)
and ranks them by the mean of the search's own first objective over those seeds, on the same
validation split. For each it gives the mean, sd and 95% Student-t interval of that objective and of
the test accuracy (reported, never used to choose), and, against the best, the interval of the paired
difference over the seeds both trained on (this one minus the best): a configuration whose interval
holds 0 is one the data cannot tell from the best (`tied`).

Its record, confirmation.csv (one row per configuration, best first), is written and read here:
    rank, trial, objective, verdict (best, tied, worse, or better: only where seeds are missing),
    n_seeds, value_mean, value_sd, value_low, value_high (the objective over the fresh seeds),
    diff_mean, diff_low, diff_high (paired difference from the best, in the objective; empty for it),
    test_acc_mean, test_acc_sd, test_acc_low, test_acc_high, search_value (what the search measured
    for it: the figure its choice rested on), seeds (space-separated), then the configuration's params.
The confirmed winner goes into optimization_results.yaml as `confirmed` (winner_entry).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnsweep.artifacts import read_csv, write_csv
from cnnsweep.files import CONFIRMATION_FILE
from cnnsweep.objectives import MAXIMIZE
from cnnsweep.records import RUN_DIR
from cnnsweep.sweep.noise import Interval, mean_interval, paired_difference
from cnnsweep.sweep.results import best_rows, row_params

BEST, TIED, WORSE, BETTER = "best", "tied", "worse", "better"  # a configuration against the confirmed best


@dataclass(frozen=True)
class Candidate:
    """A configuration the search found: its trial number, parameters and the search's value for it."""

    number: int
    params: dict[str, Any]
    search_value: float


@dataclass(frozen=True)
class SeedRun:
    """One confirmation run: configuration `trial` trained on `seed`, with its objective and test accuracy."""

    trial: int
    seed: int
    value: float
    test_acc: float | None = None
    seconds: float | None = None  # the run's wall time


@dataclass(frozen=True)
class Confirmed:
    """One configuration's confirmation, ranked (1 = best) by its mean objective over the fresh seeds."""

    rank: int
    candidate: Candidate
    value: Interval
    test_acc: Interval | None
    difference: Interval | None  # this minus the best, paired over the seeds both ran; None for the best
    verdict: str
    seeds: tuple[int, ...]
    seconds: float | None = None  # its runs' wall time, summed (None if a run's is not known)


def pick_candidates(
    rows: Sequence[dict[str, Any]], objectives: Sequence[str], directions: Sequence[str], top: int
) -> list[Candidate]:
    """The `top` best configurations of a study's table rows (results.study_rows): by the objective, or for
    several objectives the Pareto front's best by the first (all of the front when it is smaller)."""
    best = best_rows(rows, objectives, directions)[:top]
    return [Candidate(row["number"], row_params(row), row["value"]) for row in best]


def rank_confirmed(candidates: Sequence[Candidate], runs: Sequence[SeedRun], direction: str) -> list[Confirmed]:
    """The candidates that have runs, best first by their mean objective, each with its intervals and
    its paired difference from the best. A candidate with no finished run is left out."""
    sign = 1 if direction == MAXIMIZE else -1
    by_trial: dict[int, dict[int, SeedRun]] = {}
    for run in runs:
        by_trial.setdefault(run.trial, {})[run.seed] = run
    measured = [(candidate, by_trial[candidate.number]) for candidate in candidates if by_trial.get(candidate.number)]
    means = {c.number: mean_interval([run.value for run in seeds.values()]) for c, seeds in measured}
    measured.sort(key=lambda pair: (-sign * means[pair[0].number].mean, pair[0].number))
    confirmed = []
    best_values: dict[int, float] = {}
    for rank, (candidate, seeds) in enumerate(measured, start=1):
        values = {seed: run.value for seed, run in seeds.items()}
        test = [run.test_acc for run in seeds.values() if run.test_acc is not None]
        times = [run.seconds for run in seeds.values()]
        if rank == 1:
            best_values, difference, verdict = values, None, BEST
        else:
            difference = paired_or_none(values, best_values)
            verdict = judge(difference, sign)
        confirmed.append(
            Confirmed(
                rank=rank,
                candidate=candidate,
                value=means[candidate.number],
                test_acc=mean_interval(test) if test else None,
                difference=difference,
                verdict=verdict,
                seeds=tuple(sorted(seeds)),
                seconds=None if None in times else sum(times),
            )
        )
    return confirmed


def paired_or_none(values: dict[int, float], baseline: dict[int, float]) -> Interval | None:
    """The paired difference over the seeds both have; None when they share none."""
    return paired_difference(values, baseline) if set(values) & set(baseline) else None


def judge(difference: Interval | None, sign: int) -> str:
    """tied while the difference's interval holds 0 (or cannot be had: one shared seed, or none); else
    worse or better, as the direction (`sign`: 1 maximise, -1 minimise) reads it."""
    if difference is None or math.isnan(difference.low) or not difference.excludes_zero():
        return TIED
    return BETTER if sign * difference.mean > 0 else WORSE


def confirmation_rows(confirmed: Sequence[Confirmed], objective: str) -> list[dict[str, Any]]:
    """confirmation.csv's rows (the module's docstring names the columns)."""
    rows = []
    for item in confirmed:
        row: dict[str, Any] = {
            "rank": item.rank,
            "trial": item.candidate.number,
            "objective": objective,
            "verdict": item.verdict,
            "n_seeds": item.value.n,
            **figures("value", item.value, with_sd=True),
            **figures("diff", item.difference, with_sd=False),
            **figures("test_acc", item.test_acc, with_sd=True),
            "search_value": item.candidate.search_value,
            "seeds": " ".join(str(seed) for seed in item.seeds),
            "run_seconds": None if item.seconds is None else round(item.seconds, 1),
        }
        rows.append(row | item.candidate.params)
    return rows


def figures(prefix: str, interval: Interval | None, with_sd: bool) -> dict[str, float | None]:
    """An interval as columns (empty where there is none, or no spread to measure: NaN)."""
    return {f"{prefix}_{name}": plain(getattr(interval, name)) if interval else None for name in stats(with_sd)}


def stats(with_sd: bool) -> tuple[str, ...]:
    return ("mean", "sd", "low", "high") if with_sd else ("mean", "low", "high")


COLUMNS = (  # confirmation.csv's columns before the configuration's params
    "rank", "trial", "objective", "verdict", "n_seeds",
    *(f"value_{name}" for name in stats(True)), *(f"diff_{name}" for name in stats(False)),
    *(f"test_acc_{name}" for name in stats(True)), "search_value", "seeds", "run_seconds",
)  # fmt: skip


def confirmed_params(row: dict[str, Any]) -> dict[str, Any]:
    """The configuration a confirmation.csv row confirmed: its params."""
    return {key: value for key, value in row.items() if key not in COLUMNS}


def plain(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def write_confirmation(sweep_dir: Path, confirmed: Sequence[Confirmed], objective: str) -> Path:
    path = sweep_dir / CONFIRMATION_FILE
    write_csv(path, confirmation_rows(confirmed, objective))
    return path


def read_confirmation(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's confirmation.csv rows (read_confirmation_file)."""
    return read_confirmation_file(sweep_dir / CONFIRMATION_FILE)


def read_confirmation_file(path: Path) -> list[dict[str, Any]]:
    """A confirmation.csv's rows (also one kept under another name), best first, numbers as numbers and
    `seeds` as a list; [] where there is none."""
    if not path.is_file():
        return []
    rows = read_csv(path)
    for row in rows:
        row["seeds"] = [int(seed) for seed in str(row["seeds"]).split()]
    return rows


def winner_entry(
    winner: Confirmed, confirmed: Sequence[Confirmed], objective: str, overrides: Sequence[str], run_dir: Path | None
) -> dict[str, Any]:
    """What optimization_results.yaml says of the confirmed winner under `confirmed`: its trial, the
    interval of its objective and test accuracy over the fresh seeds, the configurations the data cannot
    tell from it, and the command that reproduces its run on its first fresh seed (`overrides`, `run_dir`)."""
    return {
        "trial": winner.candidate.number,
        "objective": objective,
        "seeds": list(winner.seeds),
        "value": interval_entry(winner.value),
        "test_acc": interval_entry(winner.test_acc) if winner.test_acc else None,
        "search_value": winner.candidate.search_value,
        "tied_with": [item.candidate.number for item in confirmed if item.verdict == TIED],
        "params": dict(winner.candidate.params),
        RUN_DIR: str(run_dir) if run_dir else None,
        "overrides": list(overrides),
        "command": shlex.join(["python", "train.py", *overrides]),
    }


def interval_entry(interval: Interval) -> dict[str, float | int | None]:
    return {"mean": interval.mean, "sd": plain(interval.sd), "low": plain(interval.low),
            "high": plain(interval.high), "n": interval.n}  # fmt: skip
