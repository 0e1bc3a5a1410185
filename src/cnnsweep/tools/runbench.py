"""Whole runs and whole sweeps, timed from the outside: what a researcher waits for.

    cnnsweep runbench runs --recipe minute=experiment=minute --seeds 0,1,2
    cnnsweep runbench sweep --variant eager=trainer.compile=false --variant compiled=trainer.compile=true \\
        hparams_search=lr_gamma_dropout trainer.epochs=2 hydra.sweeper.n_trials=8

`runs`: each recipe once per seed, one run at a time, as `python train.py OVERRIDES seed=N`; the wall
time of the whole process (start-up, data, compile warm-up, training, evaluation) and the final test
accuracy. `--compile-cache shared` (the default) uses the cache every run shares (cnnsweep.train.compiling);
`warm` too, after one untimed run of each recipe that fills it; `cold` gives every run an empty one.
`sweep`: each variant runs `python train.py --multirun OVERRIDES VARIANT` in a fresh sweep folder with
an empty compile cache (what a machine's first sweep meets); its wall time, and trials (completed or
pruned: an over-budget draw never becomes a trial) and training epochs per hour.
`--json` prints either as JSON, with the command that made it; `--keep DIR` (runs) keeps each run's
metrics.csv and summary.json as DIR/RECIPE/seedN.*.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnsweep.files import METRICS_FILE, SUMMARY_FILE
from cnnsweep.records import RunFolder
from cnnsweep.schema import CONF_DIR
from cnnsweep.sweep.results import facts_from_summary, read_trials
from cnnsweep.sweep.states import COMPLETE, PRUNED
from cnnsweep.tools.bench import aligned, named
from cnnsweep.train.compiling import CACHE_ENV
from cnnsweep.train.machine import machine_facts, machine_label

TRAIN_PY = CONF_DIR.parent / "train.py"


def timed_train_py(args: Sequence[str], compile_cache: Path | None) -> float:
    """Wall seconds of `python train.py ARGS` (with its own compile cache folder, if given)."""
    env = os.environ | ({CACHE_ENV: str(compile_cache)} if compile_cache else {})
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(TRAIN_PY), *args], cwd=TRAIN_PY.parent, env=env, capture_output=True, text=True
    )
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        last = "".join((result.stdout + result.stderr).strip().splitlines()[-1:])
        raise SystemExit(f"error: python train.py {shlex.join(args)} failed (exit {result.returncode}): {last}")
    return wall_s


def time_runs(
    recipe: str, overrides: Sequence[str], seeds: Sequence[int], cache: str, scratch: Path, keep: Path | None
) -> dict[str, Any]:
    """Each seed's run of `overrides`, one after another; `cache`: shared, warm or cold (see above)."""
    if cache == "warm":
        timed_train_py([*overrides, f"hydra.run.dir={scratch / recipe / 'untimed'}", "trainer.progress=false"], None)
    runs = []
    for seed in seeds:
        run_dir = scratch / recipe / f"seed{seed}"
        empty = scratch / f"cache-{recipe}-{seed}" if cache == "cold" else None
        args = [*overrides, f"seed={seed}", f"hydra.run.dir={run_dir}", "trainer.progress=false"]
        wall_s = timed_train_py(args, empty)
        summary = RunFolder(run_dir).read_summary() or {}
        facts = facts_from_summary(summary, run_dir)  # test_acc and epochs_run, as a sweep's table reads them
        runs.append(
            {
                "seed": seed,
                "wall_s": wall_s,
                "test_acc": facts["test_acc"],
                "compiled": summary["compile"]["compiled"],
                "precision": summary["precision"]["precision"],
                "epochs": facts["epochs_run"],
            }
        )
        if keep is not None:
            (keep / recipe).mkdir(parents=True, exist_ok=True)
            for name in (METRICS_FILE, SUMMARY_FILE):
                shutil.copyfile(run_dir / name, keep / recipe / f"seed{seed}.{name}")
    accuracies = [100 * run["test_acc"] for run in runs]
    return {
        "recipe": recipe,
        "overrides": list(overrides),
        "runs": runs,
        "test_acc_mean": statistics.mean(accuracies),
        "test_acc_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "wall_s_mean": statistics.mean(run["wall_s"] for run in runs),
        "wall_s_max": max(run["wall_s"] for run in runs),
    }


def time_sweep(name: str, overrides: Sequence[str], variant: Sequence[str], scratch: Path) -> dict[str, Any]:
    sweep_dir = scratch / name
    wall_s = timed_train_py(
        ["--multirun", *overrides, *variant, f"hydra.sweep.dir={sweep_dir}"], scratch / f"cache-{name}"
    )
    trials = read_trials(sweep_dir)
    finished = [trial for trial in trials if trial["state"] in (COMPLETE, PRUNED) and trial["epochs_run"]]
    epochs = sum(trial["epochs_run"] for trial in finished)
    return {
        "variant": name,
        "overrides": list(variant),
        "wall_s": wall_s,
        "trials_completed": sum(trial["state"] == COMPLETE for trial in finished),
        "trials_pruned": sum(trial["state"] == PRUNED for trial in finished),
        "trials_per_hour": 3600 * len(finished) / wall_s,  # completed and pruned: every trial the sweep ran
        "epochs_per_hour": 3600 * epochs / wall_s,  # the fair measure when pruning stops trials early
    }


def runs_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [["recipe", "seeds", "test acc %", "(each)", "wall s", "(each)", "compiled", "precision", "machine"]]
    for row in rows:
        runs = row["runs"]
        lines.append(
            [
                row["recipe"],
                str(len(runs)),
                f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}",
                ", ".join(f"{100 * run['test_acc']:.2f}" for run in runs),
                f"{row['wall_s_mean']:.1f}",
                ", ".join(f"{run['wall_s']:.1f}" for run in runs),
                "yes" if all(run["compiled"] for run in runs) else "no",
                "/".join(sorted({run["precision"] for run in runs})),
                row["machine"],
            ]
        )
    return aligned(lines)


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [["variant", "wall s", "completed", "pruned", "trials/h", "epochs/h", "machine", "overrides"]]
    for row in rows:
        lines.append(
            [
                row["variant"],
                f"{row['wall_s']:.1f}",
                str(row["trials_completed"]),
                str(row["trials_pruned"]),
                f"{row['trials_per_hour']:.1f}",
                f"{row['epochs_per_hour']:.1f}",
                row["machine"],
                " ".join(row["overrides"]) or "(as configured)",
            ]
        )
    return aligned(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnsweep runbench", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    runs = modes.add_parser("runs", help="wall time and test accuracy of whole runs")
    runs.add_argument("overrides", nargs="*", help="Hydra overrides for every recipe")
    runs.add_argument("--recipe", action="append", default=[], metavar='NAME="OVERRIDES"')
    runs.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, run one after another")
    runs.add_argument("--compile-cache", choices=("shared", "warm", "cold"), default="shared",
                      help="shared: the cache every run uses; warm: the same after one untimed run of each "
                      "recipe; cold: an empty cache for every run")  # fmt: skip
    runs.add_argument("--keep", type=Path, help="copy each run's metrics.csv and summary.json here")
    sweep = modes.add_parser("sweep", help="trials per hour of a sweep")
    sweep.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep")
    sweep.add_argument("--variant", action="append", default=[], metavar='NAME="OVERRIDES"')
    for mode in (runs, sweep):
        mode.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    command = "cnnsweep runbench " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="runbench-") as folder:
        scratch = Path(folder)
        if args.mode == "runs":
            try:
                seeds = [int(seed) for seed in args.seeds.split(",")]
            except ValueError:
                parser.error(f"--seeds {args.seeds!r} is not a comma-separated list of integers, e.g. 0,1,2")
            rows = [
                time_runs(name, [*args.overrides, *extra], seeds, args.compile_cache, scratch, args.keep)
                for name, extra in named(args.recipe, parser, "--recipe")
            ]
            table = runs_table
        else:
            variants = named(args.variant, parser, "--variant")
            rows = [time_sweep(name, args.overrides, extra, scratch) for name, extra in variants]
            table = sweep_table
    machine = machine_facts()  # the runs' machine: this one (their own processes, started here)
    for row in rows:
        row["machine"] = machine_label(machine)
    if args.json:
        print(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
