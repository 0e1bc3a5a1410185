"""Evaluate a run's checkpoint on the test set: `cnnsweep evaluate RUN_FOLDER|CHECKPOINT`.

Rebuilds the model from the run's saved config (.hydra/config.yaml; for a bare checkpoint file, the
config stored in it), loads the checkpoint (best.pt unless told otherwise) and reports test loss and
accuracy, per-class accuracy and the accuracy recorded at training time. Writes into
<run>/evaluation/: evaluation.json, confusion_matrix.png and misclassified.png (a grid of wrongly
classified test images with their true and predicted labels).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import cnnsweep.schema  # noqa: F401  (registers OmegaConf's resolvers used by saved configs)
from cnnsweep.artifacts import RunFolder, load_checkpoint, load_weights, write_json
from cnnsweep.errors import UserError, make
from cnnsweep.files import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE
from cnnsweep.renames import current_names
from cnnsweep.train.data import to_unit
from cnnsweep.train.loop import autocast, layout_setting, predict, resolve_device
from cnnsweep.train.model import build_model

EVALUATION_DIR = "evaluation"


def locate(target: Path, which: str) -> tuple[RunFolder, Path]:
    """The run folder and checkpoint file meant by a run folder or a checkpoint path."""
    if not target.exists():
        raise UserError(f"{target} does not exist; give a run folder or a checkpoint file (.pt)")
    if target.is_file():
        folder = RunFolder(target.parent.parent if target.parent.name == CHECKPOINT_DIR else target.parent)
        return folder, target
    folder = RunFolder(target)
    if not folder.is_run():
        raise UserError(f"{target} is not a run folder (no .hydra/ or summary.json in it)")
    checkpoint = folder.checkpoint(which)
    if not checkpoint.is_file():
        status = (folder.read_summary() or {}).get("status", "no summary.json")
        raise UserError(
            f"{checkpoint} does not exist (run status: {status}): the run was stopped before its first "
            "epoch ended, so it has no checkpoint"
        )
    return folder, checkpoint


def load_model(checkpoint: dict[str, Any], config: dict[str, Any], path: Path, source: str) -> torch.nn.Module:
    """The model the config describes, with the checkpoint's evaluated weights (the moving average
    when the run kept one); refuses a mismatch."""
    model = build_model(config["model"])
    weights = checkpoint["model"]
    if "ema" in checkpoint:  # AveragedModel's state: module.<name> for each weight, plus n_averaged
        weights = {
            name.removeprefix("module."): value for name, value in checkpoint["ema"].items() if name != "n_averaged"
        }
    load_weights(model, weights, path, source)
    return model


def evaluate_checkpoint(
    target: Path, which: str = BEST_CHECKPOINT, data_root: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate and write the evaluation files; returns what evaluation.json holds."""
    folder, checkpoint_path = locate(target, which)
    checkpoint = load_checkpoint(checkpoint_path, "it cannot be evaluated")
    saved = folder.read_config()
    config_source = str(folder.hydra / CONFIG_FILE) if saved else f"the config stored in {checkpoint_path}"
    # a run from before the package's split names its classes by their old paths
    config = current_names(OmegaConf.to_container(OmegaConf.create(saved or checkpoint["config"]), resolve=True))
    model = load_model(checkpoint, config, checkpoint_path, config_source)

    if data_root is not None:
        config["data"]["root"] = data_root
    config["data"]["val_size"] = 0  # only the test set is read
    data = make(config["data"])
    run_device = resolve_device(device)
    test = data.load(run_device).test
    model.to(run_device, memory_format=eval_layout(config, run_device))
    precision = trained_precision(checkpoint, run_device)
    with autocast(run_device, precision):
        logits = predict(model, test, data.eval_batch_size, lambda images: data.normalize(to_unit(images)))
    logits = logits.float()
    predicted = logits.argmax(1)
    results = summarize_predictions(logits, test.labels)
    results |= {
        "checkpoint": str(checkpoint_path),
        "epoch": checkpoint.get("epoch"),
        "recorded_test_acc": (checkpoint.get("metrics") or {}).get("test_acc"),
        "precision": precision,
        "config": config_source,
    }
    out = folder.path / EVALUATION_DIR
    write_json(out / "evaluation.json", results)
    from cnnsweep.tools import plots

    plots.confusion_matrix(results["confusion_matrix"], out / "confusion_matrix.png")
    wrong = (predicted != test.labels).nonzero().flatten()[:64].cpu()
    plots.image_grid(
        test.images[wrong].cpu(), test.labels[wrong].cpu(), predicted[wrong].cpu(), out / "misclassified.png"
    )
    results["files"] = [str(out / name) for name in ("evaluation.json", "confusion_matrix.png", "misclassified.png")]
    return results


def eval_layout(config: dict[str, Any], device: torch.device) -> torch.memory_format:
    """The memory layout the run evaluated in (trainer.eval_channels_last, null: the device's default):
    in bf16 another layout may round differently and flip a borderline prediction."""
    setting = (config.get("trainer") or {}).get("eval_channels_last")
    channels_last = layout_setting("eval_channels_last", setting, device)
    return torch.channels_last if channels_last else torch.preserve_format


def trained_precision(checkpoint: dict[str, Any], device: torch.device) -> str:
    """The precision the run evaluated in while training (its checkpoint says; older ones: fp32), so
    that the recorded accuracy is reproduced; fp16 autocast exists on CUDA only, elsewhere fp32."""
    precision = (checkpoint.get("precision") or {}).get("precision", "fp32")
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def summarize_predictions(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    predicted = logits.argmax(1)
    n_classes = logits.shape[1]
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels.cpu(), predicted.cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "n_images": len(labels),
        "test_loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "test_acc": (predicted == labels).double().mean().item(),
        "per_class_acc": {str(label): accuracy for label, accuracy in enumerate(per_class)},
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted class
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnsweep evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="a run folder, or a checkpoint file (.pt)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="for a run folder")
    parser.add_argument("--data-root", help="the data set's folder, as data.root (default: the run's data.root)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    try:
        results = evaluate_checkpoint(args.target, args.checkpoint, args.data_root, args.device)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    recorded = results["recorded_test_acc"]
    print(f"checkpoint {results['checkpoint']} (epoch {results['epoch']}), {results['n_images']:,} test images")
    print(f"test loss {results['test_loss']:.4f}, test accuracy {100 * results['test_acc']:.2f}%", end="")
    print(f" (recorded at training: {100 * recorded:.2f}%)" if recorded is not None else "")
    print("per-class accuracy: " + "  ".join(f"{d}: {100 * a:.2f}%" for d, a in results["per_class_acc"].items()))
    print("wrote " + ", ".join(results["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
