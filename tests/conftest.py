"""Shared fixtures: tiny synthetic data sets on disk in each data set's own format (MNIST, KMNIST,
CIFAR-10, an image folder), and real MNIST and Fashion-MNIST. Plain helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from browser import chromium_command
from helpers import REPO, synthetic_digits, write_cifar10, write_idx, write_image_folder
from postgres import throwaway_server

# Test files run two at a time on our 2-core machines (pyproject.toml): a test that trains in its own
# process uses one core, as a sweep's trials do (README, Parallel), instead of both workers contending
# for both. Subprocesses (train.py, sweeps) keep their own settings.
torch.set_num_threads(1)
REAL_MNIST_CANDIDATES = [os.environ.get("MNIST_ROOT"), str(REPO.parent / "shared" / "data")]


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
def tiny_kmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder holding KMNIST/raw (the same IDX files as MNIST) with 300 training and 100 test images."""
    root = tmp_path_factory.mktemp("tiny_kmnist")
    for prefix, n, seed in (("train", 300, 3), ("t10k", 100, 4)):
        images, labels = synthetic_digits(n, seed)
        write_idx(root / "KMNIST" / "raw" / f"{prefix}-images-idx3-ubyte", 255 - images)
        write_idx(root / "KMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder holding cifar-10-batches-py with 5 x 40 training and 40 test synthetic images."""
    return write_cifar10(tmp_path_factory.mktemp("tiny_cifar10"), n=40, seed=10)


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ folders of three classes (red, green, blue), 30 and 10 PNGs per class."""
    root = tmp_path_factory.mktemp("tiny_image_folder")
    write_image_folder(root / "train", 30, ("red", "green", "blue"), seed=1)
    write_image_folder(root / "test", 10, ("red", "green", "blue"), seed=2)
    return root


def real_data(folder: str, name: str) -> Path:
    """The folder holding `folder`/raw (real files); the test is skipped where there is none."""
    for candidate in REAL_MNIST_CANDIDATES:
        if candidate and (Path(candidate) / folder / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(candidate)
    pytest.skip(
        f"real {name} not found: set MNIST_ROOT to a folder holding {folder}/raw (checked "
        f"{[c for c in REAL_MNIST_CANDIDATES if c]})"
    )


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The folder holding the real MNIST/raw files; the test is skipped where there is none."""
    return real_data("MNIST", "MNIST")


@pytest.fixture(scope="session")
def real_fashion_mnist() -> Path:
    """The folder holding the real FashionMNIST/raw files; the test is skipped where there is none."""
    return real_data("FashionMNIST", "Fashion-MNIST")


@pytest.fixture(scope="session")
def chromium() -> list[str]:
    """The command line that starts headless Chromium; the test is skipped, saying why, where none starts."""
    command, why_not = chromium_command()
    if command is None:
        pytest.skip(why_not)
    return command


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback for one test file (tests/postgres.py); skipped, saying why,
    where none can be started."""
    try:
        with throwaway_server() as url:
            yield url
    except RuntimeError as reason:
        pytest.skip(f"no PostgreSQL server could be started: {reason}")
