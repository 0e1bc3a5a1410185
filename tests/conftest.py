"""Shared fixtures: the real composed config, a tiny synthetic MNIST on disk, and real MNIST."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from cnnsweep.schema import CONF_DIR, compose_config

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
REAL_MNIST_CANDIDATES = [os.environ.get("MNIST_ROOT"), str(REPO.parent / "shared" / "data")]


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """The real conf/train.yaml with overrides, as `python train.py` composes it."""
    return compose_config(overrides or [])


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (MNIST's format): magic (0, 0, 0x08 = uint8, ndim), sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images whose class (0-9) is where a bright 8x8 square sits, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 5)
        image[2 + 12 * row : 10 + 12 * row, 1 + 5 * col : 9 + 5 * col] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder holding MNIST/raw with 600 training and 200 test synthetic images."""
    root = tmp_path_factory.mktemp("tiny_mnist")
    raw = root / "MNIST" / "raw"
    for prefix, n, seed in (("train", 600, 1), ("t10k", 200, 2)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The folder holding the real MNIST/raw files; the test is skipped where there is none."""
    for candidate in REAL_MNIST_CANDIDATES:
        if candidate and (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(candidate)
    pytest.skip(
        "real MNIST not found: set MNIST_ROOT to a folder holding MNIST/raw (checked "
        f"{[c for c in REAL_MNIST_CANDIDATES if c]})"
    )


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that shrink the reference run to one quick epoch on `root`'s data."""
    return [
        f"data.root={root}",
        "data.download=false",
        "trainer.epochs=1",
        "trainer.progress=false",
        "trainer.device=cpu",
        *extra,
    ]
