"""PNG plots of runs and sweeps, drawn headless (matplotlib's Agg backend)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnnsweep.artifacts import write_atomically  # noqa: E402
from cnnsweep.objectives import MAXIMIZE, N_PARAMS, is_accuracy  # noqa: E402
from cnnsweep.sweep.states import COMPLETE  # noqa: E402

SPLIT_STYLE = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def save_figure(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, lambda file: file.write(buffer.getvalue()))
    return path


def learning_curves(metrics: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Loss and accuracy per epoch, train against validation and test."""
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in metrics]
    for split, color in SPLIT_STYLE.items():
        if metrics[0].get(f"{split}_loss") is None:
            continue
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in metrics], "o-", color=color, label=split, ms=3)
        acc_axes.plot(epochs, [100 * row[f"{split}_acc"] for row in metrics], "o-", color=color, label=split, ms=3)
    loss_axes.set(xlabel="epoch", ylabel="NLL loss", yscale="log", title="loss")
    acc_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return save_figure(figure, path)


def accuracy_vs_params(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Each finished trial's objective and test accuracy against its parameter count."""
    complete = [row for row in rows if row["state"] == COMPLETE and row.get("n_params")]
    figure, axes = plt.subplots(figsize=(6, 4))
    n_params = [row["n_params"] for row in complete]
    axes.scatter(n_params, [100 * row["value"] for row in complete], label="objective", color="tab:orange")
    tested = [row for row in complete if row.get("test_acc") is not None]
    axes.scatter(
        [row["n_params"] for row in tested],
        [100 * row["test_acc"] for row in tested],
        label="test_acc",
        color="tab:green",
        marker="x",
    )
    axes.set(xlabel="trainable parameters", ylabel="accuracy (%)", title="accuracy against model size")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's own matplotlib plots of a study, where they apply to it."""
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
        "slice.png": optuna_plots.plot_slice,
        "param_importances.png": optuna_plots.plot_param_importances,  # fANOVA, Optuna's default evaluator
    }
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = {name for trial in complete for name in trial.params}
    written = []
    for name, plot in plots.items():
        if name == "intermediate_values.png" and not any(t.intermediate_values for t in study.trials):
            continue
        if name == "param_importances.png" and (len(complete) < 2 or len(varied) < 2):
            continue  # importances need at least two finished trials and two parameters
        if name == "slice.png" and not varied:
            continue
        # optuna's plots switch matplotlib to its ggplot style: keep that inside each plot
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            axes = plot(study)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        if name == "intermediate_values.png":
            for line in first.get_lines():  # optuna draws lines only: a trial pruned after one epoch was invisible
                line.set_marker("o")
        written.append(save_figure(first.figure, folder / name))
    return written


def confusion_matrix(counts: Sequence[Sequence[int]], path: Path) -> Path:
    """Counts of (true, predicted) class pairs, with the counts written in the cells."""
    n = len(counts)
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(counts, cmap="Blues", norm=matplotlib.colors.LogNorm(vmin=1, vmax=max(map(max, counts)) or 1))
    for true in range(n):
        for guess in range(n):
            if counts[true][guess]:
                color = "white" if true == guess else "black"
                axes.text(guess, true, str(counts[true][guess]), ha="center", va="center", fontsize=7, color=color)
    axes.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    figure.colorbar(image, ax=axes, label="images")
    return save_figure(figure, path)


def image_grid(images: Any, labels: Any, predicted: Any, path: Path, columns: int = 8) -> Path:
    """Images (uint8, N x C x H x W; grey or RGB) in a grid, each titled 'true -> predicted'."""
    n = max(len(images), 1)
    rows = -(-n // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.35), squeeze=False)
    for index, cell in enumerate(axes.flat):
        cell.axis("off")
        if index < len(images):
            image = np.asarray(images[index])  # torch tensors warn in matplotlib
            if image.shape[0] == 3:
                cell.imshow(image.transpose(1, 2, 0))  # channels last, as matplotlib draws colour
            else:
                cell.imshow(image[0], cmap="gray_r")
            cell.set_title(f"{int(labels[index])} → {int(predicted[index])}", fontsize=8, color="tab:red")
    figure.suptitle(f"misclassified test images (true → predicted), first {len(images)}", fontsize=10)
    return save_figure(figure, path)


def pareto_front(
    rows: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    objectives: Sequence[str],
    directions: Sequence[str],
    max_params: int | None,
    path: Path,
) -> Path:
    """A multi-objective sweep's trials in its first two objectives, the Pareto front highlighted.

    The parameter count (if an objective) goes on the x axis, with the budget as a vertical line;
    accuracies are drawn in percent.
    """
    x_name, y_name = objectives[1], objectives[0]
    if x_name != N_PARAMS and N_PARAMS in objectives[:2]:
        x_name, y_name = y_name, x_name

    def scale(name: str, value: float) -> float:
        return 100 * value if is_accuracy(name) else value

    def points(chosen: Sequence[dict[str, Any]], name: str) -> list[float]:
        return [scale(name, row[f"value_{name}"]) for row in chosen]

    complete = [row for row in rows if row["state"] == COMPLETE and row.get(f"value_{x_name}") is not None]
    ordered = sorted(front, key=lambda row: row[f"value_{x_name}"])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter(points(complete, x_name), points(complete, y_name), color="tab:gray", alpha=0.6, label="trials")
    axes.step(points(ordered, x_name), points(ordered, y_name), where="post", color="tab:red", alpha=0.5)
    axes.scatter(points(ordered, x_name), points(ordered, y_name), color="tab:red", zorder=3, label="Pareto front")
    for row in ordered:
        axes.annotate(
            str(row["number"]), (scale(x_name, row[f"value_{x_name}"]), scale(y_name, row[f"value_{y_name}"])),
            textcoords="offset points", xytext=(4, 4), fontsize=7,
        )  # fmt: skip
    if max_params is not None and x_name == N_PARAMS:
        axes.axvline(max_params, color="tab:blue", linestyle="--", label=f"budget ({max_params:,})")
    arrows = {name: "↑" if d == MAXIMIZE else "↓" for name, d in zip(objectives, directions, strict=True)}
    axes.set(
        xlabel=f"{x_name} ({arrows[x_name]} better)",
        ylabel=f"{y_name}{' (%)' if is_accuracy(y_name) else ''} ({arrows[y_name]} better)",
        title=f"Pareto front: {y_name} against {x_name}",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def confirmation(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """A confirmation (confirmation.csv's rows, best first): each configuration's objective and test accuracy
    over the fresh seeds as a point with its 95% interval, and what the search had measured for it (a ring:
    the best of many single draws lies above its confirmed mean, the winner's curse)."""
    objective = rows[0]["objective"]
    scale = 100 if is_accuracy(objective) else 1  # accuracies in percent, as the other plots show them
    labels = [f"trial {row['trial']} ({row['verdict']})" for row in rows]
    places = np.arange(len(rows))[::-1]  # the best at the top
    figure, panels = plt.subplots(1, 2, figsize=(10, 1.6 + 0.5 * len(rows)), sharey=True)
    for axes, prefix, name, color in ((panels[0], "value", objective, "tab:orange"),
                                      (panels[1], "test_acc", "test_acc", "tab:green")):  # fmt: skip
        means = [row[f"{prefix}_mean"] for row in rows]
        if any(mean is None for mean in means):
            continue
        unit = 100 if prefix == "test_acc" else scale
        lows = [row[f"{prefix}_low"] if row[f"{prefix}_low"] is not None else row[f"{prefix}_mean"] for row in rows]
        highs = [row[f"{prefix}_high"] if row[f"{prefix}_high"] is not None else row[f"{prefix}_mean"] for row in rows]
        centre = unit * np.array(means)
        bars = [centre - unit * np.array(lows), unit * np.array(highs) - centre]
        axes.errorbar(centre, places, xerr=bars, fmt="o", color=color, capsize=4, label="mean, 95% interval")
        if prefix == "value":
            searched = [unit * row["search_value"] for row in rows]
            axes.scatter(searched, places, facecolors="none", edgecolors="black", label="the search's value")
        percent = " (%)" if unit == 100 else ""
        axes.set(xlabel=f"{name}{percent}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    panels[0].set_yticks(places, labels)
    seeds = " ".join(map(str, rows[0]["seeds"]))
    figure.suptitle(f"confirmed on seeds {seeds}: ranked by {objective}, test accuracy reported only", y=1.08)
    return save_figure(figure, path)
