"""Training and evaluation throughput, side by side: `cnnsweep bench [OVERRIDES...]`.

Variants, measured in one process and interleaved round by round so that machine noise hits
them all alike:
- classic: the seed recipe as usually written: torchvision MNIST with per-sample
  RandomRotation / ToTensor / Normalize, a DataLoader with worker processes, the eager model
  with torch's own nn.Dropout;
- cnnsweep: the training path `python train.py` runs (the composed config, with any OVERRIDES given),
  built by the run's own functions (run_path) and stepped through its epoch loop and Trainer.train_step:
  compile, precision, memory layout and weight average as the run has them; from the in-memory dataset
  with batched augmentation;
- compute: the same model, optimizer and step as cnnsweep on one fixed, already prepared batch:
  the bound with no data work at all;
- any number of `--also NAME="OVERRIDES"`: cnnsweep variants with other settings.

Prints images/s for training and for evaluation (mean over rounds, with the range), the epoch
times they imply, and the ratios to the classic pipeline; `--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from cnnsweep.errors import make
from cnnsweep.records import RunStatus
from cnnsweep.schema import compose_config
from cnnsweep.train.compiling import CACHE_ENV, CompileChoice
from cnnsweep.train.data import Split, Splits, n_batches, shuffled_batches
from cnnsweep.train.loop import preparers, train_epoch
from cnnsweep.train.machine import machine_facts, machine_label
from cnnsweep.train.model import Dropout, build_model
from cnnsweep.train.run import Parts, build, data_and_schedule

Prepare = Callable[[torch.Tensor], torch.Tensor]  # a uint8 batch -> the model's input (loop.preparers)


@dataclass
class Variant:
    """A way of training: `train(n)` runs n steps, `evaluate(n)` n evaluation batches; both return images."""

    name: str
    train: Callable[[int], int]
    evaluate: Callable[[int], int]
    epoch_images: tuple[int, int]  # training and test images in one epoch
    end_epoch: Callable[[], None] = lambda: None  # the classic pipeline steps its scheduler per epoch
    test_accuracy: Callable[[], float] | None = None
    compiled: bool = False  # trained through torch.compile
    warmup_s: float = 0.0
    train_rates: list[float] = field(default_factory=list)
    eval_rates: list[float] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Endless batches: a new epoch's iterator whenever one runs out."""
    while True:
        yield from make()


@dataclass
class RunPath:
    """A run's training objects, built by the functions `python train.py` builds them with
    (cnnsweep.train.run.train): the config's parts, its data, scheduler, data-order generator, the
    module its steps call (compiled or not) and its batch preparation (augmentation, normalisation)."""

    parts: Parts
    splits: Splits
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    forward: torch.nn.Module
    compiling: CompileChoice
    prepare_train: Prepare
    prepare_eval: Prepare


def run_path(cfg: DictConfig) -> RunPath:
    """What a fresh run builds before its first epoch, in the run's order and with its functions: so the
    step timed here is the run's, with its compile, precision, memory layout and weight average."""
    torch.manual_seed(cfg.seed)
    parts = build(cfg, build_model(cfg.model))  # Trainer.setup: threads, device, memory layout
    trainer, data = parts.trainer, parts.data
    splits, _, scheduler, generator = data_and_schedule(cfg, parts)
    forward, compiling = trainer.compiled(parts.model, splits.train, data.batch_size, trainer.epochs)
    prepare_train, prepare_eval = preparers(data, parts.augmentation, generator)
    return RunPath(parts, splits, scheduler, generator, forward, compiling, prepare_train, prepare_eval)


def cnnsweep_variant(name: str, overrides: Sequence[str], fixed_batch: bool = False) -> Variant:
    """The run's own path from the composed config (run_path), its batches through the epoch loop
    (train_epoch) and Trainer.train_step; with fixed_batch, steps on one batch prepared beforehand."""
    run = run_path(compose_config(overrides))
    parts, splits = run.parts, run.splits
    trainer, data = parts.trainer, parts.data
    if fixed_batch:
        first = next(shuffled_batches(splits.train, data.batch_size, run.generator))
        prepared = Split(run.prepare_train(first.images), first.labels)
        batches = cycle(lambda: iter([prepared]))
        prepare_train, prepare_eval = as_they_are, as_they_are
        eval_batch = run.prepare_eval(splits.test.images[: data.eval_batch_size])
    else:
        batches = cycle(lambda: shuffled_batches(splits.train, data.batch_size, run.generator))
        prepare_train, prepare_eval = run.prepare_train, run.prepare_eval
    step = trainer.train_step(
        parts.model, run.forward, parts.optimizer, run.scheduler, prepare_train, data.batch_size, parts.ema
    )

    def train(n: int) -> int:
        """n steps as an epoch of the run takes them (train_epoch: its loss bookkeeping and checks)."""
        taken = 0

        def counted() -> Iterator[Split]:
            nonlocal taken
            for batch in itertools.islice(batches, n):
                taken += len(batch.labels)
                yield batch

        train_epoch(step, counted(), n, epoch=1, progress=False)
        synchronize(trainer.device)
        return taken

    def evaluate(n: int) -> int:
        """n evaluation batches the way an epoch's evaluation runs them (Trainer.evaluate), on the weight
        average where the run evaluates that."""
        evaluated = trainer.eval_model(parts.model if parts.ema is None else parts.ema.module)
        if fixed_batch:
            inputs = Split(eval_batch.repeat(n, 1, 1, 1), splits.test.labels[:1].repeat(n * len(eval_batch)))
        else:
            count = min(n * data.eval_batch_size, len(splits.test))
            inputs = Split(splits.test.images[:count], splits.test.labels[:count])
        trainer.evaluate(evaluated, inputs, data.eval_batch_size, prepare_eval)
        synchronize(trainer.device)
        return len(inputs.labels)

    return Variant(name, train, evaluate, (len(splits.train), len(splits.test)), compiled=run.compiling.compile)


def as_they_are(images: torch.Tensor) -> torch.Tensor:
    """The compute variant's preparation: its batches are prepared once, beforehand."""
    return images


def classic_variant(overrides: Sequence[str], workers: int) -> Variant:
    """The usual pipeline: per-sample torchvision transforms in DataLoader workers, eager model."""
    from torchvision import datasets, transforms

    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    device = make(cfg.trainer).device
    model = with_torch_dropout(build_model(cfg.model)).to(device)
    optimizer = make(cfg.optimizer, _convert_="all")(params=model.parameters())
    dataset = getattr(datasets, cfg.data.dataset)  # MNIST, FashionMNIST or KMNIST: the files cnnsweep reads
    normalize = transforms.Normalize(list(cfg.data.mean), list(cfg.data.std))
    train_set = dataset(
        cfg.data.root,
        train=True,
        download=False,
        transform=transforms.Compose(
            [transforms.RandomRotation((-7.0, 7.0), fill=(0,)), transforms.ToTensor(), normalize]
        ),
    )
    test_set = dataset(
        cfg.data.root, train=False, download=False, transform=transforms.Compose([transforms.ToTensor(), normalize])
    )
    # the same images as cnnsweep's data.train_limit / test_limit keep (the first N)
    if cfg.data.train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(cfg.data.train_limit, len(train_set))))
    if cfg.data.test_limit:
        test_set = torch.utils.data.Subset(test_set, range(min(cfg.data.test_limit, len(test_set))))
    loader_args = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.data.batch_size, shuffle=True, **loader_args)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.data.eval_batch_size, **loader_args)
    batches, eval_batches = cycle(lambda: iter(train_loader)), cycle(lambda: iter(test_loader))

    def train(n: int) -> int:
        model.train()
        images = 0
        for _ in range(n):
            inputs, labels = next(batches)
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            images += len(labels)
        synchronize(device)
        return images

    def evaluate(n: int) -> int:
        model.eval()
        images = 0
        with torch.no_grad():
            for _ in range(n):
                inputs, labels = next(eval_batches)
                model(inputs.to(device)).argmax(1)
                images += len(labels)
        synchronize(device)
        return images

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler.step_size, cfg.scheduler.gamma)

    def test_accuracy() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, labels in test_loader:
                correct += (model(inputs.to(device)).argmax(1) == labels.to(device)).sum().item()
        return correct / len(test_set)

    epoch = (len(train_set), len(test_set))
    return Variant("classic", train, evaluate, epoch, end_epoch=scheduler.step, test_accuracy=test_accuracy)


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """The model as usually written: torch's nn.Dropout in place of cnnsweep's quicker one."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Dropout):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, torch.nn.Dropout(module.p))
    return model


def accuracy(
    names: Sequence[str],
    also: Sequence[tuple[str, list[str]]],
    overrides: Sequence[str],
    seeds: Sequence[int],
    workers: int,
) -> list[dict[str, Any]]:
    """Final test accuracy of whole training runs, per variant and seed (for `--accuracy`).

    classic trains with its DataLoader pipeline and per-epoch StepLR (the seed recipe's loop);
    cnnsweep and the --also variants (name, overrides) run cnnsweep.train.run.train exactly as
    `python train.py` does.
    """
    from cnnsweep.train.run import train

    plans = [(name, []) for name in names if name != "compute"]
    plans += list(also)
    rows = []
    for name, extra in plans:
        accuracies = []
        for seed in seeds:
            run_overrides = [*overrides, *extra, f"seed={seed}", "data.val_size=0", "objective=test_acc"]
            if name == "classic":
                variant = classic_variant(run_overrides, workers)
                cfg = compose_config(run_overrides)
                for _ in range(cfg.trainer.epochs):
                    variant.train(n_batches(variant.epoch_images[0], cfg.data.batch_size))
                    variant.end_epoch()
                accuracies.append(variant.test_accuracy())
            else:
                with tempfile.TemporaryDirectory() as run_dir:
                    accuracies.append(train(compose_config(run_overrides), Path(run_dir)))
            print(f"{name} seed {seed}: test accuracy {100 * accuracies[-1]:.2f}%", file=sys.stderr)
        spread = stdev(accuracies) if len(accuracies) > 1 else 0.0
        rows.append({"variant": name, "seeds": list(seeds), "test_acc": accuracies, "mean": mean(accuracies),
                     "std": spread})  # fmt: skip
    return rows


def timed(run: Callable[[int], int], n: int) -> float:
    """Images per second of run(n)."""
    start = time.perf_counter()
    images = run(n)
    return images / (time.perf_counter() - start)


def measure(variants: Sequence[Variant], batches: int, eval_batches: int, rounds: int, warmup: int) -> None:
    """Warm each variant up (timed: compile and worker start-up), then interleave the rounds."""
    for variant in variants:
        start = time.perf_counter()
        variant.train(warmup)
        variant.evaluate(1)
        variant.warmup_s = time.perf_counter() - start
    for round_number in range(rounds):
        for variant in variants if round_number % 2 == 0 else reversed(variants):  # alternate who goes first
            variant.train_rates.append(timed(variant.train, batches))
            variant.eval_rates.append(timed(variant.evaluate, eval_batches))


def results(variants: Sequence[Variant], machine: str) -> list[dict[str, Any]]:
    """One row per variant: its rates, epoch and warm-up times, ratios to the classic pipeline, and the
    machine (machine_label) they were measured on."""
    classic = next((v for v in variants if v.name == "classic"), None)
    rows = []
    for variant in variants:
        train_rate, eval_rate = mean(variant.train_rates), mean(variant.eval_rates)
        train_images, test_images = variant.epoch_images
        row = {
            "variant": variant.name,
            "train_images_per_s": train_rate,
            "train_range": [min(variant.train_rates), max(variant.train_rates)],
            "eval_images_per_s": eval_rate,
            "eval_range": [min(variant.eval_rates), max(variant.eval_rates)],
            "epoch_s": train_images / train_rate + test_images / eval_rate,
            "warmup_s": variant.warmup_s,
            "compiled": variant.compiled,
            "machine": machine,
        }
        if classic is not None:
            row["train_vs_classic"] = train_rate / mean(classic.train_rates)
            row["eval_vs_classic"] = eval_rate / mean(classic.eval_rates)
        rows.append(row)
    return rows


def logger_costs(config: Any, epoch_s: float, epochs: int = 20) -> list[dict[str, Any]]:
    """Each configured tracker's cost, timed on `epochs` epochs of the metrics a run logs: start (imports,
    the store), the median and worst log_epoch with the median's share of one measured epoch (`epoch_s`),
    and end (the artifact upload). In a temporary run folder; MLflow writes to a temporary SQLite store
    unless its tracking_uri or MLFLOW_TRACKING_URI names one."""
    from cnnsweep.track import RunInfo, build_loggers

    record = {"lr": 0.01, "train_loss": 0.1, "train_acc": 0.99, "val_loss": 0.05, "val_acc": 0.99,
              "test_loss": 0.05, "test_acc": 0.99, "seconds": epoch_s, "images_per_s": 1000.0}  # fmt: skip
    resolved = OmegaConf.to_container(config, resolve=True)
    resolved.pop("logger", None)
    rows = []
    for name, node in (config.logger or {}).items():
        with tempfile.TemporaryDirectory(prefix="bench-logger-") as folder:
            run_dir = Path(folder)
            if name == "mlflow" and node.get("tracking_uri") is None and "MLFLOW_TRACKING_URI" not in os.environ:
                node = OmegaConf.merge(node, {"tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}"})
            [logger] = build_loggers({name: node}).loggers  # not through Loggers' guard: a failure here is shown
            began = time.perf_counter()
            logger.start(RunInfo(run_dir, resolved, 0, "bench"))
            start_s = time.perf_counter() - began
            times = []
            for epoch in range(1, epochs + 1):
                began = time.perf_counter()
                logger.log_epoch(epoch, {"epoch": epoch, **record})
                times.append(time.perf_counter() - began)
            began = time.perf_counter()
            logger.end(str(RunStatus.COMPLETED), {"objectives": {"val_acc": 0.99}, "epochs_run": epochs})
            end_s = time.perf_counter() - began
        median = sorted(times)[len(times) // 2]
        rows.append({"logger": name, "start_s": start_s, "log_epoch_ms": 1000 * median,
                     "log_epoch_max_ms": 1000 * max(times), "share_of_epoch": median / epoch_s,
                     "end_s": end_s})  # fmt: skip
    return rows


def named(specs: Sequence[str], parser: argparse.ArgumentParser, flag: str) -> list[tuple[str, list[str]]]:
    """NAME="OVERRIDES" arguments as (name, overrides) pairs; anything else ends the command in one line."""
    pairs = [spec.partition("=") for spec in specs]
    if not pairs or any(not name or not sep for name, sep, _ in pairs):
        parser.error(f'give one or more {flag} NAME="OVERRIDES" (the overrides may be empty: NAME=)')
    return [(name, shlex.split(overrides)) for name, _, overrides in pairs]


def aligned(lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "variant",
        "compiled",
        "train img/s",
        "(range)",
        "eval img/s",
        "(range)",
        "epoch s",
        "warm-up s",
        "train ×",
        "eval ×",
        "machine",
    ]
    lines = [header]
    for row in rows:
        lines.append(
            [
                row["variant"],
                "yes" if row["compiled"] else "no",
                f"{row['train_images_per_s']:,.0f}",
                "{:,.0f}-{:,.0f}".format(*row["train_range"]),
                f"{row['eval_images_per_s']:,.0f}",
                "{:,.0f}-{:,.0f}".format(*row["eval_range"]),
                f"{row['epoch_s']:.1f}",
                f"{row['warmup_s']:.1f}",
                f"{row['train_vs_classic']:.2f}" if "train_vs_classic" in row else "-",
                f"{row['eval_vs_classic']:.2f}" if "eval_vs_classic" in row else "-",
                row["machine"],
            ]
        )
    return aligned(lines)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnsweep bench", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant, e.g. trainer.device=cuda")
    parser.add_argument("--variants", default="classic,cnnsweep,compute", help="which of classic,cnnsweep,compute")
    parser.add_argument("--also", action="append", default=[], metavar='NAME="OVERRIDES"',
                        help="another cnnsweep variant with these extra overrides (repeatable)")  # fmt: skip
    parser.add_argument("--batches", type=int, default=40, help="training batches per variant and round")
    parser.add_argument("--eval-batches", type=int, default=4, help="evaluation batches per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10, help="untimed training batches first (compile, workers)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the classic variant")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--accuracy", action="store_true",
                        help="instead of throughput: train each variant fully (its config's epochs) per seed and "
                        "compare final test accuracy")  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for --accuracy")
    parser.add_argument("--logger", default="", metavar="NAMES",
                        help="also time these trackers (options of the logger group, e.g. tensorboard,mlflow): "
                        "their cost per epoch against the first variant's measured epoch")  # fmt: skip
    parser.add_argument("--compile-cache", choices=("shared", "cold"), default="shared",
                        help="cold: compile into an empty cache (the first run on a machine); shared: the one "
                        "every run uses (cnnsweep.train.compiling)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    # Private: dynamo compiles ConvNet.forward afresh for every compiled variant (another model,
    # batch size or autocast state) and, past 8 versions of one function, silently runs it eagerly;
    # variants measured side by side in one process need more. tests/test_bench.py checks the name.
    torch._dynamo.config.recompile_limit = 64

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = set(names) - {"classic", "cnnsweep", "compute"}
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from classic, cnnsweep, compute")
    also = named(args.also, parser, "--also") if args.also else []
    cfg = compose_config(args.overrides)
    data_target = cfg.data._target_
    if "classic" in names and data_target != "cnnsweep.train.data.MNISTData":
        parser.error(f"the classic variant reads MNIST-like data only, not {data_target}; leave it out of --variants")
    if args.accuracy:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        rows = accuracy(names, also, args.overrides, seeds, args.workers)
        if args.json:
            print(json.dumps({"rows": rows}, indent=2))
        for row in rows:
            each = ", ".join(f"{100 * a:.2f}" for a in row["test_acc"])
            print(f"{row['variant']:<12} test accuracy {100 * row['mean']:.2f}% ± {100 * row['std']:.2f} ({each})")
        return 0
    if args.compile_cache == "cold":  # the folder is removed when the process ends
        cold_cache = tempfile.TemporaryDirectory(prefix="bench-compile-cache-")
        os.environ[CACHE_ENV] = cold_cache.name
    variants = []
    for name in names:
        if name == "classic":
            variants.append(classic_variant(args.overrides, args.workers))
        else:
            variants.append(cnnsweep_variant(name, args.overrides, fixed_batch=name == "compute"))
    for name, extra in also:
        variants.append(cnnsweep_variant(name, [*args.overrides, *extra]))
    measure(variants, args.batches, args.eval_batches, args.rounds, args.warmup)
    device = make(cfg.trainer).device
    machine = machine_facts(device)
    rows = results(variants, machine_label(machine))
    costs = []
    if args.logger:
        tracked = compose_config([*args.overrides, f"logger=[{args.logger}]"])
        costs = logger_costs(tracked, rows[0]["epoch_s"])
    print_results(args, argv, device, machine, rows, costs)
    return 0


def print_results(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    device: torch.device,
    machine: dict[str, Any],
    rows: list[dict[str, Any]],
    costs: list[dict[str, Any]],
) -> None:
    """The throughput table (or JSON, with the machine and the command) and each tracker's cost."""
    if args.json:
        command = shlex.join(["cnnsweep", "bench", *(sys.argv[1:] if argv is None else argv)])
        facts = {
            "command": command,
            "device": str(device),
            "machine": machine,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "compile_cache": args.compile_cache,
        }
        print(json.dumps({**facts, "rows": rows, "loggers": costs}, indent=2))
    else:
        print(f"device {device}, torch threads {torch.get_num_threads()}, {args.rounds} rounds of {args.batches} ")
        print(f"training and {args.eval_batches} evaluation batches per variant; epoch s = one train + test pass")
        print(format_table(rows))
        epoch = f"a {rows[0]['epoch_s']:.1f} s epoch ({rows[0]['variant']})"
        for cost in costs:
            per_epoch = f"{cost['log_epoch_ms']:.1f} ms (max {cost['log_epoch_max_ms']:.1f})"
            once = f"start {cost['start_s']:.1f} s, end {cost['end_s']:.2f} s"
            print(f"logger {cost['logger']}: log_epoch {per_epoch}, {100 * cost['share_of_epoch']:.3f}% of {epoch}; "
                  f"once per run: {once}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
