"""Shared fixtures: the real composed config, tiny synthetic data sets on disk in each data set's own
format (MNIST, KMNIST, CIFAR-10, an image folder), and real MNIST and Fashion-MNIST."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from cnnsweep.schema import CONF_DIR, compose_config

REPO = Path(__file__).resolve().parents[1]

# Test files run two at a time on our 2-core machines (pyproject.toml): a test that trains in its own
# process uses one core, as a sweep's trials do (README, Parallel), instead of both workers contending
# for both. Subprocesses (train.py, sweeps) keep their own settings.
torch.set_num_threads(1)
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
def tiny_kmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder holding KMNIST/raw (the same IDX files as MNIST) with 300 training and 100 test images."""
    root = tmp_path_factory.mktemp("tiny_kmnist")
    for prefix, n, seed in (("train", 300, 3), ("t10k", 100, 4)):
        images, labels = synthetic_digits(n, seed)
        write_idx(root / "KMNIST" / "raw" / f"{prefix}-images-idx3-ubyte", 255 - images)
        write_idx(root / "KMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def synthetic_photos(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images (n x size x size x 3) whose class (0-9) is the colour and place of a bright square."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, size, size, 3))
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 5)
        step = size // 5
        image[2 + step * row * 2 : 2 + step * row * 2 + step, col * step : col * step + step, label % 3] = 255
    return images.astype(np.uint8), labels


def write_cifar10(root: Path, n: int, seed: int) -> Path:
    """CIFAR-10's python format under root/cifar-10-batches-py: five pickled training batches, a test
    batch and batches.meta, each image a row of 3072 bytes (R plane, G plane, B plane)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for offset, name in enumerate(names):
        images, labels = synthetic_photos(n, seed + offset)
        rows = images.transpose(0, 3, 1, 2).reshape(n, -1)
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": rows,
            "filenames": [f"{i}.png" for i in labels],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes, "num_vis": 3072}))
    return root


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder holding cifar-10-batches-py with 5 x 40 training and 40 test synthetic images."""
    return write_cifar10(tmp_path_factory.mktemp("tiny_cifar10"), n=40, seed=10)


def write_image_folder(folder: Path, n_per_class: int, classes: tuple[str, ...], seed: int) -> None:
    """PNG files folder/<class>/<i>.png of mixed sizes (24 to 40 pixels a side), one class per colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            width, height = (int(v) for v in rng.integers(24, 41, 2))
            pixels = rng.integers(0, 60, (height, width, 3))
            pixels[:, :, index % 3] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{i}.png")


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


class PlainNet(torch.nn.Module):
    """A user's own model, as README's model contract asks: any nn.Module that returns logits."""

    def __init__(self, width: int = 8, dropout: float = 0.1, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
            torch.nn.AdaptiveMaxPool2d(4), torch.nn.Flatten(), torch.nn.Dropout(dropout),
            torch.nn.Linear(16 * width, num_classes),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def with_plain_net(cfg: DictConfig, width: int = 8) -> DictConfig:
    """cfg with its model node replaced by a PlainNet config, as a user's own model/ option would be."""
    cfg.model = OmegaConf.create(
        {"_target_": "conftest.PlainNet", "width": width, "in_channels": cfg.data.in_channels,
         "num_classes": cfg.data.num_classes}
    )  # fmt: skip
    return cfg


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that shrink the reference run to one quick epoch on `root`'s data."""
    return [
        f"data.root={root}",
        "data.download=false",
        "trainer.epochs=1",
        "trainer.progress=false",
        "trainer.device=cpu",
        "trainer.compile=auto",  # eager for these few steps, also where a sweep config says true
        *extra,
    ]
