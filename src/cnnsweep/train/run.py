"""One training run: config -> objects -> epochs -> artifacts -> objective.

`train(cfg, run_dir)` is what `python train.py` calls for each run and each sweep trial.
"""

from __future__ import annotations

import functools
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
from cnnsweep.artifacts import RunFolder, RunStatus, Summary, load_checkpoint, load_weights
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
from cnnsweep.schema import ConfigOptions
from cnnsweep.track import Loggers, RunInfo, SweepInfo, build_loggers
from cnnsweep.train.compiling import CompileChoice, note_compiled
from cnnsweep.train.data import ImageData, Splits, n_batches
from cnnsweep.train.loop import Augmentation, Diverged, EpochRecord, Fit, Trainer
from cnnsweep.train.machine import machine_facts
from cnnsweep.train.model import OverBudget, build_model, check_budget, check_outputs, count_parameters, model_size
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
    place: SweepInfo | None = None,
) -> float | list[float]:
    """Train the configured model, write the run's artifacts into run_dir, return the objective
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
    loggers = build_loggers(cfg.get("logger"))
    with record_outcome(folder, summary, clock, loggers), stop_requests() as stop:
        check_budget_offering(summary.n_params, cfg, options)
        run = Run(cfg, model, objectives, folder, summary, clock, loggers)
        _fit(run, reporter, resume, stop, place)
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


@dataclass
class Run:
    """One run in progress: its config, model and objectives, and where and what it records."""

    cfg: DictConfig
    model: torch.nn.Module
    objectives: list[str]
    folder: RunFolder
    summary: Summary
    clock: Clock
    loggers: Loggers  # the experiment trackers (cfg.logger); a failing one is switched off with one warning

    @functools.cached_property
    def resolved(self) -> dict[str, Any]:
        """The config with its interpolations resolved: what checkpoints and trackers record."""
        return OmegaConf.to_container(self.cfg, resolve=True)


def _fit(run: Run, reporter: Reporter | None, resume: bool, stop: StopRequests, place: SweepInfo | None) -> None:
    """Build the run's parts, read its data, pick up a resumed run, choose precision and compiling, train."""
    cfg = run.cfg
    parts = build(cfg, run.model)
    trainer = parts.trainer
    describe_machine(trainer, run.summary, run.objectives)
    splits = load_data(parts.data, trainer.device)
    scheduler = build_scheduler(
        cfg, parts.optimizer, trainer.epochs, n_batches(len(splits.train), parts.data.batch_size)
    )
    generator = torch.Generator(device=trainer.device).manual_seed(run.summary.seed)
    history = restore(run, parts, scheduler, generator) if resume else []
    start_trackers(run, resume, place, history)
    first_epoch = len(history) + 1  # of this invocation
    precision = pin_precision(trainer, run.summary)
    if trainer.precision_choice.warning is not None:
        log.warning(trainer.precision_choice.warning)
    log.info(f"precision: {precision['precision']} ({precision['reason']})")
    forward, compiling = choose_compiling(trainer, run, splits, parts.data.batch_size, len(history))
    warm_graphs = compiling.key if compiling.compile else None
    recorder = EpochRecorder(run, parts, scheduler, generator, history, reporter, warm_graphs)
    job = Fit(
        run.model, forward, parts.optimizer, scheduler, parts.data, splits, parts.augmentation, generator,
        on_epoch_end=recorder, start_epoch=first_epoch, check_stop=stop.check, ema=parts.ema,
    )  # fmt: skip
    trainer.fit(job)


def start_trackers(run: Run, resume: bool, place: SweepInfo | None, history: list[EpochRecord]) -> None:
    """Tell the trackers the run starts (a resumed one continues its tracker runs) and replay the epochs
    restored from the checkpoint (each tracker skips those it already holds)."""
    folder = run.folder.path
    config = run.resolved
    name = f"{folder.parent.name}/{folder.name}"
    run.loggers.start(RunInfo(folder, config, run.summary.n_params, name, resumed=resume, sweep=place))
    for record in history:
        run.loggers.log_epoch(record["epoch"], record)


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


def choose_compiling(
    trainer: Trainer, run: Run, splits: Splits, batch_size: int, epochs_done: int
) -> tuple[torch.nn.Module, CompileChoice]:
    """The module training steps call, and whether it is compiled: a resumed run trains as it began."""
    began = run.summary.compile  # a resumed run's choice, from its checkpoint
    setting = trainer.compile if began is None else began["compiled"]
    forward, compiling = trainer.compiled(run.model, splits.train, batch_size, trainer.epochs - epochs_done, setting)
    reason = compiling.reason if began is None else as_before(began["reason"])
    run.summary.compile = {"compiled": compiling.compile, "reason": reason}
    log.info(f"compile: {'on' if compiling.compile else 'off'} ({reason})")
    return forward, compiling


class EpochRecorder:
    """What happens after each epoch: the log line, metrics.csv, the best and last checkpoints,
    summary.json, and the objective reported to the sweep (which may stop the run)."""

    def __init__(
        self,
        run: Run,
        parts: Parts,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
        history: list[EpochRecord],
        reporter: Reporter | None,
        warm_graphs: str | None,
    ) -> None:
        self.run, self.parts, self.scheduler, self.generator = run, parts, scheduler, generator
        self.history = history
        self.reporter = reporter
        self.metric = checkpoint_metric(run.objectives, run.cfg.data.val_size)  # picks best.pt
        self.config = run.resolved  # stored in each checkpoint
        self.first_epoch = len(history) + 1
        self.warm_graphs = warm_graphs  # the compiled graphs' cache key (None: eager), noted once compiled

    def __call__(self, record: EpochRecord) -> None:
        run, summary, epochs = self.run, self.run.summary, self.parts.trainer.epochs
        self.history.append(record)
        log.info(format_epoch(record, epochs))
        run.folder.write_metrics(self.history)
        better = is_better(self.metric, record[self.metric], summary.best_checkpoint_value)
        if better:
            summary.best_checkpoint_epoch, summary.best_checkpoint_value = record["epoch"], record[self.metric]
        record_epochs(summary, self.history, run.objectives)
        summary.wall_time_s = run.clock.elapsed()
        state = self.checkpoint(record)
        if better:  # best before last: a kill in between leaves last.pt behind, never ahead of best.pt
            run.folder.save_checkpoint(BEST_CHECKPOINT, state)
        run.folder.save_checkpoint(LAST_CHECKPOINT, state)
        run.folder.write_summary(summary)
        run.loggers.log_epoch(record["epoch"], record)  # after its checkpoint: a resume never logs it twice
        if self.warm_graphs is not None and record["epoch"] == self.first_epoch:
            note_compiled(self.warm_graphs)  # the next run of these graphs starts warm
        if self.reporter is not None:  # the first objective: Optuna prunes single-objective trials only
            self.reporter.report(record["epoch"], summary.objective_value, last=record["epoch"] == epochs)

    def checkpoint(self, record: EpochRecord) -> dict[str, Any]:
        """Everything a resume needs to continue after this epoch (see restore)."""
        summary, parts = self.run.summary, self.parts
        state = {
            "model": self.run.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": record["epoch"],
            "metrics": record,
            "history": list(self.history),
            "config": self.config,
            "rng": rng_state(self.generator),
            "best": {
                "best_checkpoint_epoch": summary.best_checkpoint_epoch,
                "best_checkpoint_value": summary.best_checkpoint_value,
            },
            "compile": summary.compile,
            "precision": summary.precision,
            "wall_time_s": self.run.clock.elapsed(),
        }
        if parts.ema is not None:  # the weights that were evaluated; evaluate.py loads these
            state["ema"] = parts.ema.state_dict()
        return state


def pin_precision(trainer: Trainer, summary: Summary) -> dict[str, str]:
    """The precision the run trains in, and why: a resumed run's from its checkpoint (in
    summary.precision; `auto` may decide otherwise on another machine), else the trainer's
    choice. Recorded in summary.precision."""
    began = summary.precision
    if began is None:
        chosen = {"precision": trainer.precision, "reason": trainer.precision_choice.reason}
    else:
        trainer.precision = began["precision"]
        chosen = {"precision": began["precision"], "reason": as_before(began["reason"])}
    summary.precision = chosen
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
    run: Run, parts: Parts, scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator
) -> list[EpochRecord]:
    """Load the run's last checkpoint into the run's objects; returns the epochs it already ran."""
    folder, summary = run.folder, run.summary
    for stale in folder.path.rglob(".*.tmp"):
        stale.unlink()  # a write cut short by the kill; the file it was replacing is intact
    path = folder.checkpoint(LAST_CHECKPOINT)
    if not path.is_file():
        log.info(f"resume: {folder.path} has no checkpoint yet, starting from the first epoch")
        return []
    state = load_checkpoint(path, "the run cannot be resumed from it")
    load_weights(parts.model, state["model"], path, "the run's config")
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
    summary.best_checkpoint_epoch = state["best"]["best_checkpoint_epoch"]
    summary.best_checkpoint_value = state["best"]["best_checkpoint_value"]
    # older checkpoints have no compile or precision: the config decides, as it did then
    summary.compile, summary.precision = state.get("compile"), state.get("precision")
    run.clock.earlier_s = state["wall_time_s"]
    history = list(state["history"])
    folder.write_metrics(history)  # drop any row written after this checkpoint
    record_epochs(summary, history, run.objectives)
    summary.resumed_after_epoch = state["epoch"]
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
