"""One training run, top to bottom: config -> parts -> (resume) -> speed choices -> epochs -> run folder -> objective.

`train(cfg, run_dir)` is what `python train.py` calls for each run and each sweep trial. It reads as the
run's story: build the parts and read the data; restore an interrupted run from its last checkpoint;
choose precision and compiling; then `for epoch: train; evaluate; record`. The loop's parts (steps,
evaluation passes, the Trainer's speed settings) are cnnsweep.train.loop's; the records it writes
(metrics.csv, checkpoints, summary.json) are cnnsweep.records'.
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
from cnnsweep.errors import UserError, make
from cnnsweep.files import BEST_CHECKPOINT, LAST_CHECKPOINT
from cnnsweep.objectives import (
    MAXIMIZE,
    N_PARAMS,
    TRAIN_SECONDS,
    checkpoint_metric,
    direction_of,
    is_better,
    resolve_objectives,
)
from cnnsweep.records import Checkpoint, RunFolder, RunStatus, Summary, load_weights
from cnnsweep.schema import ConfigOptions
from cnnsweep.track import Loggers, RunInfo, SweepInfo, build_loggers
from cnnsweep.train.compiling import note_compiled
from cnnsweep.train.data import ImageData, Split, Splits, n_batches, shuffled_batches
from cnnsweep.train.loop import CHECK_EVERY, Augmentation, Diverged, EpochRecord, Trainer, preparers, train_epoch
from cnnsweep.train.machine import machine_facts
from cnnsweep.train.model import OverBudget, build_model, check_budget, check_outputs, count_parameters, model_size
from cnnsweep.train.signals import stop_requests

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
    place: SweepInfo | None = None,
) -> float | list[float]:
    """Train the configured model, write the run's records into run_dir, return the objective
    (a list of values, one per objective, when `cfg.objective` names several).

    With resume, continue from run_dir's last checkpoint (its epoch, weights, optimizer and
    scheduler state, random number generators and data order). summary.json records how the
    run ended (a RunStatus) whatever happens once the model is built. SIGINT/SIGTERM stop it after
    the current batch (Interrupted).
    options: where the model group's options are found, to name those that fit in a budget refusal.
    place: the sweep trial this run is, for the experiment trackers (cfg.logger) that group trials.
    """
    clock = Clock()
    objectives = resolve_objectives(cfg.objective, cfg.data.val_size)
    seed = cfg.seed  # weights, dropout, data order and augmentation: recorded in the summary, read from it
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    check_outputs(
        model, cfg.model.get("_target_", "?"), cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes
    )
    folder = RunFolder(run_dir)
    summary = new_summary(cfg, objectives, count_parameters(model), seed)
    loggers = build_loggers(cfg.get("logger"))  # a failing tracker is switched off with one warning
    with record_outcome(folder, summary, clock, loggers), stop_requests() as stop:
        check_budget_offering(summary.n_params, cfg, options)

        # The parts and the data
        parts = build(cfg, model)
        trainer, data, optimizer = parts.trainer, parts.data, parts.optimizer
        describe_machine(trainer, summary, objectives)
        splits, steps_per_epoch, scheduler, generator = data_and_schedule(cfg, parts)

        # A resumed run continues after its last checkpoint: its objects' states, its epochs so far, its
        # best epoch, its wall time, and (below) the precision and compiling it began with
        began = restore(folder, parts, scheduler, generator) if resume else None
        history: list[EpochRecord] = [] if began is None else list(began.history)
        if began is not None:
            summary.best = began.best
            summary.resumed_after_epoch = began.epoch
            clock.earlier_s = began.wall_time_s
            record_epochs(summary, history, objectives)
        first_epoch = len(history) + 1  # of this invocation
        config = OmegaConf.to_container(cfg, resolve=True)  # interpolations resolved: checkpoints and trackers keep it
        start_trackers(loggers, folder, config, summary.n_params, resume, place, history)

        # Speed: precision first (the compiled graphs depend on it), then compiling; a resumed run keeps both
        summary.precision = choose_precision(trainer, began)
        trainer.precision = summary.precision["precision"]  # before any step, graph or evaluation uses it
        epochs_left = trainer.epochs - len(history)
        forward, summary.compile, warm_graphs = choose_compiling(
            trainer, model, splits.train, data.batch_size, epochs_left, began
        )
        prepare_train, prepare_eval = preparers(data, parts.augmentation, generator)
        step = trainer.train_step(model, forward, optimizer, scheduler, prepare_train, data.batch_size, parts.ema)
        check_every = 1 if trainer.device.type == "cpu" else CHECK_EVERY  # on a CPU a read costs nothing
        metric = checkpoint_metric(objectives, cfg.data.val_size)  # picks best.pt

        for epoch in range(first_epoch, trainer.epochs + 1):
            # Train one epoch
            start = time.perf_counter()
            record: EpochRecord = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            batches = shuffled_batches(splits.train, data.batch_size, generator)
            record |= train_epoch(step, batches, steps_per_epoch, epoch, trainer.progress, check_every, stop.check)
            train_seconds = time.perf_counter() - start

            # Evaluate: the weight average where the run keeps one, else the model
            evaluated = trainer.eval_model(model if parts.ema is None else parts.ema.module)
            for name, split in evaluated_splits(splits):
                loss, accuracy = trainer.evaluate(evaluated, split, data.eval_batch_size, prepare_eval)
                record[f"{name}_loss"], record[f"{name}_acc"] = loss, accuracy
            record["seconds"] = time.perf_counter() - start
            record["images_per_s"] = len(splits.train) / train_seconds

            # Record: the log line, metrics.csv, the checkpoints, summary.json, the trackers, the sweep
            history.append(record)
            log.info(format_epoch(record, trainer.epochs))
            folder.write_metrics(history)
            better = is_better(metric, record[metric], summary.best_checkpoint_value)
            if better:
                summary.best_checkpoint_epoch, summary.best_checkpoint_value = epoch, record[metric]
            record_epochs(summary, history, objectives)
            summary.wall_time_s = clock.elapsed()
            checkpoint = checkpoint_after(history, parts, scheduler, generator, config, summary)
            if better:  # best before last: a kill in between leaves last.pt behind, never ahead of best.pt
                checkpoint.save(folder.checkpoint(BEST_CHECKPOINT))
            checkpoint.save(folder.checkpoint(LAST_CHECKPOINT))
            folder.write_summary(summary)
            loggers.log_epoch(epoch, record)  # after its checkpoint: a resume never logs it twice
            if warm_graphs is not None and epoch == first_epoch:
                note_compiled(warm_graphs)  # the next run of these graphs starts warm
            if reporter is not None:  # the first objective: Optuna prunes single-objective trials only
                reporter.report(epoch, summary.objective_value, last=epoch == trainer.epochs)

    said = ", ".join(
        f"{name} = {value:.4f}" if isinstance(value, float) else f"{name} = {value:,}"
        for name, value in summary.objectives.items()
    )
    log.info(f"done in {summary.wall_time_s:.0f} s: {said}; run folder {run_dir}")
    values = list(summary.objectives.values())
    return values[0] if len(values) == 1 else values


def check_budget_offering(n_params: int, cfg: DictConfig, options: ConfigOptions | None) -> None:
    """check_budget, naming the model options that fit this run's data within the budget in its refusal."""
    try:
        check_budget(n_params, cfg.budget.max_params)
    except OverBudget as error:
        fitting = models_that_fit(cfg.data, error.max_params, options) if options is not None else []
        raise OverBudget(n_params, error.max_params, fitting) from None


def models_that_fit(data: DictConfig, max_params: int, options: ConfigOptions) -> list[tuple[str, int]]:
    """Each option of the model group (where Hydra finds them: conf/model, a --config-dir's model/) built
    for `data`'s shape, with its parameter count, where it fits the budget."""
    fitting = []
    own_data = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
    for name in options.names("model"):
        try:
            composed = options.compose([f"model={name}"])
            composed.data = own_data  # the option's network follows this run's data
            n_params = model_size(composed.model)
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
def record_outcome(folder: RunFolder, summary: Summary, clock: Clock, loggers: Loggers) -> Iterator[None]:
    """Write summary.json with the run's final status, also when the run stops with an error, and tell the
    trackers how it ended (after the file, so that they can upload it)."""
    try:
        yield
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        summary.status = RunStatus.INTERRUPTED if interrupted else getattr(error, "run_status", RunStatus.FAILED)
        summary.error = f"{type(error).__name__}: {error}"
        if isinstance(error, Diverged):
            summary.diverged_at = {"epoch": error.epoch, "batch": error.batch, "loss": str(error.loss)}
        raise
    else:
        summary.status = RunStatus.COMPLETED
    finally:
        summary.wall_time_s = clock.elapsed()
        folder.write_summary(summary)
        loggers.end(str(summary.status), summary.to_json())


def start_trackers(
    loggers: Loggers,
    folder: RunFolder,
    config: dict[str, Any],
    n_params: int,
    resume: bool,
    place: SweepInfo | None,
    history: list[EpochRecord],
) -> None:
    """Tell the trackers the run starts (a resumed one continues its tracker runs) and replay the epochs
    restored from the checkpoint (each tracker skips those it already holds)."""
    name = f"{folder.path.parent.name}/{folder.path.name}"
    loggers.start(RunInfo(folder.path, config, n_params, name, resumed=resume, sweep=place))
    for record in history:
        loggers.log_epoch(record["epoch"], record)


def describe_machine(trainer: Trainer, summary: Summary, objectives: list[str]) -> None:
    machine = machine_facts(trainer.device)
    summary.device, summary.device_name, summary.machine = (
        str(trainer.device),
        machine["gpu"] or machine["cpu"],
        machine,
    )
    said = ", ".join(objectives)
    log.info(f"model: {summary.n_params:,} parameters; device: {trainer.device}; objective: {said}")


def load_data(data: ImageData, device: torch.device) -> Splits:
    splits = data.load(device)
    n_val = len(splits.val) if splits.val else 0
    log.info(
        f"data: {len(splits.train):,} train, {n_val:,} val, {len(splits.test):,} test images "
        f"({data.describe()}) from {data.root}"
    )
    return splits


def choose_precision(trainer: Trainer, began: Checkpoint | None) -> dict[str, str]:
    """The precision the run trains in, and why, as summary.json records it: a resumed run's own (from
    its checkpoint: `auto` may decide otherwise on another machine), else the trainer's choice."""
    chosen = trainer.precision_choice
    if chosen.warning is not None:
        log.warning(chosen.warning)
    kept = None if began is None else began.precision  # older checkpoints have none: the config decides
    if kept is None:
        precision = {"precision": chosen.precision, "reason": chosen.reason}
    else:
        precision = {"precision": kept["precision"], "reason": as_before(kept["reason"])}
    log.info(f"precision: {precision['precision']} ({precision['reason']})")
    return precision


def choose_compiling(
    trainer: Trainer,
    model: torch.nn.Module,
    train: Split,
    batch_size: int,
    epochs_left: int,
    began: Checkpoint | None,
) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """The module training steps call for `epochs_left` more epochs in batches of `batch_size`; whether it is
    compiled and why, as summary.json records it; and the compiled graphs' cache key (None: eager). A resumed
    run trains as it began."""
    kept = None if began is None else began.compile  # older checkpoints have none: the config decides
    setting = trainer.compile if kept is None else kept["compiled"]
    forward, choice = trainer.compiled(model, train, batch_size, epochs_left, setting)
    reason = choice.reason if kept is None else as_before(kept["reason"])
    log.info(f"compile: {'on' if choice.compile else 'off'} ({reason})")
    return forward, {"compiled": choice.compile, "reason": reason}, choice.key if choice.compile else None


def as_before(reason: str) -> str:
    """A resumed run's reason for a choice it keeps from its first invocation (said once, however
    often the run was resumed)."""
    said = "as before the resume: "
    return reason if reason.startswith(said) else said + reason


def evaluated_splits(splits: Splits) -> list[tuple[str, Split]]:
    """The splits each epoch is evaluated on, by the name metrics.csv gives them: val (when held out), then test."""
    return [(name, split) for name, split in (("val", splits.val), ("test", splits.test)) if split is not None]


def checkpoint_after(
    history: list[EpochRecord],
    parts: Parts,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    config: dict[str, Any],
    summary: Summary,
) -> Checkpoint:
    """Everything a resume needs to continue after the latest epoch of `history` (see restore)."""
    return Checkpoint(
        model=parts.model.state_dict(),
        optimizer=parts.optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=history[-1]["epoch"],
        metrics=history[-1],
        history=list(history),
        config=config,
        rng=rng_state(generator),
        best=summary.best,
        compile=summary.compile,
        precision=summary.precision,
        wall_time_s=summary.wall_time_s,
        ema=None if parts.ema is None else parts.ema.state_dict(),  # the weights evaluated; evaluate loads these
    )


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random number generator a run draws from (weights, dropout, data order, augmentation)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generator": generator.get_state(),
    }


def restore(
    folder: RunFolder, parts: Parts, scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator
) -> Checkpoint | None:
    """Load the run's last checkpoint into the run's objects and cut metrics.csv back to it; returns what it
    read (None: the run had no checkpoint yet and starts from the first epoch)."""
    for stale in folder.path.rglob(".*.tmp"):
        stale.unlink()  # a write cut short by the kill; the file it was replacing is intact
    path = folder.checkpoint(LAST_CHECKPOINT)
    if not path.is_file():
        log.info(f"resume: {folder.path} has no checkpoint yet, starting from the first epoch")
        return None
    began = Checkpoint.load(path, "the run cannot be resumed from it")
    load_weights(parts.model, began.model, path, "the run's config")
    parts.optimizer.load_state_dict(began.optimizer)
    if parts.ema is not None:
        if began.ema is None:
            raise UserError(f"{path} holds no weight average but the run's config sets trainer.ema_decay")
        parts.ema.load_state_dict(began.ema)
    scheduler.load_state_dict(began.scheduler)
    torch.set_rng_state(began.rng["torch"])
    if began.rng["cuda"]:
        torch.cuda.set_rng_state_all(began.rng["cuda"])
    generator.set_state(began.rng["generator"])
    folder.write_metrics(began.history)  # drop any row written after this checkpoint
    log.info(f"resume: continuing {folder.path} after epoch {began.epoch}")
    return began


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


def data_and_schedule(
    cfg: DictConfig, parts: Parts
) -> tuple[Splits, int, torch.optim.lr_scheduler.LRScheduler, torch.Generator]:
    """What a run reads and plans once its parts are built (train, and cnnsweep bench timing its steps): its
    data on the trainer's device, its steps per epoch, the learning-rate schedule over its epochs, and the
    generator of its data order and augmentation, seeded by cfg.seed."""
    trainer, data = parts.trainer, parts.data
    splits = load_data(data, trainer.device)
    steps_per_epoch = n_batches(len(splits.train), data.batch_size)
    scheduler = make(cfg.scheduler)(parts.optimizer, epochs=trainer.epochs, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator(device=trainer.device).manual_seed(cfg.seed)
    return splits, steps_per_epoch, scheduler, generator


def new_summary(cfg: DictConfig, objectives: list[str], n_params: int, seed: int) -> Summary:
    """The summary before the first epoch."""
    return Summary(
        n_params=n_params,
        epochs=cfg.trainer.epochs,
        objectives=dict.fromkeys(objectives),
        seed=seed,
        git_commit=git_commit(),
        versions=versions(),
    )


def record_epochs(summary: Summary, history: list[EpochRecord], objectives: list[str]) -> None:
    """Each objective's value after the latest epoch, and the final and best (with its epoch) value of each metric."""
    final = history[-1]
    facts = {N_PARAMS: summary.n_params, TRAIN_SECONDS: sum(record["seconds"] for record in history)}
    summary.epochs_run = len(history)
    summary.objectives = {name: facts[name] if name in facts else final[name] for name in objectives}
    for metric in ("train_loss", "val_acc", "test_acc", "val_loss", "test_loss"):
        if metric not in final:
            continue
        summary.figures[f"final_{metric}"] = final[metric]
        if direction_of(metric) == MAXIMIZE:
            best = max(history, key=lambda record: record[metric])
            summary.figures[f"best_{metric}"] = best[metric]
            summary.figures[f"best_{metric}_epoch"] = best["epoch"]


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
