"""MNIST held whole in memory on the run's device, and batches cut from seeded permutations.

The images stay uint8 (47 MB for the training set) until a batch is sliced out; a batch becomes
float only on the device, so there is no per-sample Python and no DataLoader in the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnsweep.errors import UserError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_TRAIN_SIZE = 60_000  # images in the official training set
IMAGES_MAGIC = 0x00000803  # IDX magic number: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)


@dataclass
class Split:
    """Images (uint8, N x 1 x H x W) and labels (int64, N) of one split, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split


class MNISTData:
    """MNIST from torchvision's dataset class, split and limited as configured, on one device.

    root: folder that holds MNIST/raw (torchvision's layout).
    batch_size: training batch size; eval_batch_size: batch size for validation and test passes.
    val_size: images held out of the training set for validation (0: no validation split),
        chosen with `split_seed` so every run and trial sees the same split.
    train_limit / test_limit: keep only the first N official training / test images (smoke tests).
    mean / std: normalisation of pixel values in [0, 1].
    download: fetch missing files from the internet (torchvision's mirrors).
    """

    def __init__(
        self,
        root: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        split_seed: int,
        train_limit: int | None,
        test_limit: int | None,
        mean: float,
        std: float,
        download: bool,
    ) -> None:
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.mean = mean
        self.std = std
        self.download = download
        self._check()

    def _check(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"data.{name}={getattr(self, name)} must be a positive integer")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"data.{name}={value} must be a positive integer or null (all images)")
        if self.val_size < 0:
            raise UserError(f"data.val_size={self.val_size} must be >= 0 (0: no validation split)")
        self._check_val_size(min(self.train_limit or MNIST_TRAIN_SIZE, MNIST_TRAIN_SIZE))
        if self.std <= 0:
            raise UserError(f"data.std={self.std} must be positive")

    def _check_val_size(self, n_train: int) -> None:
        if self.val_size >= n_train:
            raise UserError(
                f"data.val_size={self.val_size} leaves no training images out of {n_train}; "
                f"use a val_size below {n_train}"
            )

    def load(self, device: torch.device) -> Splits:
        """Read the files once and put every split on `device`."""
        train_images, train_labels = self._read(train=True, limit=self.train_limit)
        self._check_val_size(len(train_labels))  # files other than the official ones may hold fewer
        test_images, test_labels = self._read(train=False, limit=self.test_limit)
        val = None
        if self.val_size:
            order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_index, train_index = order[: self.val_size], order[self.val_size :]
            val = Split(train_images[val_index].to(device), train_labels[val_index].to(device))
            train_images, train_labels = train_images[train_index], train_labels[train_index]
        return Splits(
            train=Split(train_images.to(device), train_labels.to(device)),
            val=val,
            test=Split(test_images.to(device), test_labels.to(device)),
        )

    def _read(self, train: bool, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import MNIST

        raw = self.root / "MNIST" / "raw"
        prefix = "train" if train else "t10k"
        files = (raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte")
        if all(path.is_file() for path in files):
            check_idx_pair(*files)  # torchvision checks only that the files exist
        try:
            dataset = MNIST(str(self.root), train=train, download=self.download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
            raise UserError(self._missing_message(error)) from error
        images, labels = dataset.data, dataset.targets
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return images.unsqueeze(1).contiguous(), labels.long()

    def _missing_message(self, error: Exception) -> str:
        raw = self.root / "MNIST" / "raw"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"MNIST could not be read from {raw} ({reason}). Put the four files {', '.join(MNIST_FILES)} "
            "there, or point at a folder holding MNIST/raw with data.root=PATH or MNIST_ROOT=PATH"
            + ("" if self.download else ", or allow data.download=true")
        )

    def normalize(self, unit_images: torch.Tensor) -> torch.Tensor:
        """Standardise float images with pixel values in [0, 1]."""
        return (unit_images - self.mean) / self.std


def check_idx_pair(images: Path, labels: Path) -> None:
    """Refuse IDX files whose magic number, image size or length is wrong, or that disagree in count."""
    n_images = _check_idx(images, IMAGES_MAGIC, "images", (28, 28))
    n_labels = _check_idx(labels, LABELS_MAGIC, "labels", ())
    if n_images != n_labels:
        raise UserError(f"{images} holds {n_images:,} images but {labels} holds {n_labels:,} labels; they must match")


def _check_idx(path: Path, magic: int, kind: str, item_shape: tuple[int, ...]) -> int:
    """The number of items in a valid IDX file of uint8 values; UserError naming the problem otherwise."""
    header_size = 4 + 4 * (1 + len(item_shape))
    size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(header_size)
    if len(header) < header_size:
        raise UserError(f"{path} is {size} bytes, too short for an IDX header: the file is truncated; fetch it again")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise UserError(
            f"{path} has magic number {found:#010x}, not {magic:#010x} (MNIST {kind}): it is not an "
            "uncompressed MNIST file (gzip'd or another file?); fetch it again"
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(1 + len(item_shape))]
    if tuple(dims[1:]) != item_shape:
        raise UserError(f"{path} holds {kind} of shape {tuple(dims[1:])}, not {item_shape}: it is not MNIST")
    expected = header_size + dims[0] * math.prod(item_shape)
    if size != expected:
        raise UserError(
            f"{path} is {size:,} bytes but its header promises {dims[0]:,} {kind} ({expected:,} bytes): "
            "the file is truncated or corrupt; fetch it again"
        )
    return dims[0]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def shuffled_batches(split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Split]:
    """Every image once per call, in the order of a permutation drawn from `generator`.

    The last batch may be smaller (as DataLoader with drop_last=False).
    """
    order = torch.randperm(len(split), generator=generator, device=generator.device)
    order = order.to(split.labels.device)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield Split(split.images[index], split.labels[index])


def ordered_batches(split: Split, batch_size: int) -> Iterator[Split]:
    """Consecutive slices of a split (evaluation)."""
    for start in range(0, len(split), batch_size):
        yield Split(split.images[start : start + batch_size], split.labels[start : start + batch_size])


def n_batches(n_images: int, batch_size: int) -> int:
    return -(-n_images // batch_size)
