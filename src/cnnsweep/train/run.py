"""One training run: config -> objects -> epochs -> artifacts -> objective.

`train(cfg, run_dir)` is what `python train.py` calls for each run and each sweep trial.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.optim.swa_utils import AveragedModel

import cnnsweep
from cnnsweep.artifacts import RunFolder, RunStatus
from cnnsweep.errors import UserError, make
from cnnsweep.files import BEST_CHECKPOINT, LAST_CHECKPOINT
from cnnsweep.objectives import N_PARAMS, TRAIN_SECONDS, checkpoint_metric, is_better, resolve_objectives
from cnnsweep.schema import ConfigOptions
from cnnsweep.train.compiling import note_compiled
from cnnsweep.train.data import ImageData, n_batches
from cnnsweep.train.loop import Augmentation, Diverged, EpochRecord, Trainer
from cnnsweep.train.machine import machine_facts
from cnnsweep.train.model import OverBudget, build_model, check_budget, check_outputs, count_parameters
from cnnsweep.train.signals import StopRequests, stop_requests

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "optuna", "numpy")


class Reporter(Protocol):
    """Receives the objective after every epoch; may stop the run by raising (e.g. an Optuna prune)."""

    def report(self, epoch: int, value: float, last: bool) -> None: ...


def train(
    cfg: DictConfig,
    run_dir: Path,
    reporter: Reporter | None = None,
    resume: bool = False,
    options: ConfigOptions | None = None,
) -> float | list[float]:
    """Train the configured model, write the run's artifacts into run_dir, return the objective
    (a list of values, one per objective, when `cfg.objective` names several).

    With resume, continue from run_dir's last checkpoint (its epoch, weights, optimizer and
    scheduler state, random number generators and data order). summary.json records how the
    run ended (completed, over_budget, pruned, diverged, failed, interrupted) whatever happens
    once the model is built. SIGINT/SIGTERM stop it after the current batch (Interrupted).
    options: where the model group's options are found, to name those that fit in a budget refusal.
    """
    clock = Clock()
    objectives = resolve_objectives(cfg.objective, cfg.data.val_size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    check_outputs(
        model, cfg.model.get("_target_", "?"), cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes
    )
    n_params = count_parameters(model)
    folder = RunFolder(run_dir)
    summary = base_summary(cfg, objectives, n_params)
    with record_outcome(folder, summary, clock), stop_requests() as stop:
        try:
            check_budget(n_params, cfg.budget.max_params)
        except OverBudget as error:
            fitting = models_that_fit(cfg.data, error.max_params, options) if options is not None else []
            raise OverBudget(n_params, error.max_params, fitting) from None
        _fit(cfg, model, objectives, folder, summary, clock, reporter, resume, stop)
    values = summary["objectives"]
    said = ", ".join(
        f"{name} = {value:.4f}" if isinstance(value, float) else f"{name} = {value:,}" for name, value in values.items()
    )
    log.info(f"done in {summary['wall_time_s']:.0f} s: {said}; run folder {run_dir}")
    return summary["objective_value"] if len(values) == 1 else list(values.values())


def models_that_fit(data: DictConfig, max_params: int, options: ConfigOptions) -> list[tuple[str, int]]:
    """Each option of the model group (where Hydra finds them: conf/model, a --config-dir's model/) built
    for `data`'s shape, with its parameter count, where it fits the budget."""
    fitting = []
    own_data = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
    for name in options.names("model"):
        try:
            composed = options.compose([f"model={name}"])
            composed.data = own_data  # the option's network follows this run's data
            n_params = count_parameters(build_model(composed.model))
        except (UserError, HydraException, OmegaConfBaseException):  # not buildable for this data: not offered
            continue
        if n_params <= max_params:
            fitting.append((name, n_params))
    return fitting


class Clock:
    """Wall time of a run, carried over from the invocations it was resumed from."""

    def __init__(self) -> None:
        self.started = time.time()
        self.earlier_s = 0.0  # time spent before the last resume

    def elapsed(self) -> float:
        return self.earlier_s + time.time() - self.started


@contextmanager
def record_outcome(folder: RunFolder, summary: dict[str, Any], clock: Clock) -> Iterator[None]:
    """Write summary.json with the run's final status, also when the run stops with an error."""
    try:
        yield
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        status = RunStatus.INTERRUPTED if interrupted else getattr(error, "run_status", RunStatus.FAILED)
        summary.update(status=status, error=f"{type(error).__name__}: {error}")
        if isinstance(error, Diverged):
            summary["diverged_at"] = {"epoch": error.epoch, "batch": error.batch, "loss": str(error.loss)}
        raise
    else:
        summary["status"] = RunStatus.COMPLETED
    finally:
        summary["wall_time_s"] = clock.elapsed()
        folder.write_summary(summary)


def _fit(
    cfg: DictConfig,
    model: torch.nn.Module,
    objectives: list[str],
    folder: RunFolder,
    summary: dict[str, Any],
    clock: Clock,
    reporter: Reporter | None,
    resume: bool,
    stop: StopRequests,
) -> None:
    parts = build(cfg, model)
    trainer, data, optimizer = parts.trainer, parts.data, parts.optimizer
    machine = machine_facts(trainer.device)
    summary.update(device=str(trainer.device), device_name=machine["gpu"] or machine["cpu"], machine=machine)
    said = ", ".join(objectives)
    log.info(f"model: {summary['n_params']:,} parameters; device: {trainer.device}; objective: {said}")
    metric = checkpoint_metric(objectives, cfg.data.val_size)  # picks best.pt

    splits = data.load(trainer.device)
    n_val = len(splits.val) if splits.val else 0
    log.info(
        f"data: {len(splits.train):,} train, {n_val:,} val, {len(splits.test):,} test images "
        f"({data.describe()}) from {data.root}"
    )
    scheduler = build_scheduler(cfg, optimizer, trainer.epochs, n_batches(len(splits.train), data.batch_size))
    generator = torch.Generator(device=trainer.device).manual_seed(cfg.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    history: list[EpochRecord] = []
    if resume:
        history = restore(folder, parts, scheduler, generator, summary, clock)
    first_epoch = len(history) + 1  # of this invocation
    precision = pin_precision(trainer, summary)
    if trainer.precision_choice.warning is not None:
        log.warning(trainer.precision_choice.warning)
    log.info(f"precision: {precision['precision']} ({precision['reason']})")
    began = summary.get("compile")  # a resumed run's choice, from its checkpoint
    setting = trainer.compile if began is None else began["compiled"]  # resumed: trains as it began
    epochs_left = trainer.epochs - len(history)
    forward, compiling = trainer.compiled(model, splits.train, data.batch_size, epochs_left, setting)
    reason = compiling.reason if began is None else as_before(began["reason"])
    summary["compile"] = {"compiled": compiling.compile, "reason": reason}
    log.info(f"compile: {'on' if compiling.compile else 'off'} ({reason})")

    def on_epoch_end(record: EpochRecord) -> None:
        history.append(record)
        log.info(format_epoch(record, trainer.epochs))
        folder.write_metrics(history)
        better = is_better(metric, record[metric], summary.get("best_checkpoint_value"))
        if better:
            summary.update(best_checkpoint_epoch=record["epoch"], best_checkpoint_value=record[metric])
        summary.update(summarize(history, objectives, summary["n_params"]), wall_time_s=clock.elapsed())
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": record["epoch"],
            "metrics": record,
            "history": list(history),
            "config": resolved,
            "rng": rng_state(generator),
            "best": {key: summary[key] for key in ("best_checkpoint_epoch", "best_checkpoint_value")},
            "compile": summary["compile"],
            "precision": precision,
            "wall_time_s": clock.elapsed(),
        }
        if parts.ema is not None:  # the weights that were evaluated; evaluate.py loads these
            state["ema"] = parts.ema.state_dict()
        if better:  # best before last: a kill in between leaves last.pt behind, never ahead of best.pt
            folder.save_checkpoint(BEST_CHECKPOINT, state)
        folder.save_checkpoint(LAST_CHECKPOINT, state)
        folder.write_summary(summary)
        if compiling.compile and record["epoch"] == first_epoch:
            note_compiled(compiling.key)  # the next run of these graphs starts warm
        if reporter is not None:
            value = summary["objective_value"]  # the first objective: Optuna prunes single-objective trials only
            reporter.report(record["epoch"], value, last=record["epoch"] == trainer.epochs)

    trainer.fit(
        model, forward, optimizer, scheduler, data, splits, parts.augmentation, generator, on_epoch_end,
        start_epoch=first_epoch, check_stop=stop.check, ema=parts.ema,
    )  # fmt: skip


def pin_precision(trainer: Trainer, summary: dict[str, Any]) -> dict[str, str]:
    """The precision the run trains in, and why: a resumed run's from its checkpoint (in
    summary["precision"]; `auto` may decide otherwise on another machine), else the trainer's
    choice. Recorded in summary["precision"]."""
    began = summary.get("precision")
    if began is None:
        chosen = {"precision": trainer.precision, "reason": trainer.precision_choice.reason}
    else:
        trainer.precision = began["precision"]
        chosen = {"precision": began["precision"], "reason": as_before(began["reason"])}
    summary["precision"] = chosen
    return chosen


def as_before(reason: str) -> str:
    """A resumed run's reason for a choice it keeps from its first invocation (said once, however
    often the run was resumed)."""
    said = "as before the resume: "
    return reason if reason.startswith(said) else said + reason


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random number generator a run draws from (weights, dropout, data order, augmentation)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generator": generator.get_state(),
    }


def restore(
    folder: RunFolder,
    parts: Parts,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    summary: dict[str, Any],
    clock: Clock,
) -> list[EpochRecord]:
    """Load the run's last checkpoint into the run's objects; returns the epochs it already ran."""
    for stale in folder.path.rglob(".*.tmp"):
        stale.unlink()  # a write cut short by the kill; the file it was replacing is intact
    path = folder.checkpoint(LAST_CHECKPOINT)
    if not path.is_file():
        log.info(f"resume: {folder.path} has no checkpoint yet, starting from the first epoch")
        return []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} cannot be read ({error}); the run cannot be resumed from it") from error
    try:
        parts.model.load_state_dict(state["model"])
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise UserError(f"{path} does not match the model in the run's config: {details}") from error
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.ema is not None:
        if "ema" not in state:
            raise UserError(f"{path} holds no weight average but the run's config sets trainer.ema_decay")
        parts.ema.load_state_dict(state["ema"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    generator.set_state(state["rng"]["generator"])
    summary.update(state["best"])
    for choice in ("compile", "precision"):  # older checkpoints have none: the config decides, as it did then
        if choice in state:
            summary[choice] = state[choice]
    clock.earlier_s = state["wall_time_s"]
    history = list(state["history"])
    folder.write_metrics(history)  # drop any row written after this checkpoint
    objectives = list(summary["objectives"])
    summary.update(summarize(history, objectives, summary["n_params"]), resumed_after_epoch=state["epoch"])
    log.info(f"resume: continuing {folder.path} after epoch {state['epoch']}")
    return history


@dataclass
class Parts:
    """The objects a run is made of, built from its config; the data is not read yet."""

    model: torch.nn.Module
    trainer: Trainer
    data: ImageData
    augmentation: Augmentation
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None  # the moving average of the weights that is evaluated, if configured


def build(cfg: DictConfig, model: torch.nn.Module) -> Parts:
    """Instantiate trainer, data, augmentation and optimizer for `model` (already built from cfg.model)."""
    trainer = make(cfg.trainer)
    data = make(cfg.data)
    augmentation = make(cfg.augmentation)
    trainer.setup(model)  # before the optimizer, so its state lives where the parameters do
    lr = cfg.optimizer.get("lr")
    if lr is not None and lr <= 0:
        raise UserError(f"optimizer.lr={lr} must be positive")
    try:
        optimizer = make(cfg.optimizer, _convert_="all")(params=model.parameters())
    except ValueError as error:  # torch's own checks (momentum, betas, weight decay, ...)
        raise UserError(f"optimizer ({cfg.optimizer._target_}): {error}; check the optimizer.* settings") from error
    return Parts(model, trainer, data, augmentation, optimizer, trainer.averaged(model))


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return make(cfg.scheduler)(optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)


def base_summary(cfg: DictConfig, objectives: list[str], n_params: int) -> dict[str, Any]:
    """The summary before the first epoch. `objective` and `objective_value` are the first objective's;
    `objectives` maps each objective to its value."""
    return {
        "status": RunStatus.RUNNING,
        "n_params": n_params,
        "epochs": cfg.trainer.epochs,
        "epochs_run": 0,
        "objective": objectives[0],
        "objective_value": None,
        "objectives": {name: None for name in objectives},
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "versions": versions(),
    }


def summarize(history: list[EpochRecord], objectives: list[str], n_params: int) -> dict[str, Any]:
    """Final and best value (with its epoch) of each accuracy, and each objective's final value."""
    final = history[-1]
    facts = {N_PARAMS: n_params, TRAIN_SECONDS: sum(record["seconds"] for record in history)}
    values = {name: facts[name] if name in facts else final[name] for name in objectives}
    summary: dict[str, Any] = {
        "epochs_run": len(history),
        "objective_value": values[objectives[0]],
        "objectives": values,
    }
    for metric in ("train_loss", "val_acc", "test_acc", "val_loss", "test_loss"):
        if metric not in final:
            continue
        summary[f"final_{metric}"] = final[metric]
        if metric.endswith("_acc"):
            best = max(history, key=lambda record: record[metric])
            summary[f"best_{metric}"] = best[metric]
            summary[f"best_{metric}_epoch"] = best["epoch"]
    return summary


def format_epoch(record: EpochRecord, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.6g}"]
    for split in ("train", "val", "test"):
        if f"{split}_loss" in record:
            parts.append(f"{split} loss {record[f'{split}_loss']:.4f} acc {100 * record[f'{split}_acc']:.2f}%")
    parts.append(f"{record['seconds']:.1f} s, {record['images_per_s']:,.0f} img/s")
    return " | ".join(parts)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cnnsweep": cnnsweep.__version__}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    """Commit of the cnnsweep source that ran (with '-dirty' for uncommitted changes), if in git."""
    source = Path(cnnsweep.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
