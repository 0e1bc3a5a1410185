"""Evaluate a run's checkpoint on the test set: `cnnsweep evaluate RUN_FOLDER|CHECKPOINT`.

Rebuilds the model from the run's saved config (.hydra/config.yaml; for a bare checkpoint file, the
config stored in it), loads the checkpoint (best.pt unless told otherwise) and evaluates it with the
run's own evaluation pass (cnnsweep.train.loop's Trainer: the checkpoint's precision, the config's
memory layouts), so that it reproduces the figures the run recorded. Reports test loss and
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
from cnnsweep.artifacts import write_json
from cnnsweep.errors import UserError, make
from cnnsweep.files import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE
from cnnsweep.records import Checkpoint, RunFolder, load_weights
from cnnsweep.renames import current_names
from cnnsweep.train.loop import Trainer, eval_preparer, resolve_device, scores
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


def load_model(checkpoint: Checkpoint, config: dict[str, Any], path: Path, source: str) -> torch.nn.Module:
    """The model the config describes, with the checkpoint's evaluated weights (the moving average
    when the run kept one); refuses a mismatch."""
    model = build_model(config["model"])
    load_weights(model, checkpoint.evaluated_weights(), path, source)
    return model


def evaluate_checkpoint(
    target: Path, which: str = BEST_CHECKPOINT, data_root: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate and write the evaluation files; returns what evaluation.json holds."""
    folder, checkpoint_path = locate(target, which)
    checkpoint = Checkpoint.load(checkpoint_path, "it cannot be evaluated")
    saved = folder.read_config()
    config_source = str(folder.hydra / CONFIG_FILE) if saved else f"the config stored in {checkpoint_path}"
    # a run from before the package's split names its classes by their old paths
    config = current_names(OmegaConf.to_container(OmegaConf.create(saved or checkpoint.config), resolve=True))
    model = load_model(checkpoint, config, checkpoint_path, config_source)

    if data_root is not None:
        config["data"]["root"] = data_root
    config["data"]["val_size"] = 0  # only the test set is read
    data = make(config["data"])
    trainer = evaluator(config, checkpoint, device)
    test = data.load(trainer.device).test
    trainer.setup(model)  # the device and memory layout the run trained in
    logits = trainer.predict(trainer.eval_model(model), test, data.eval_batch_size, eval_preparer(data))
    predicted = logits.argmax(1)
    results = summarize_predictions(logits, test.labels)
    results |= {
        "checkpoint": str(checkpoint_path),
        "epoch": checkpoint.epoch,
        "recorded_test_acc": (checkpoint.metrics or {}).get("test_acc"),
        "precision": trainer.precision,
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


def evaluator(config: dict[str, Any], checkpoint: Checkpoint, device: str) -> Trainer:
    """A Trainer that evaluates on `device` as the run's did after each epoch: in the precision its
    checkpoint records and the memory layouts its config sets (null: the device's default). In bf16
    another layout may round differently and flip a borderline prediction."""
    settings = config.get("trainer") or {}
    return Trainer(
        epochs=1,
        device=device,
        progress=False,
        channels_last=settings.get("channels_last"),
        eval_channels_last=settings.get("eval_channels_last"),
        compile=False,  # evaluation stays eager in compiled runs too (Trainer.eval_model)
        precision=trained_precision(checkpoint, resolve_device(device)),
        threads=None,
        label_smoothing=0.0,  # the rest is training's, unused here
        ema_decay=None,
    )


def trained_precision(checkpoint: Checkpoint, device: torch.device) -> str:
    """The precision the run evaluated in while training (its checkpoint says; older ones: fp32), so
    that the recorded accuracy is reproduced; fp16 autocast exists on CUDA only, elsewhere fp32."""
    precision = (checkpoint.precision or {}).get("precision", "fp32")
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def summarize_predictions(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    predicted = logits.argmax(1)
    n_classes = logits.shape[1]
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels.cpu(), predicted.cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1)).tolist()
    test_loss, test_acc = scores(logits, labels)  # as each epoch of the run scores its evaluation pass
    return {
        "n_images": len(labels),
        "test_loss": test_loss,
        "test_acc": test_acc,
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
