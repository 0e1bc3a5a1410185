"""Training and evaluation throughput, side by side: `python -m cnnsweep.bench [OVERRIDES...]`.

Variants, measured in one process and interleaved round by round so that machine noise hits
them all alike:
- classic: the seed recipe as usually written: torchvision MNIST with per-sample
  RandomRotation / ToTensor / Normalize, a DataLoader with worker processes, the eager model;
- cnnsweep: the training path `python train.py` runs by default (the composed config, with any
  OVERRIDES given), from the in-memory dataset with batched augmentation;
- compute: the same model, optimizer and step as cnnsweep on one fixed, already prepared batch:
  the bound with no data work at all;
- any number of `--also NAME="OVERRIDES"`: cnnsweep variants with other settings.

Prints images/s for training and for evaluation (mean over rounds, with the range), the epoch
times they imply, and the ratios to the classic pipeline; `--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from cnnsweep.data import Split, n_batches, ordered_batches, shuffled_batches
from cnnsweep.loop import preparers
from cnnsweep.run import build, build_scheduler
from cnnsweep.schema import compose_config


@dataclass
class Variant:
    """A way of training: `train(n)` runs n steps, `evaluate(n)` n evaluation batches; both return images."""

    name: str
    train: Callable[[int], int]
    evaluate: Callable[[int], int]
    epoch_images: tuple[int, int]  # training and test images in one epoch
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


def cnnsweep_variant(name: str, overrides: Sequence[str], fixed_batch: bool = False) -> Variant:
    """cnnsweep's own path from the composed config; with fixed_batch, steps on one prepared batch."""
    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    parts = build(cfg, instantiate(cfg.model, _convert_="all"))
    trainer, data = parts.trainer, parts.data
    splits = data.load(trainer.device)
    generator = torch.Generator(device=trainer.device).manual_seed(cfg.seed)
    scheduler = build_scheduler(cfg, parts.optimizer, trainer.epochs, n_batches(len(splits.train), data.batch_size))
    prepare_train, prepare_eval = preparers(data, parts.augmentation, generator)
    if fixed_batch:
        first = next(shuffled_batches(splits.train, data.batch_size, generator))
        prepared = Split(prepare_train(first.images), first.labels)
        batches = cycle(lambda: iter([prepared]))
        step = trainer.train_step(parts.model, parts.forward, parts.optimizer, scheduler, lambda images: images)
        eval_batch = prepare_eval(splits.test.images[: data.eval_batch_size])
    else:
        batches = cycle(lambda: shuffled_batches(splits.train, data.batch_size, generator))
        step = trainer.train_step(parts.model, parts.forward, parts.optimizer, scheduler, prepare_train)
    eval_batches = cycle(lambda: ordered_batches(splits.test, data.eval_batch_size))

    def train(n: int) -> int:
        images = 0
        for _ in range(n):
            batch = next(batches)
            step(batch)
            images += len(batch.labels)
        synchronize(trainer.device)
        return images

    @torch.inference_mode()
    def evaluate(n: int) -> int:
        parts.model.eval()
        images = 0
        with trainer.autocast():
            for _ in range(n):
                batch = next(eval_batches)
                inputs = eval_batch if fixed_batch else prepare_eval(batch.images)
                parts.forward(inputs).argmax(1)
                images += len(batch.labels)
        synchronize(trainer.device)
        return images

    return Variant(name, train, evaluate, (len(splits.train), len(splits.test)))


def classic_variant(overrides: Sequence[str], workers: int) -> Variant:
    """The usual pipeline: per-sample torchvision transforms in DataLoader workers, eager model."""
    from torchvision import datasets, transforms

    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    device = instantiate(cfg.trainer).device
    model = instantiate(cfg.model, _convert_="all").to(device)
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params=model.parameters())
    normalize = transforms.Normalize((cfg.data.mean,), (cfg.data.std,))
    train_set = datasets.MNIST(
        cfg.data.root,
        train=True,
        download=False,
        transform=transforms.Compose(
            [transforms.RandomRotation((-7.0, 7.0), fill=(0,)), transforms.ToTensor(), normalize]
        ),
    )
    test_set = datasets.MNIST(
        cfg.data.root, train=False, download=False, transform=transforms.Compose([transforms.ToTensor(), normalize])
    )
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
            loss = F.nll_loss(model(inputs), labels)
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

    return Variant("classic", train, evaluate, (len(train_set), len(test_set)))


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


def results(variants: Sequence[Variant]) -> list[dict[str, Any]]:
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
        }
        if classic is not None:
            row["train_vs_classic"] = train_rate / mean(classic.train_rates)
            row["eval_vs_classic"] = eval_rate / mean(classic.eval_rates)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["variant", "train img/s", "(range)", "eval img/s", "(range)", "epoch s", "warm-up s", "train ×", "eval ×"]
    lines = [header]
    for row in rows:
        lines.append(
            [
                row["variant"],
                f"{row['train_images_per_s']:,.0f}",
                "{:,.0f}-{:,.0f}".format(*row["train_range"]),
                f"{row['eval_images_per_s']:,.0f}",
                "{:,.0f}-{:,.0f}".format(*row["eval_range"]),
                f"{row['epoch_s']:.1f}",
                f"{row['warmup_s']:.1f}",
                f"{row['train_vs_classic']:.2f}" if "train_vs_classic" in row else "-",
                f"{row['eval_vs_classic']:.2f}" if "eval_vs_classic" in row else "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=False))
        )
        for line in lines
    ]
    return "\n".join(aligned)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnsweep.bench", description=__doc__.splitlines()[0])
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
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = set(names) - {"classic", "cnnsweep", "compute"}
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from classic, cnnsweep, compute")
    variants = []
    for name in names:
        if name == "classic":
            variants.append(classic_variant(args.overrides, args.workers))
        else:
            variants.append(cnnsweep_variant(name, args.overrides, fixed_batch=name == "compute"))
    for extra in args.also:
        name, _, more = extra.partition("=")
        variants.append(cnnsweep_variant(name, [*args.overrides, *shlex.split(more)]))
    measure(variants, args.batches, args.eval_batches, args.rounds, args.warmup)
    rows = results(variants)
    device = instantiate(compose_config(args.overrides).trainer).device
    if args.json:
        print(json.dumps({"device": str(device), "rows": rows}, indent=2))
    else:
        print(f"device {device}, torch threads {torch.get_num_threads()}, {args.rounds} rounds of {args.batches} ")
        print(f"training and {args.eval_batches} evaluation batches per variant; epoch s = one train + test pass")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
