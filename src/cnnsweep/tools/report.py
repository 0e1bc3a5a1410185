"""Tables and plots of finished work: `cnnsweep report PATH`.

PATH is a run folder, a sweep folder, or any tree of them (outputs/, multirun/). The command prints
one table of every run found (objective, test accuracy, parameters, epochs, duration, state and the
overrides that tell the runs apart, best first), the mean and spread of runs that differ only in
their seed, and, for each sweep, its trials by state, its best trial and its confirmation on fresh
seeds (confirmation.csv). It writes PNGs beside the data: learning_curves.png in each run folder; for
each sweep, Optuna's plots (optimisation history, intermediate values, objective against each
parameter, parameter importances), accuracy against parameter count, and confirmation.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from cnnsweep.artifacts import parse_value
from cnnsweep.errors import UserError
from cnnsweep.files import CONFIRMATION_PLOT, MULTIRUN_FILE, STUDY_DB, TRIALS_FILE
from cnnsweep.objectives import MAXIMIZE, N_PARAMS, TRAIN_SECONDS, direction_of, directions_of
from cnnsweep.records import RUN_DIR, RunFolder, RunStatus
from cnnsweep.sweep.confirmation import read_confirmation
from cnnsweep.sweep.results import (
    REPEATS,
    VALUE_SD,
    best_row,
    count_states,
    facts_from_summary,
    folder_rows,
    pareto_rows,
    read_results,
    read_trials,
    row_params,
    study_rows,
    sweep_objectives,
)
from cnnsweep.sweep.states import COMPLETE, FINISHED
from cnnsweep.sweep.study import open_storage

COLUMNS = ("run", "state", "objective", "value", "test_acc", "n_params", "epochs", "duration_s", "overrides")


def find_runs(root: Path) -> list[RunFolder]:
    """Every run folder at or below root (a run's own subfolders are not searched)."""
    runs = []
    for directory, subdirectories, _ in os.walk(root):
        folder = RunFolder(Path(directory))
        if folder.is_run():
            runs.append(folder)
            subdirectories.clear()
        else:
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
    return runs


def find_sweeps(root: Path) -> list[Path]:
    """Every sweep folder (one holding Hydra's multirun.yaml) at or below root."""
    return sorted(path.parent for path in root.rglob(MULTIRUN_FILE))


def run_row(folder: RunFolder) -> dict[str, Any]:
    """A run's line in the table; the facts a sweep's table also holds are read as it reads them."""
    summary = folder.read_summary() or {}
    facts = facts_from_summary(summary, folder.path)
    epochs = f"{facts['epochs_run']}/{summary['epochs']}" if "epochs" in summary else None
    return {
        "run": facts[RUN_DIR],
        "state": summary.get("status", "no summary.json"),
        "objective": summary.get("objective"),
        "value": summary.get("objective_value"),
        "test_acc": facts["test_acc"],
        "n_params": facts["n_params"],
        "epochs": epochs,
        "duration_s": facts["duration_s"],
        "overrides": folder.read_overrides(),
    }


def mark_distinguishing(rows: list[dict[str, Any]]) -> None:
    """Keep in each row only the overrides whose value is not the same in every run."""
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in row["overrides"]) for row in rows]
    keys = {key for overrides in parsed for key in overrides}
    varying = sorted(key for key in keys if len({overrides.get(key) for overrides in parsed}) > 1)
    for row, overrides in zip(rows, parsed, strict=True):
        row["overrides"] = " ".join(f"{key}={overrides[key]}" for key in varying if key in overrides)


def seed_groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed runs that differ only in `seed`, with the mean and sample standard deviation of
    their final test accuracy and objective value (from rows with their full override lists)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["state"] == RunStatus.COMPLETED and any(o.startswith("seed=") for o in row["overrides"]):
            recipe = tuple(sorted(o for o in row["overrides"] if not o.startswith("seed=")))
            groups.setdefault(recipe, []).append(row)
    summaries = []
    for recipe, members in groups.items():
        seeds = sorted(o.split("=", 1)[1] for row in members for o in row["overrides"] if o.startswith("seed="))
        if len(set(seeds)) < 2:
            continue
        summary = {"recipe": " ".join(recipe), "seeds": seeds, "n_runs": len(members)}
        for column in ("test_acc", "value"):
            values = [row[column] for row in members if row[column] is not None]
            summary[f"{column}_mean"] = statistics.fmean(values) if values else None
            summary[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary["duration_s_mean"] = statistics.fmean(row["duration_s"] or 0.0 for row in members)
        summaries.append(summary)
    return summaries


def format_seed_groups(groups: Sequence[dict[str, Any]]) -> str:
    lines = ["over seeds (runs that differ only in seed; mean +- sample std of the final epoch):"]
    for group in groups:
        lines.append(
            f"  {group['recipe'] or '(defaults)'}  seeds {','.join(group['seeds'])}: test_acc "
            f"{100 * group['test_acc_mean']:.2f}% +- {100 * (group['test_acc_std'] or 0):.2f}, "
            f"mean {group['duration_s_mean']:.0f} s per run"
        )
    return "\n".join(lines)


def sort_best_first(rows: list[dict[str, Any]]) -> None:
    """Finished runs by objective (best first, by each objective's direction), then the rest."""

    def key(row: dict[str, Any]) -> tuple[int, float]:
        if row["state"] != RunStatus.COMPLETED or row["value"] is None:
            return (1, 0.0)
        sign = -1 if direction_of(row["objective"]) == MAXIMIZE else 1
        return (0, sign * row["value"])

    rows.sort(key=key)
    for index, row in enumerate(rows):
        row["best"] = index == 0 and row["state"] == RunStatus.COMPLETED


def sweep_report(sweep_dir: Path) -> dict[str, Any]:
    """A sweep's trial rows, counts by state, best row or Pareto front and (if it has one) its Optuna study."""
    config = yaml.safe_load((sweep_dir / MULTIRUN_FILE).read_text())
    study_name = config.get("hydra", {}).get("sweeper", {}).get("study_name")
    objectives = sweep_objectives(config)
    directions = directions_of(objectives)
    repeats = config.get("hydra", {}).get("sweeper", {}).get("repeats", 1)
    study = None
    if study_name and (sweep_dir / STUDY_DB).is_file():
        storage = open_storage(f"sqlite:///{sweep_dir / STUDY_DB}")  # an optuna 2.10 file: refused in one line
        study = optuna.load_study(study_name=study_name, storage=storage)
        directions = [direction.name.lower() for direction in study.directions]
        rows, _ = study_rows(study.trials, objectives, repeats)
    elif study_name and (sweep_dir / TRIALS_FILE).is_file():  # a study in a remote database
        rows = read_trials(sweep_dir)
    else:
        rows, _ = folder_rows(sweep_dir, objectives)
    states = count_states(rows)
    several = len(objectives) > 1
    return {
        "sweep": str(sweep_dir),
        "study_name": study_name,
        "objectives": objectives,
        "directions": directions,
        "max_params": (config.get("budget") or {}).get("max_params"),
        "repeats": repeats,
        "n_trials": len(rows),
        "trials_by_state": states,
        "best": None if several else best_row(rows, directions[0]),
        "pareto_front": pareto_rows(rows, objectives, directions) if several else None,
        "rows": rows,
        "study": None if several else study if study is not None else rows_study(rows, directions[0]),
        "confirmation": read_confirmation(sweep_dir),
    }


def rows_study(rows: Sequence[dict[str, Any]], direction: str) -> optuna.Study | None:
    """An in-memory Optuna study of finished trial rows, so grid sweeps get Optuna's plots too."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    finished = [row for row in rows if row["state"] in FINISHED]
    names = sorted({key for row in finished for key in row_params(row)})
    values = {name: [parse_value(row.get(name)) for row in finished] for name in names}
    distributions = {}
    for name, seen in values.items():
        numbers = [v for v in seen if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(seen) and len(set(numbers)) > 1:
            low, high = min(numbers), max(numbers)
            is_int = all(isinstance(v, int) for v in numbers)
            distributions[name] = IntDistribution(low, high) if is_int else FloatDistribution(low, high)
        else:
            distributions[name] = CategoricalDistribution(sorted(set(seen), key=str))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    study = optuna.create_study(direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # add_trial, create_trial
        for index, row in enumerate(finished):
            params = {name: values[name][index] for name in names}
            state = optuna.trial.TrialState[row["state"]]
            value = row["value"] if state == optuna.trial.TrialState.COMPLETE else None
            trial = optuna.trial.create_trial(params=params, distributions=distributions, value=value, state=state)
            study.add_trial(trial)
    return study if finished else None


def write_plots(runs: Sequence[RunFolder], sweeps: Sequence[dict[str, Any]]) -> list[Path]:
    from cnnsweep.tools import plots

    written = []
    for folder in runs:
        metrics = folder.read_metrics()
        if metrics:
            written.append(plots.learning_curves(metrics, str(folder.path), folder.path / "learning_curves.png"))
    for sweep in sweeps:
        sweep_dir = Path(sweep["sweep"])
        if sweep["study"] is not None:
            written += plots.study_plots(sweep["study"], sweep_dir)
        if sweep["pareto_front"]:
            written.append(
                plots.pareto_front(
                    sweep["rows"], sweep["pareto_front"], sweep["objectives"], sweep["directions"],
                    sweep["max_params"] if N_PARAMS in sweep["objectives"] else None, sweep_dir / "pareto_front.png",
                )
            )  # fmt: skip
        if sweep["confirmation"]:
            written.append(plots.confirmation(sweep["confirmation"], sweep_dir / CONFIRMATION_PLOT))
        if any(row["state"] == COMPLETE and row.get("n_params") for row in sweep["rows"]):
            written.append(plots.accuracy_vs_params(sweep["rows"], sweep_dir / "accuracy_vs_params.png"))
    return written


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cells = [["", *COLUMNS]]
    for row in rows:
        cells.append(["*" if row.get("best") else "", *(_cell(column, row.get(column)) for column in COLUMNS)])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == N_PARAMS and isinstance(value, (int, float)):
        return f"{value:,.0f}"
    if (column == "value" or column.endswith(("_acc", "_loss"))) and isinstance(value, float):
        return f"{value:.4f}"
    if column == TRAIN_SECONDS and isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_sweep(sweep: dict[str, Any]) -> str:
    states = ", ".join(f"{state} {count}" for state, count in sorted(sweep["trials_by_state"].items()))
    kind = f"Optuna study {sweep['study_name']!r}" if sweep["study_name"] else "grid sweep"
    aims = ", ".join(f"{d} {o}" for o, d in zip(sweep["objectives"], sweep["directions"], strict=True))
    lines = [f"sweep {sweep['sweep']} ({kind}, {aims}): {sweep['n_trials']} trials: {states}"]
    best = sweep["best"]
    if best is not None:
        test_acc = f"{best['test_acc']:.4f}" if best.get("test_acc") is not None else "-"
        lines.append(
            f"  best: trial {best['number']}, value {_spread(best, 'value', VALUE_SD)}, test_acc {test_acc}, "
            f"{best.get('n_params') or 0:,} params, {best.get(RUN_DIR)}"
        )
    results = read_results(Path(sweep["sweep"]))
    if best is not None and (command := results.get("best_command")):
        lines.append(f"  rerun: {command}")
    if sweep["pareto_front"]:
        lines.append(f"  Pareto front ({len(sweep['pareto_front'])} trials, best {sweep['objectives'][0]} first):")
        for row in sweep["pareto_front"]:
            values = ", ".join(
                f"{name} {_spread(row, f'value_{name}', f'{VALUE_SD}_{name}')}" for name in sweep["objectives"]
            )
            test_acc = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "-"
            lines.append(f"    trial {row['number']}: {values}, test_acc {test_acc}, {row.get(RUN_DIR)}")
    if sweep["repeats"] > 1:
        lines += format_repeated_trials(sweep)
    if sweep["confirmation"]:
        lines.append(format_confirmation(sweep["confirmation"], results.get("confirmed") or {}))
    return "\n".join(lines)


CONFIRMATION_COLUMNS = ("rank", "trial", "verdict", "n", "mean ± sd", "95% interval", "vs best (paired)",
                        "test_acc mean ± sd", "test_acc 95% interval", "search")  # fmt: skip


def format_confirmation(rows: Sequence[dict[str, Any]], winner: dict[str, Any]) -> str:
    """A confirmation's table (confirmation.csv, best first) and the command that reproduces its winner."""
    objective = rows[0]["objective"]
    lines = [
        f"  confirmed on fresh seeds {' '.join(map(str, rows[0]['seeds']))}, ranked by {objective} (test_acc "
        "reported, never used to choose; tied: the data cannot tell it from the best):"
    ]
    cells = [list(CONFIRMATION_COLUMNS)]
    for row in rows:
        diff = "-" if row["diff_mean"] is None else f"{_signed(row['diff_mean'])} [{_interval(row, 'diff')}]"
        cells.append([
            str(row["rank"]), str(row["trial"]), row["verdict"], str(row["n_seeds"]),
            f"{_figure(row['value_mean'])} ± {_figure(row['value_sd'])}", _interval(row, "value"), diff,
            f"{_figure(row['test_acc_mean'])} ± {_figure(row['test_acc_sd'])}", _interval(row, "test_acc"),
            _figure(row["search_value"]),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in cells) for i in range(len(CONFIRMATION_COLUMNS))]
    lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    if command := winner.get("command"):
        lines.append(f"  confirmed winner: trial {winner['trial']}; rerun its seed {winner['seeds'][0]}: {command}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _interval(row: dict[str, Any], prefix: str) -> str:
    low, high = row[f"{prefix}_low"], row[f"{prefix}_high"]
    return "-" if low is None or high is None else f"{low:.4f}, {high:.4f}"


def _spread(row: dict[str, Any], value: str, sd: str) -> str:
    """A value with its sd over the trial's repeats, if it has some: `0.9912 +- 0.0004 (3 repeats)`."""
    column = value.removeprefix("value_")  # the objective's name: its cell's format
    if row.get(sd) is None:
        return _cell(column, row[value])
    return f"{_cell(column, row[value])} +- {_cell(column, row[sd])} ({row[REPEATS]} repeats)"


def format_repeated_trials(sweep: dict[str, Any], top: int = 10) -> list[str]:
    """The best COMPLETE trials of a sweep with repeats: the mean +- sd over their seeds, and test_acc's mean."""
    rows = [row for row in sweep["rows"] if row["state"] == COMPLETE and row["value"] is not None]
    sign = -1 if sweep["directions"][0] == MAXIMIZE else 1
    rows.sort(key=lambda row: sign * row["value"])
    objective = sweep["objectives"][0]
    lines = [f"  trials by {objective}, mean +- sd over {sweep['repeats']} seeds (best {min(top, len(rows))}):"]
    for row in rows[:top]:
        test_acc = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "-"
        params = " ".join(f"{key}={value}" for key, value in row_params(row).items())
        lines.append(f"    trial {row['number']}: {_spread(row, 'value', VALUE_SD)}, test_acc {test_acc}  {params}")
    return lines


def build(
    root: Path,
) -> tuple[list[RunFolder], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs, their table rows (best first), sweep reports and seed groups under root; refuses an
    empty or unfinished PATH."""
    if not root.exists():
        raise UserError(f"{root} does not exist; give a run folder, a sweep folder, or outputs/ or multirun/")
    runs = find_runs(root)
    sweeps = [sweep_report(path) for path in find_sweeps(root)]
    if not runs and not sweeps:
        raise UserError(
            f"no runs under {root}: a run folder holds .hydra/ and summary.json (python train.py writes them "
            "under outputs/ or multirun/)"
        )
    if len(runs) == 1 and runs[0].path == root and not runs[0].read_metrics():
        status = (runs[0].read_summary() or {}).get("status", "no summary.json")
        raise UserError(
            f"{root} has no finished epoch (status: {status}, no metrics.csv): the run was stopped before its "
            "first epoch ended, or is still starting"
        )
    rows = [run_row(folder) for folder in runs]
    groups = seed_groups(rows)
    mark_distinguishing(rows)
    sort_best_first(rows)
    return runs, rows, sweeps, groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnsweep report", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run folder, a sweep folder, or outputs/ or multirun/")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--no-plots", action="store_true", help="print only; write no PNG files")
    args = parser.parse_args(argv)
    try:
        runs, rows, sweeps, groups = build(args.path)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plots = [] if args.no_plots else write_plots(runs, sweeps)
    sweep_info = [{k: v for k, v in sweep.items() if k not in ("rows", "study")} for sweep in sweeps]
    if args.format == "json":
        output = {"runs": rows, "sweeps": sweep_info, "seed_groups": groups, "plots": [str(p) for p in plots]}
        print(json.dumps(output, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["best", *COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(format_table(rows))
        if groups:
            print()
            print(format_seed_groups(groups))
        for sweep in sweeps:
            print()
            print(format_sweep(sweep))
        if plots:
            print(f"\n{len(plots)} plots written:")
            print("\n".join(f"  {path}" for path in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
