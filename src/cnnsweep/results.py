"""A sweep's results table: trials.csv (one row per trial) and optimization_results.yaml (the best).

Optuna sweeps build the rows from the study (every worker sees every trial); Hydra's plain grid
sweeps build them from the run folders, through the `SweepTable` callback. Both write the same
columns: number, state, value, the parameters, then n_params, epochs_run, duration_s, test_acc,
run_dir and reason.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.artifacts import RunFolder, write_csv, write_text
from cnnsweep.study import REQUEUED, SURPLUS

TRIALS_FILE = "trials.csv"
BEST_FILE = "optimization_results.yaml"
FACTS = ("n_params", "epochs_run", "duration_s", "test_acc", "run_dir", "reason")
OVERRIDES = "overrides"  # trial user attr: the task overrides the trial's job ran with
STATE_OF_STATUS = {  # summary.json status -> the Optuna state name used in the table
    "completed": "COMPLETE",
    "running": "RUNNING",
    "pruned": "PRUNED",
    "over_budget": "PRUNED",
    "diverged": "FAIL",
    "failed": "FAIL",
    "interrupted": "FAIL",
}


def facts_from_summary(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The table's per-trial facts that a run's summary.json holds."""
    return {
        "n_params": summary.get("n_params"),
        "epochs_run": summary.get("epochs_run"),
        "duration_s": round(summary["wall_time_s"], 1) if "wall_time_s" in summary else None,
        "test_acc": summary.get("final_test_acc"),
        "run_dir": str(run_dir),
        "reason": summary.get("error"),
    }


def table_row(
    number: int, state: str, value: float | None, params: dict[str, Any], facts: dict[str, Any]
) -> dict[str, Any]:
    return {"number": number, "state": state, "value": value, **params, **{k: facts.get(k) for k in FACTS}}


def best_row(rows: Sequence[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    complete = [row for row in rows if row["state"] == "COMPLETE" and row["value"] is not None]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda row: row["value"])


def write_results(
    sweep_dir: Path,
    rows: Sequence[dict[str, Any]],
    overrides: dict[int, list[str]],
    direction: str,
    header: dict[str, Any],
) -> dict[str, Any] | None:
    """Write trials.csv and optimization_results.yaml into sweep_dir; return the best row.

    `overrides` maps a trial number to the task overrides its job ran with, so the best trial
    can be rerun by pasting `best_command`.
    """
    rows = sorted(rows, key=lambda row: row["number"])
    write_csv(sweep_dir / TRIALS_FILE, rows)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    best = best_row(rows, direction)
    results: dict[str, Any] = {**header, "direction": direction, "n_trials_by_state": states}
    if best is not None:
        params = {k: v for k, v in best.items() if k not in ("number", "state", "value", *FACTS)}
        best_overrides = overrides.get(best["number"], [])
        results |= {
            "best_trial": best["number"],
            "best_value": best["value"],
            "best_params": params,
            "best_test_acc": best["test_acc"],
            "best_n_params": best["n_params"],
            "best_run_dir": best["run_dir"],
            "best_overrides": list(best_overrides),
            "best_command": shlex.join(["python", "train.py", *best_overrides]),
        }
    write_text(sweep_dir / BEST_FILE, yaml.safe_dump(results, sort_keys=False))
    return best


def study_rows(trials: Sequence[FrozenTrial]) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Rows (and task overrides) of an Optuna study's trials, leaving out never-run surplus trials."""
    rows, overrides = [], {}
    for trial in trials:
        if trial.user_attrs.get(SURPLUS):
            continue
        facts = dict(trial.user_attrs)
        if trial.datetime_start and trial.datetime_complete and not trial.user_attrs.get(REQUEUED):
            facts["duration_s"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        value = trial.value if trial.state == TrialState.COMPLETE else None
        rows.append(table_row(trial.number, trial.state.name, value, dict(trial.params), facts))
        overrides[trial.number] = list(trial.user_attrs.get(OVERRIDES, []))
    return rows, overrides


def folder_rows(sweep_dir: Path, in_flight: bool = False) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
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
        if summary is not None:
            state, value = STATE_OF_STATUS.get(summary["status"], "FAIL"), summary.get("objective_value")
            facts = facts_from_summary(summary, run_dir)
        elif in_flight:
            state, value, facts = "RUNNING", None, {"run_dir": str(run_dir), "reason": "starting"}
        else:
            state, value = "FAIL", None
            facts = {
                "run_dir": str(run_dir),
                "reason": "no summary.json: the job stopped before its model was built",
            }
        rows.append(table_row(number, state, value if state == "COMPLETE" else None, params, facts))
    return rows, overrides


def direction_of(objective: str) -> str:
    return "maximize" if objective.endswith("_acc") or objective == "auto" else "minimize"


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
        rows, overrides = folder_rows(sweep_dir, in_flight)
        write_results(sweep_dir, rows, overrides, direction_of(config.objective), {"name": "grid"})
