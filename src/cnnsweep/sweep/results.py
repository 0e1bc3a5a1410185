"""A sweep's results table: trials.csv (one row per trial) and optimization_results.yaml (the best).

Optuna sweeps build the rows from the study (every worker sees every trial); Hydra's plain grid
sweeps build them from the run folders, through the `SweepTable` callback. Both write the same
columns: number, state, value (the first objective's), one `value_<objective>` column per objective
when there are several, the parameters, then n_params, epochs_run, duration_s, test_acc, run_dir
and reason. A single-objective sweep's results name its best trial; a multi-objective sweep's name
its Pareto front: the trials no other trial beats in every objective.

A sweep with `hydra.sweeper.repeats=K` (K > 1) writes the mean over a trial's repeats as its value(s),
then `value_sd` (and `value_sd_<objective>` when there are several: the sample sd over the repeats of a
COMPLETE trial) and `repeats` (how many of its repeats ended) after the value columns; its test_acc is the
repeats' mean. Beside trials.csv, repeats.csv has one row per repeat that ran: trial, repeat, seed, state,
value(s), test_acc, epochs_run, duration_s, run_dir and reason.
"""

from __future__ import annotations

import shlex
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.artifacts import read_csv, write_csv, write_text
from cnnsweep.files import BEST_FILE, REPEATS_FILE, TRIALS_FILE
from cnnsweep.objectives import MAXIMIZE, N_PARAMS, directions_of, resolve_objectives
from cnnsweep.records import RUN_DIR, RunFolder
from cnnsweep.sweep.attrs import OVERRIDES, REPEAT, REQUEUED, SURPLUS
from cnnsweep.sweep.states import COMPLETE, FAIL, RUNNING, STATE_OF_STATUS

FACTS = ("n_params", "epochs_run", "duration_s", "test_acc", RUN_DIR, "reason")
REPEATS = "repeats"  # trials.csv's column of how many of a trial's repeats ended (repeats > 1)
VALUE_SD = "value_sd"
REPEAT_FACTS = ("test_acc", "epochs_run", "duration_s", RUN_DIR, "reason")


def facts_from_summary(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The table's per-trial facts that a run's summary.json holds."""
    return {
        "n_params": summary.get("n_params"),
        "epochs_run": summary.get("epochs_run"),
        "duration_s": round(summary["wall_time_s"], 1) if "wall_time_s" in summary else None,
        "test_acc": summary.get("final_test_acc"),
        RUN_DIR: str(run_dir),
        "reason": summary.get("error"),
    }


def table_row(
    number: int,
    state: str,
    values: Sequence[float] | None,
    objectives: Sequence[str],
    params: dict[str, Any],
    facts: dict[str, Any],
) -> dict[str, Any]:
    """One trial's row; `values` (one per objective) only for a COMPLETE trial."""
    row: dict[str, Any] = {"number": number, "state": state, "value": values[0] if values else None}
    if len(objectives) > 1:
        row |= {f"value_{name}": _exact(name, values[i]) if values else None for i, name in enumerate(objectives)}
    return {**row, **params, **{k: facts.get(k) for k in FACTS}}


def _exact(objective: str, value: float | None) -> float | int | None:
    """Optuna stores values as floats: a parameter count reads back as the integer it is."""
    return int(value) if objective == N_PARAMS and value is not None else value


def row_params(row: dict[str, Any]) -> dict[str, Any]:
    """The swept parameters of a table row."""
    return {
        k: v
        for k, v in row.items()
        if k not in ("number", "state", "value", REPEATS, *FACTS) and not k.startswith("value_")
    }


def row_values(row: dict[str, Any], objectives: Sequence[str]) -> list[float]:
    return [row["value"]] if len(objectives) == 1 else [row[f"value_{name}"] for name in objectives]


def complete_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["state"] == COMPLETE and row["value"] is not None]


def best_row(rows: Sequence[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    complete = complete_rows(rows)
    if not complete:
        return None
    pick = max if direction == MAXIMIZE else min
    return pick(complete, key=lambda row: row["value"])


def pareto_rows(
    rows: Sequence[dict[str, Any]], objectives: Sequence[str], directions: Sequence[str]
) -> list[dict[str, Any]]:
    """The COMPLETE rows that no other COMPLETE row dominates (as good in every objective, better in one),
    sorted by the first objective, best first."""
    signs = [1 if direction == MAXIMIZE else -1 for direction in directions]
    scored = [
        (row, [sign * value for sign, value in zip(signs, row_values(row, objectives), strict=True)])
        for row in complete_rows(rows)
    ]

    def dominated(scores: list[float]) -> bool:
        return any(all(o >= s for o, s in zip(other, scores, strict=True)) and other != scores for _, other in scored)

    front = [row for row, scores in scored if not dominated(scores)]
    return sorted(front, key=lambda row: (-signs[0] * row["value"], row["number"]))


def best_rows(
    rows: Sequence[dict[str, Any]], objectives: Sequence[str], directions: Sequence[str]
) -> list[dict[str, Any]]:
    """The COMPLETE rows best first by the objective; for several objectives, the Pareto front's rows
    best first by the first objective."""
    if len(objectives) > 1:
        return pareto_rows(rows, objectives, directions)
    sign = 1 if directions[0] == MAXIMIZE else -1
    return sorted(complete_rows(rows), key=lambda row: (-sign * row["value"], row["number"]))


def write_results(
    sweep_dir: Path,
    rows: Sequence[dict[str, Any]],
    overrides: dict[int, list[str]],
    objectives: Sequence[str],
    directions: Sequence[str],
    header: dict[str, Any],
) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Write trials.csv and optimization_results.yaml into sweep_dir.

    Returns the best row of a single-objective sweep (None before any trial completed), or the
    Pareto front's rows of a multi-objective one. `overrides` maps a trial number to the task
    overrides its job ran with, so each trial named can be rerun by pasting its command.
    """
    rows = sorted(rows, key=lambda row: row["number"])
    write_csv(sweep_dir / TRIALS_FILE, rows)
    states = count_states(rows)
    results: dict[str, Any] = {**header}
    if len(objectives) == 1:
        results |= {"objective": objectives[0], "direction": directions[0], "n_trials_by_state": states}
        best = best_row(rows, directions[0])
        if best is not None:
            results |= {f"best_{key}": item for key, item in trial_entry(best, objectives, overrides).items()}
            results["best_trial"] = results.pop("best_number")
    else:
        results |= {"objectives": list(objectives), "directions": list(directions), "n_trials_by_state": states}
        best = pareto_rows(rows, objectives, directions)
        results["pareto_front"] = [trial_entry(row, objectives, overrides) for row in best]
    write_text(sweep_dir / BEST_FILE, yaml.safe_dump(results, sort_keys=False))
    return best


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """trials.csv's rows as write_results wrote them (numbers as numbers, empty cells as None)."""
    return read_csv(sweep_dir / TRIALS_FILE)


def write_confirmed(sweep_dir: Path, entry: dict[str, Any]) -> None:
    """Add the confirmed winner (cnnsweep.sweep.confirmation.winner_entry) to optimization_results.yaml as
    `confirmed`. The search's own results stay as they are; a sweep that writes them again without a
    confirmation stage drops it (confirmation.csv stays)."""
    results = read_results(sweep_dir)
    results["confirmed"] = entry
    write_text(sweep_dir / BEST_FILE, yaml.safe_dump(results, sort_keys=False))


def read_results(sweep_dir: Path) -> dict[str, Any]:
    """optimization_results.yaml as write_results (and write_confirmed) wrote it; {} before it exists."""
    path = sweep_dir / BEST_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def count_states(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many rows are in each state."""
    return dict(Counter(row["state"] for row in rows))


def trial_entry(row: dict[str, Any], objectives: Sequence[str], overrides: dict[int, list[str]]) -> dict[str, Any]:
    """What optimization_results.yaml says of one trial: its values, facts and the command that reruns it."""
    entry: dict[str, Any] = {"number": row["number"]}
    if len(objectives) == 1:
        entry["value"] = row["value"]
    else:
        entry["values"] = dict(zip(objectives, row_values(row, objectives), strict=True))
    if REPEATS in row:  # the spread over the trial's repeats
        entry |= {key: row[key] for key in row if key.startswith(VALUE_SD)} | {REPEATS: row[REPEATS]}
    rerun = list(overrides.get(row["number"], []))
    entry |= {
        "params": row_params(row),
        "test_acc": row["test_acc"],
        "n_params": row["n_params"],
        RUN_DIR: row[RUN_DIR],
        "overrides": rerun,
        "command": shlex.join(["python", "train.py", *rerun]),
    }
    return entry


def study_rows(
    trials: Sequence[FrozenTrial], objectives: Sequence[str], repeats: int = 1
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Rows (and task overrides) of an Optuna study's trials, leaving out never-run surplus trials;
    with `repeats` > 1, each row has its repeats' spread and count after its values."""
    rows, overrides = [], {}
    for trial in trials:
        if trial.user_attrs.get(SURPLUS):
            continue
        facts = dict(trial.user_attrs)
        if trial.datetime_start and trial.datetime_complete and not trial.user_attrs.get(REQUEUED):
            facts["duration_s"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        values = trial.values if trial.state == TrialState.COMPLETE else None
        row = table_row(trial.number, trial.state.name, values, objectives, dict(trial.params), facts)
        if repeats > 1:
            row = with_spread(row, repeat_records(trial.user_attrs, repeats), objectives)
        rows.append(row)
        overrides[trial.number] = list(trial.user_attrs.get(OVERRIDES, []))
    return rows, overrides


def repeat_records(user_attrs: dict[str, Any], repeats: int) -> dict[int, dict[str, Any]]:
    """A trial's records of its repeats that ended, by repeat index (sweeper.repeats writes them)."""
    return {r: user_attrs[REPEAT.format(r)] for r in range(repeats) if REPEAT.format(r) in user_attrs}


def with_spread(row: dict[str, Any], records: dict[int, dict[str, Any]], objectives: Sequence[str]) -> dict[str, Any]:
    """The row with `value_sd` (per objective when several) and `repeats` after its value columns."""
    values = [record["values"] for record in records.values() if record["state"] == COMPLETE]
    several = len(objectives) > 1
    head = ("number", "state", "value", *(f"value_{name}" for name in objectives if several))
    sds = {
        name: statistics.stdev(v[index] for v in values) if row["state"] == COMPLETE and len(values) > 1 else None
        for index, name in enumerate(objectives)
    }
    spread: dict[str, Any] = {VALUE_SD: sds[objectives[0]]}
    if several:
        spread |= {f"{VALUE_SD}_{name}": sd for name, sd in sds.items()}
    spread[REPEATS] = len(records)
    return {**{k: row[k] for k in head}, **spread, **{k: v for k, v in row.items() if k not in head}}


def repeat_rows(trials: Sequence[FrozenTrial], objectives: Sequence[str], repeats: int) -> list[dict[str, Any]]:
    """repeats.csv's rows: one per repeat that ended, of every trial run."""
    rows = []
    for trial in trials:
        if trial.user_attrs.get(SURPLUS):
            continue
        for index, record in sorted(repeat_records(trial.user_attrs, repeats).items()):
            values = record["values"]
            row = {"trial": trial.number, "repeat": index, "seed": record["seed"], "state": record["state"]}
            row["value"] = values[0] if values else None
            if len(objectives) > 1:
                named = enumerate(objectives)
                row |= {f"value_{name}": _exact(name, values[i]) if values else None for i, name in named}
            rows.append(row | {key: record.get(key) for key in REPEAT_FACTS})
    return rows


def write_repeats(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """repeats.csv (a sweep with repeats > 1), rows by trial and repeat."""
    write_csv(sweep_dir / REPEATS_FILE, sorted(rows, key=lambda row: (row["trial"], row["repeat"])))


def folder_rows(
    sweep_dir: Path, objectives: Sequence[str], in_flight: bool = False
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Rows (and task overrides) of the numbered job folders of a Hydra sweep.

    A job folder without summary.json is a job still starting while the sweep is `in_flight`, and a
    job that died before building its model once the sweep has ended.
    """
    rows, overrides = [], {}
    for run_dir in sorted(sweep_dir.iterdir()):
        folder = RunFolder(run_dir)
        if not (run_dir.name.isdigit() and folder.hydra.is_dir()):
            continue
        number = int(run_dir.name)
        overrides[number] = folder.read_overrides()
        params = dict(override.split("=", 1) for override in overrides[number] if "=" in override)
        summary = folder.read_summary()
        values = None
        if summary is not None:
            state = STATE_OF_STATUS.get(summary["status"], FAIL)
            found = summary.get("objectives") or {summary.get("objective"): summary.get("objective_value")}
            if state == COMPLETE:
                values = [found.get(name) for name in objectives]
            facts = facts_from_summary(summary, run_dir)
        elif in_flight:
            state, facts = RUNNING, {RUN_DIR: str(run_dir), "reason": "starting"}
        else:
            state = FAIL
            facts = {
                RUN_DIR: str(run_dir),
                "reason": "no summary.json: the job stopped before its model was built",
            }
        rows.append(table_row(number, state, values, objectives, params, facts))
    return rows, overrides


def sweep_objectives(config: DictConfig | dict[str, Any]) -> list[str]:
    """The objectives a sweep's composed config (or its multirun.yaml) asks for."""
    val_size = (config.get("data") or {}).get("val_size", 0)
    return resolve_objectives(config.get("objective", "auto"), val_size)


class SweepTable(Callback):
    """Keeps trials.csv current in the sweep folder of Hydra's own sweepers (e.g. the grid sweep).

    Optuna sweeps run by cnnsweep's sweeper write their table from the study instead.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self._write(config, in_flight=True)  # other jobs may be running side by side

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(config, in_flight=False)

    def _write(self, config: DictConfig, in_flight: bool) -> None:
        hydra_cfg = config.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.sweeper.get("study_name") is not None:
            return  # a single run, or an Optuna sweep (which has a study)
        sweep_dir = Path(hydra_cfg.sweep.dir)
        if not sweep_dir.is_dir():
            return
        objectives = sweep_objectives(config)
        rows, overrides = folder_rows(sweep_dir, objectives, in_flight)
        write_results(sweep_dir, rows, overrides, objectives, directions_of(objectives), {"name": "grid"})
