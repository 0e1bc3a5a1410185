"""README's Recipes table and docs/performance.md say what the files in results/ measured."""

from __future__ import annotations

import statistics
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from cnnsweep.artifacts import read_csv, read_json
from cnnsweep.sweep.attrs import CONFIRMS
from cnnsweep.sweep.confirmation import confirmed_params, read_confirmation_file
from cnnsweep.sweep.confirming import pair
from cnnsweep.sweep.results import pareto_rows

from helpers import REPO, compose_train

RESULTS = REPO / "results" / "recipes"
RECIPES = sorted(path.name for path in RESULTS.iterdir() if path.is_dir() and path.name != "superseded")


def final_epochs(recipe: str) -> list[dict[str, Any]]:
    """The last metrics.csv row of each seed's run, in seed order."""
    finals = []
    for path in sorted((RESULTS / recipe).glob("seed*.metrics.csv")):
        rows = read_csv(path)
        assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
        finals.append(rows[-1])
    return finals


# results/recipes/<folder> -> (its label in README's tables, the overrides that run it)
NOT_EXPERIMENTS = {
    "seed_recipe": ("seed recipe (defaults)", []),
    "fashion_seed_recipe": ("seed recipe, `data=fashion_mnist`", ["data=fashion_mnist"]),
}


def label_and_overrides(recipe: str) -> tuple[str, list[str]]:
    return NOT_EXPERIMENTS.get(recipe, (f"`experiment={recipe}`", [f"experiment={recipe}"]))


def readme_row(recipe: str) -> str:
    label, _ = label_and_overrides(recipe)
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Recipes") : text.index("### Confirmed on fresh seeds")]  # the recipes' own table
    rows = [line for line in table.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"README's Recipes table has {len(rows)} rows for {label}"
    return rows[0]


def test_every_recipe_in_the_table_has_its_runs():
    assert {"seed_recipe", "seed_tuned", "fast", "best", "tiny", "fashion_seed_recipe", "fashion"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_readme_row_is_the_mean_and_std_of_three_seeds(recipe):
    finals = final_epochs(recipe)
    assert len(finals) == 3 and len({row["epoch"] for row in finals}) == 1
    accuracies = [100 * float(row["test_acc"]) for row in finals]
    mean, std = statistics.mean(accuracies), statistics.stdev(accuracies)
    seeds = ", ".join(f"{accuracy:.2f}" for accuracy in accuracies)
    row = readme_row(recipe).replace("**", "")
    assert f"{mean:.2f} ± {std:.2f} ({seeds})" in row
    assert f" | {finals[0]['epoch']} | " in row  # the epochs column


# recipe -> (its multirun's trials.csv under results/recipes, the rows' `experiment` value)
TRIAL_TABLES = {
    "seed_recipe": ("seed_recipe.trials.csv", None),
    "fast": ("fast.trials.csv", "fast"),
    "tiny": ("tiny.trials.csv", "tiny"),
    "best": ("recipes.trials.csv", "best"),  # that multirun also holds the superseded tiny and fast
}


def wall_times(recipe: str) -> list[float]:
    """Each measured run's wall seconds: its summary.json where kept, else its multirun's trials.csv."""
    summaries = sorted((RESULTS / recipe).glob("seed*.summary.json"))
    if summaries:
        return [read_json(path)["wall_time_s"] for path in summaries]
    table, experiment = TRIAL_TABLES[recipe]
    return [row["duration_s"] for row in read_csv(RESULTS / table) if row.get("experiment") == experiment]


@pytest.mark.parametrize("recipe", RECIPES)
def test_readmes_wall_time_is_the_mean_of_the_measured_runs(recipe):
    times = wall_times(recipe)
    assert len(times) == (2 if recipe == "seed_recipe" else 3)  # seed 0 of the seed recipe ran alone
    cells = [cell.strip() for cell in readme_row(recipe).split("|")]
    assert cells[5].startswith(f"{statistics.mean(times):,.0f} s"), (cells[5], times)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_shipped_recipe_runs_as_long_as_the_measured_one(recipe):
    cfg = compose_train(label_and_overrides(recipe)[1])
    assert {row["epoch"] for row in final_epochs(recipe)} == {cfg.trainer.epochs}


def test_readmes_pareto_front_is_the_front_of_the_sweep_in_results():
    rows = read_csv(REPO / "results" / "sweeps" / "pareto.trials.csv")
    front = pareto_rows(rows, ["val_acc", "n_params"], ["maximize", "minimize"])
    text = (REPO / "README.md").read_text()
    table = text[text.index("### A measured front") : text.index("![Pareto front")]
    shown = [line.split("|")[1:6] for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    expected = [
        [
            str(row["number"]),
            ", ".join(str(row[f"model.widths.{i}"]) for i in range(7)),
            f"{row['n_params']:,}",
            f"{100 * row['value_val_acc']:.2f}",
            f"{100 * row['test_acc']:.2f}",
        ]
        for row in front
    ]
    assert [[cell.strip() for cell in line] for line in shown] == expected
    assert f"gave this front of {len(front)} of its {len(rows)} trials" in " ".join(table.split())


BENCH = REPO / "results" / "bench"
MACHINES = ("xeon_amx", "epyc_avx2")  # results/bench/<machine>/: the CPUs of docs/performance.md's bench figures
ZEN4 = "epyc_zen4"  # the machine the confirmed 3-epoch experiment=minute was timed on


def stored(machine: str, name: str) -> dict:
    return read_json(BENCH / machine / name)


PERFORMANCE = REPO / "docs" / "performance.md"  # where README's speed figures live (README links it)


def as_run_today(command: str) -> str:
    """A stored measurement's command as the docs show it: the files keep the spelling they were run with
    (`python -m cnnsweep.bench ...`), the docs give today's (`cnnsweep bench ...`)."""
    then = "python -m cnnsweep."
    return "cnnsweep " + command.removeprefix(then) if command.startswith(then) else command


def performance_text() -> str:
    return " ".join(PERFORMANCE.read_text().split())


def test_every_stored_figure_names_its_machine():
    from cnnsweep.train.machine import machine_label

    for path in sorted(BENCH.glob("*/*.json")):
        report = read_json(path)
        assert path.parent.name in (*MACHINES, ZEN4), path
        facts = report["machine"]
        assert {"cpu", "cpu_cores", "cpu_capability", "cpu_native_bf16", "gpu"} <= set(facts), path
        assert {row["machine"] for row in report["rows"]} == {machine_label(facts)}, path
    amd, intel = stored("epyc_avx2", "cpu.json")["machine"], stored("xeon_amx", "cpu.json")["machine"]
    assert (amd["cpu_capability"], amd["cpu_native_bf16"]) == ("AVX2", False)
    assert intel["cpu_bf16_instructions"] == "AMX"
    zen4 = stored(ZEN4, "runs_warm.json")["machine"]
    assert (zen4["cpu_capability"], zen4["cpu_bf16_instructions"]) == ("AVX512", "AVX512_BF16")


def test_the_bench_table_is_the_stored_measurement():
    from cnnsweep.tools.bench import format_table

    reports = [stored(machine, "cpu.json") for machine in MACHINES]
    text = PERFORMANCE.read_text()
    assert format_table([row for report in reports for row in report["rows"]]) in text
    for machine, report in zip(MACHINES, reports, strict=True):
        assert as_run_today(report["command"]) in text.replace(" \\\n    ", " ")  # the command, as the page shows it
        cold = next(row for row in report["rows"] if row["variant"] == "cnnsweep")
        assert report["compile_cache"] == "cold" and cold["compiled"]
        warm = stored(machine, "cpu_warm.json")
        assert warm["command"] == report["command"].replace(" --compile-cache cold", "")
        default = next(row for row in warm["rows"] if row["variant"] == "cnnsweep")
        said = f"{cold['warmup_s']:.1f} s with an empty cache and {default['warmup_s']:.1f} s with a warm one"
        assert said in performance_text(), machine


def test_the_time_to_99_4_tables_are_the_stored_measurements():
    from cnnsweep.tools.runbench import runs_table

    text = performance_text()
    for kind in ("runs_warm", "runs_cold"):
        reports = [read_json(path) for machine in MACHINES for path in sorted((BENCH / machine).glob(f"{kind}*.json"))]
        assert " ".join(runs_table([row for report in reports for row in report["rows"]]).split()) in text, kind
        for report in reports:
            assert as_run_today(report["command"]) in text, kind
    minute = next(row for row in stored("xeon_amx", "runs_warm.json")["rows"] if row["recipe"] == "minute")
    assert minute["test_acc_mean"] >= 99.40 and minute["wall_s_max"] <= 60  # what docs/performance.md says of it there
    superseded = RESULTS / "superseded" / "minute_5epochs"  # the recipe these tables measured, before the 3-epoch one
    kept = [read_json(superseded / f"seed{run['seed']}.summary.json") for run in minute["runs"]]
    assert [summary["final_test_acc"] for summary in kept] == [run["test_acc"] for run in minute["runs"]]
    for name, folder in (("runs_warm.json", "minute"), ("runs_warm_3epochs.json", "minute_3epochs")):
        (row,) = stored("epyc_avx2", name)["rows"]
        kept = [read_json(BENCH / "epyc_avx2" / folder / f"seed{run['seed']}.summary.json") for run in row["runs"]]
        assert [summary["final_test_acc"] for summary in kept] == [run["test_acc"] for run in row["runs"]]
        assert {summary["precision"]["precision"] for summary in kept} == {"fp32"}  # auto, on AVX2
        assert [summary["epochs_run"] for summary in kept] == [5 if folder == "minute" else 3] * 3


def test_the_sweep_throughput_is_the_stored_measurement():
    from cnnsweep.tools.runbench import sweep_table

    report = stored("xeon_amx", "sweep.json")
    text = " ".join(PERFORMANCE.read_text().split())
    assert " ".join(sweep_table(report["rows"]).split()) in text
    assert as_run_today(report["command"]) in text
    faster = max(report["rows"], key=lambda row: row["trials_per_hour"])
    assert compose_train(["hparams_search=lr_gamma_dropout", *faster["overrides"]]).trainer.compile == (
        compose_train(["hparams_search=lr_gamma_dropout"]).trainer.compile
    )  # the search ships with the faster setting


SWEEPS = REPO / "results" / "sweeps"


def confirmed_table() -> list[list[str]]:
    """The cells of README's "Confirmed on fresh seeds" rows."""
    text = (REPO / "README.md").read_text()
    start = text.index("### Confirmed on fresh seeds")
    section = text[start : text.index("\n#", start + 1)]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| `")]


def cpu_hours(study: str) -> tuple[float, float]:
    """The search's and the confirmation's CPU-hours: their runs' wall time summed (one thread a run)."""
    repeats, trials = SWEEPS / f"{study}.repeats.csv", SWEEPS / f"{study}.trials.csv"
    runs = read_csv(repeats if repeats.is_file() else trials)
    confirmed = read_csv(SWEEPS / f"{study}.confirmation.csv")
    search = sum(row["duration_s"] or 0.0 for row in runs)
    return search / 3600, sum(row["run_seconds"] for row in confirmed) / 3600


def test_readmes_confirmed_recipes_are_the_stored_confirmations():
    rows = confirmed_table()
    assert [row[0] for row in rows] == ["`experiment=minute`", "`experiment=seed_tuned`"]
    for recipe, study_cell, epochs, images, seeds, test_acc, interval, val_acc, hours in rows:
        study = study_cell.split("`")[1]
        best = read_confirmation_file(SWEEPS / f"{study}.confirmation.csv")[0]
        assert study_cell.startswith(f"`{study}`, trial {best['trial']} of ")
        cfg = compose_train([recipe.strip("`")])
        assert int(epochs) == cfg.trainer.epochs
        assert images == f"{cfg.trainer.epochs * (60_000 - cfg.data.val_size):,}"  # the validation split is held out
        assert seeds == " ".join(map(str, best["seeds"]))
        assert test_acc.replace("**", "") == f"{100 * best['test_acc_mean']:.2f} ± {100 * best['test_acc_sd']:.2f}"
        assert interval == f"{100 * best['test_acc_low']:.2f}, {100 * best['test_acc_high']:.2f}"
        assert val_acc == f"{100 * best['value_mean']:.2f} ± {100 * best['value_sd']:.2f}"
        search, confirmation = cpu_hours(study)
        assert hours.startswith(f"{search:.2f} + {confirmation:.2f} ")


def test_a_confirmed_recipe_is_its_confirmed_configuration():
    for recipe, study_cell, *_ in confirmed_table():
        best = read_confirmation_file(SWEEPS / f"{study_cell.split('`')[1]}.confirmation.csv")[0]
        params = confirmed_params(best)
        shipped = compose_train([recipe.strip("`")])
        confirmed = compose_train([recipe.strip("`"), *(f"{key}={value}" for key, value in params.items())])
        for key in params:
            ours, theirs = OmegaConf.select(shipped, key), OmegaConf.select(confirmed, key)
            assert ours == theirs, key  # to the last digit: rounded, a run is another draw


def test_the_minute_recipes_avx2_estimate_is_the_stored_ratio():
    """docs/performance.md's estimate for an AVX2 CPU: the recipe timed beside the run measured there, both
    on the Zen 4 held to AVX2 and fp32, the ratio carried over to that run's measured time."""
    from cnnsweep.tools.runbench import runs_table

    report = stored(ZEN4, "runs_warm_as_avx2.json")
    text = performance_text().replace("**", "")
    assert " ".join(runs_table(report["rows"]).split()) in text and report["command"] in text
    assert report["command"].startswith("ATEN_CPU_CAPABILITY=avx2 ") and report["machine"]["cpu_capability"] == "AVX2"
    recipe, then = report["rows"]
    assert {run["precision"] for row in report["rows"] for run in row["runs"]} == {"fp32"}  # auto, without bf16
    (measured,) = stored("epyc_avx2", "runs_warm_3epochs.json")["rows"]
    reference = compose_train(then["overrides"])  # the run measured on the AVX2 AMD, as today's overrides say it
    assert (
        reference.model == compose_train(["experiment=minute"]).model and recipe["overrides"][0] == "experiment=minute"
    )
    assert (reference.trainer.epochs, reference.data.batch_size, reference.data.val_size) == (3, 128, 0)
    assert reference.augmentation._target_ == "cnnsweep.train.augment.NoAugmentation"
    ratio = recipe["wall_s_mean"] / then["wall_s_mean"]
    said = (
        f"takes {ratio:.2f}x as long as that run here ({recipe['wall_s_mean']:.1f} against {then['wall_s_mean']:.1f} s)"
    )
    assert said in text and f"about {measured['wall_s_mean'] * ratio:.0f} s per run on the AVX2 AMD" in text


def test_the_seed_tuned_runs_are_its_confirmation_runs_reproduced(tmp_path):
    """README: `experiment=seed_tuned seed=N trainer.threads=1` re-trains the confirmation's run on seed N exactly."""
    best = read_confirmation_file(SWEEPS / "lr_gamma_dropout.confirmation.csv")[0]
    copy = tmp_path / "study.db"  # read a copy: the stored study stays untouched
    copy.write_bytes((SWEEPS / "lr_gamma_dropout.optuna.db").read_bytes())
    study = optuna.load_study(study_name="lr_gamma_dropout.confirm", storage=f"sqlite:///{copy}")
    confirmed = {
        pair(trial)[1]: (trial.value, trial.user_attrs["test_acc"])
        for trial in study.get_trials(states=(TrialState.COMPLETE,))
        if CONFIRMS in trial.user_attrs and pair(trial)[0] == best["trial"]
    }
    kept = {path.name: read_json(path) for path in sorted((RESULTS / "seed_tuned").glob("seed*.summary.json"))}
    assert sorted(kept) == [f"seed{seed}.summary.json" for seed in (1, 2, 3)]
    epochs = compose_train(["experiment=seed_tuned"]).trainer.epochs
    for summary in kept.values():
        assert (summary["final_val_acc"], summary["final_test_acc"]) == confirmed[summary["seed"]]
        assert summary["epochs_run"] == epochs


def test_the_confirmed_minute_recipes_time_is_the_stored_measurement():
    from cnnsweep.tools.runbench import runs_table

    report = stored(ZEN4, "runs_warm.json")
    (row,) = report["rows"]
    assert row["overrides"] == ["experiment=minute"] and [run["seed"] for run in row["runs"]] == [3, 4, 5]
    text = performance_text()
    assert " ".join(runs_table([row]).split()) in text and report["command"] in text
    kept = [read_json(RESULTS / "minute" / f"seed{run['seed']}.summary.json") for run in row["runs"]]
    assert [summary["final_test_acc"] for summary in kept] == [run["test_acc"] for run in row["runs"]]
    assert {summary["epochs_run"] for summary in kept} == {compose_train(["experiment=minute"]).trainer.epochs}
    cells = [cell.strip() for cell in readme_row("minute").split("|")]
    assert f"{row['wall_s_mean']:.0f} s with start-up" in cells[5] and "AMD EPYC Zen 4" in cells[5]
