"""Per-channel mean and std of a data option's training images, for its `mean:` and `std:` keys.

    cnnsweep stats data=fashion_mnist
    cnnsweep stats data=image_folder data.root=PATH data.num_classes=5

Takes the same overrides as train.py; prints the figures for the YAML file.
"""

from __future__ import annotations

import argparse
import sys

import torch

from cnnsweep.errors import UserError, make
from cnnsweep.schema import compose_config


def training_stats(overrides: list[str]) -> tuple[int, list[float], list[float]]:
    """(number of images, mean, std) of the configured data set's training images."""
    # mean and std null: load() computes them from the training images, as it does for an image folder
    cfg = compose_config([*overrides, "data.val_size=0", "data.test_limit=1", "data.mean=null", "data.std=null"])
    data = make(cfg.data)
    train = data.load(torch.device("cpu")).train
    return len(train), data.mean, data.std


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cnnsweep stats", description=__doc__.splitlines()[0], epilog="e.g. " + __doc__.splitlines()[2]
    )
    parser.add_argument("overrides", nargs="*", help="train.py's overrides choosing and configuring the data")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        n_images, mean, std = training_stats(args.overrides)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{n_images:,} training images")
    print(f"mean: [{', '.join(f'{value:.4f}' for value in mean)}]")
    print(f"std: [{', '.join(f'{value:.4f}' for value in std)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
