"""Image data sets held whole in memory on the run's device, and batches cut from seeded permutations.

Each data set is read once through torchvision's own dataset class (MNIST, FashionMNIST, KMNIST,
CIFAR10, ImageFolder) into uint8 tensors (N x C x H x W) on the run's device; a batch becomes float
only there, so there is no per-sample Python and no DataLoader in the training loop. Before reading,
the bytes the data will take are compared with the memory found, and a set that would not fit is
refused in one line.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnsweep.errors import UserError, first_line
from cnnsweep.train.memory import available_bytes, format_bytes

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC = 0x00000803  # IDX magic number: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
MNIST_LIKE = ("MNIST", "FashionMNIST", "KMNIST")  # torchvision classes that read the four IDX files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and labels (int64, N) of one split, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split


class ImageData:
    """What every data option shares: the shape of its images, its splits, limits and normalisation.

    root: the folder the data set's files are in (each option says its layout).
    batch_size: training batch size; eval_batch_size: batch size for validation and test passes.
    val_size: images held out of the training set for validation (0: no validation split),
        chosen with `split_seed` so every run and trial sees the same split.
    train_limit / test_limit: keep only the first N training / test images (smoke tests).
    in_channels, image_size, num_classes: the shape of the data (the model group reads them).
    mean / std: per-channel normalisation of pixel values in [0, 1].
    download: fetch missing files from the internet (torchvision's mirrors), where the set can be.
    """

    name = "images"  # the data set's name in messages
    official_train_size: int | None = None  # training images in the official release, where there is one
    fixed_shape: tuple[int, int] | None = None  # (channels, image size) of a data set whose images have one

    def __init__(
        self,
        root: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        split_seed: int,
        train_limit: int | None,
        test_limit: int | None,
        in_channels: int,
        image_size: int,
        num_classes: int,
        mean: Sequence[float] | float | None,
        std: Sequence[float] | float | None,
        download: bool,
    ) -> None:
        self.root = Path(root)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.train_limit, self.test_limit = train_limit, test_limit
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.mean, self.std = _per_channel(mean, "mean", in_channels), _per_channel(std, "std", in_channels)
        self.download = download
        self._statistics: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._check()

    def _check(self) -> None:
        for name in ("batch_size", "eval_batch_size", "in_channels", "image_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"data.{name}={getattr(self, name)} must be a positive integer")
        if self.num_classes < 2:
            raise UserError(f"data.num_classes={self.num_classes} must be at least 2")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"data.{name}={value} must be a positive integer or null (all images)")
        if self.val_size < 0:
            raise UserError(f"data.val_size={self.val_size} must be >= 0 (0: no validation split)")
        if self.std is not None and min(self.std) <= 0:
            raise UserError(f"data.std={self.std} must be positive")
        if self.official_train_size is not None:
            self._check_val_size(_limited(self.official_train_size, self.train_limit))
        if self.fixed_shape is not None and (self.in_channels, self.image_size) != self.fixed_shape:
            channels, size = self.fixed_shape
            raise UserError(
                f"{self.name} images are {channels}x{size}x{size}, not data.in_channels={self.in_channels}, "
                f"data.image_size={self.image_size}; leave them at {channels} and {size}"
            )

    def _check_val_size(self, n_train: int) -> None:
        if self.val_size >= n_train:
            raise UserError(
                f"data.val_size={self.val_size} leaves no training images out of {n_train}; "
                f"use a val_size below {n_train}"
            )

    def load(self, device: torch.device) -> Splits:
        """Read the files once and put every split on `device`."""
        n_train, n_test = self._counts()
        n_train, n_test = _limited(n_train, self.train_limit), _limited(n_test, self.test_limit)
        self._check_val_size(n_train)
        self._check_memory(n_train + n_test, device)
        train_images, train_labels = self._limited_split(train=True)
        self._check_val_size(len(train_labels))  # files other than the official ones may hold fewer
        if self.mean is None or self.std is None:  # from every training image, as the options' own figures
            mean, std = channel_stats(train_images)
            self.mean, self.std = self.mean or mean, self.std or std
        test_images, test_labels = self._limited_split(train=False)
        for split, labels in (("training", train_labels), ("test", test_labels)):
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise UserError(
                    f"{self.name}'s {split} labels run from {int(labels.min())} to {int(labels.max())} but "
                    f"data.num_classes={self.num_classes}; set data.num_classes={int(labels.max()) + 1}"
                )
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

    def _limited_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._read(train)
        limit = self.train_limit if train else self.test_limit
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return images.contiguous(), labels.long()

    def _check_memory(self, n_images: int, device: torch.device) -> None:
        """Refuse data that would not fit: uint8 images plus int64 labels, on the host while reading
        (the decoded copy and the tensor) and again on an accelerator."""
        needed = n_images * (self.in_channels * self.image_size**2 + 8)
        places = [("this machine's free memory", available_bytes(torch.device("cpu")), 2 * needed)]
        if device.type == "cuda":  # mps shares the host's memory
            places.append((f"{device}'s free memory", available_bytes(device), needed))
        for place, found, wanted in places:
            if found is not None and wanted > found:
                raise UserError(
                    f"{self.name} would need {format_bytes(wanted)} ({n_images:,} images of {self.in_channels}x"
                    f"{self.image_size}x{self.image_size} as uint8) but {place} is {format_bytes(found)}; "
                    "use data.train_limit/test_limit, a smaller data.image_size, or a machine with more memory"
                )

    def normalize(self, unit_images: torch.Tensor) -> torch.Tensor:
        """Standardise float images with pixel values in [0, 1], channel by channel."""
        key = (unit_images.device, unit_images.dtype)
        if key not in self._statistics:  # once per device, not a host-to-device copy every batch
            shape = (1, -1, 1, 1)
            self._statistics[key] = (
                torch.tensor(self.mean, dtype=unit_images.dtype, device=unit_images.device).view(shape),
                torch.tensor(self.std, dtype=unit_images.dtype, device=unit_images.device).view(shape),
            )
        mean, std = self._statistics[key]
        return (unit_images - mean) / std

    def describe(self) -> str:
        """The images' shape and classes, for the run's log."""
        return f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes"

    def _counts(self) -> tuple[int, int]:
        """Images in the training and test sets, known before they are read (for the memory check)."""
        raise NotImplementedError

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (uint8, N x C x H x W) and labels of the training or test set."""
        raise NotImplementedError


class MNISTData(ImageData):
    """MNIST, Fashion-MNIST or KMNIST (`dataset`: torchvision's class of that name), from the four IDX
    files in ROOT/<dataset>/raw (torchvision's layout)."""

    official_train_size = 60_000
    fixed_shape = (1, 28)

    def __init__(self, dataset: str, **settings) -> None:
        if dataset not in MNIST_LIKE:
            raise UserError(f"data.dataset={dataset!r} is unknown; allowed: {', '.join(MNIST_LIKE)}")
        self.dataset = self.name = dataset
        super().__init__(**settings)

    @property
    def raw(self) -> Path:
        return self.root / self.dataset / "raw"

    def _files(self, train: bool) -> tuple[Path, Path]:
        prefix = "train" if train else "t10k"
        return self.raw / f"{prefix}-images-idx3-ubyte", self.raw / f"{prefix}-labels-idx1-ubyte"

    def _counts(self) -> tuple[int, int]:
        counts = []
        for train in (True, False):
            files = self._files(train)
            if not all(path.is_file() for path in files):
                return self.official_train_size, 10_000  # the files are still to be downloaded
            counts.append(check_idx_pair(*files, self.dataset))  # torchvision checks only that they exist
        return counts[0], counts[1]

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import datasets

        try:
            dataset = getattr(datasets, self.dataset)(str(self.root), train=train, download=self.download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
            raise UserError(self._missing_message(error)) from error
        return dataset.data.unsqueeze(1), dataset.targets

    def _missing_message(self, error: Exception) -> str:
        return (
            f"{self.dataset} could not be read from {self.raw} ({first_line(error)}). Put the four files "
            f"{', '.join(MNIST_FILES)} there, or point at a folder holding {self.dataset}/raw with "
            "data.root=PATH or MNIST_ROOT=PATH" + ("" if self.download else ", or allow data.download=true")
        )


class CIFAR10Data(ImageData):
    """CIFAR-10 from torchvision's CIFAR10: ROOT/cifar-10-batches-py (data_batch_1..5, test_batch,
    batches.meta), as its python-version archive unpacks.

    check_md5: compare every file with the MD5 sum torchvision knows for the official release; turn
    it off only for files of your own in the same format (a subset, a relabelled copy).
    """

    name = "CIFAR-10"
    official_train_size = 50_000
    fixed_shape = (3, 32)

    def __init__(self, check_md5: bool, **settings) -> None:
        self.check_md5 = check_md5
        super().__init__(**settings)

    def _counts(self) -> tuple[int, int]:
        return self.official_train_size, 10_000

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import CIFAR10

        cls = CIFAR10 if self.check_md5 else _cifar10_without_md5()
        folder = self.root / CIFAR10.base_folder
        try:
            dataset = cls(str(self.root), train=train, download=self.download)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
            raise UserError(
                f"CIFAR-10 files in {folder} are damaged ({first_line(error)}); fetch them again"
            ) from error
        except Exception as error:
            checked = " or differ from the official release's MD5 sums" if self.check_md5 else ""
            own = " (files of your own in this format: data.check_md5=false)" if self.check_md5 else ""
            raise UserError(
                f"CIFAR-10 could not be read from {folder} ({first_line(error)}): its files are missing{checked}. "
                "Unpack cifar-10-python.tar.gz into data.root"
                + own
                + ("" if self.download else ", or allow data.download=true")
            ) from error
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
        return images, torch.tensor(dataset.targets)


def _cifar10_without_md5() -> type:
    """torchvision's CIFAR10 that checks only that its files exist: its check_integrity(path, md5)
    accepts any existing file when md5 is None (tests/test_data.py fails if that changes)."""
    from torchvision.datasets import CIFAR10

    return type(
        "CIFAR10WithoutMD5",
        (CIFAR10,),
        {
            "train_list": [[name, None] for name, _ in CIFAR10.train_list],
            "test_list": [[name, None] for name, _ in CIFAR10.test_list],
            "meta": {**CIFAR10.meta, "md5": None},
        },
    )


class ImageFolderData(ImageData):
    """Your own images through torchvision's ImageFolder: one sub-folder per class, under ROOT/train
    and ROOT/test, or directly under ROOT, split by a seeded `test_fraction`. Images are converted to
    `in_channels` (1: grey, 3: RGB) and resized to image_size x image_size once, when loaded.
    mean / std: null computes them from the training images (validation split included) at load.
    """

    name = "image folder"

    def __init__(self, test_fraction: float, **settings) -> None:
        self.test_fraction = test_fraction
        super().__init__(**settings)
        self.name = f"image folder {self.root}"
        if self.in_channels not in (1, 3):
            raise UserError(f"data.in_channels={self.in_channels}: image folders are read as 1 (grey) or 3 (RGB)")
        if not 0 < test_fraction < 1:
            raise UserError(f"data.test_fraction={test_fraction} must lie in (0, 1)")
        self._samples: dict[bool, list[tuple[str, int]]] | None = None
        self._classes: list[str] | None = None  # the class folders' names, the same in train/ and test/

    def _counts(self) -> tuple[int, int]:
        samples = self._split_samples()
        return len(samples[True]), len(samples[False])

    def describe(self) -> str:
        if not self._classes:  # not read yet
            return super().describe()
        named = ", ".join(self._classes[:8]) + (", ..." if len(self._classes) > 8 else "")
        return f"{super().describe()}: {named}"

    def _split_samples(self) -> dict[bool, list[tuple[str, int]]]:
        """(path, class index) of every training and test image, found once."""
        if self._samples is not None:
            return self._samples
        if not self.root.is_dir():
            raise UserError(f"data.root={self.root} is not a folder; point it at a folder of class sub-folders")
        train, test = self.root / "train", self.root / "test"
        if train.is_dir() != test.is_dir():
            present, absent = ("train", "test") if train.is_dir() else ("test", "train")
            raise UserError(
                f"{self.root} has {present}/ but no {absent}/; add {absent}/ with the same class folders, "
                "or put the class folders directly in data.root to split them by data.test_fraction"
            )
        if train.is_dir() and test.is_dir():
            samples = {True: self._folder_samples(train), False: self._folder_samples(test)}
            if len(samples[True]) == 0 or len(samples[False]) == 0:
                raise UserError(f"{self.root}/train or /test holds no images")
        else:
            every = self._folder_samples(self.root)
            order = torch.randperm(len(every), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
            n_test = max(1, round(self.test_fraction * len(every)))
            samples = {True: [every[i] for i in order[n_test:]], False: [every[i] for i in order[:n_test]]}
        self._samples = samples
        return samples

    def _folder_samples(self, folder: Path) -> list[tuple[str, int]]:
        from torchvision.datasets import ImageFolder

        try:
            found = ImageFolder(str(folder), allow_empty=False, is_valid_file=_is_image)
        except (FileNotFoundError, OSError) as error:
            raise UserError(
                f"{folder} is not an image folder ({first_line(error)}); it needs one sub-folder per class "
                f"holding {', '.join(IMAGE_SUFFIXES[:3])}, ... files"
            ) from error
        if len(found.classes) != self.num_classes:
            raise UserError(
                f"{folder} has {len(found.classes)} class folders ({', '.join(found.classes[:5])}"
                f"{', ...' if len(found.classes) > 5 else ''}) but data.num_classes={self.num_classes}; "
                f"set data.num_classes={len(found.classes)}"
            )
        if self._classes is not None and self._classes != found.classes:
            raise UserError(f"{folder} has classes {found.classes}, other than the training folder's {self._classes}")
        self._classes = found.classes
        return found.samples

    def _read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from tqdm import tqdm

        samples = self._split_samples()[train]
        images = torch.empty(len(samples), self.in_channels, self.image_size, self.image_size, dtype=torch.uint8)
        split = "train" if train else "test"
        for i, (path, _) in enumerate(tqdm(samples, desc=f"reading {split} images", leave=False, delay=2)):
            images[i] = self._load_image(path)
        return images, torch.tensor([label for _, label in samples])

    def _load_image(self, path: str) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import pil_to_tensor

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.in_channels == 1 else "RGB")
                if image.size != (self.image_size, self.image_size):
                    image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                return pil_to_tensor(image)
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{path} cannot be read as an image ({first_line(error)}); remove or replace it") from error


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _per_channel(value: Sequence[float] | float | None, name: str, channels: int) -> list[float] | None:
    """A statistic per channel: a list of `channels` numbers, a single number for every channel, or None."""
    if value is None:
        return None
    values = [float(value)] * channels if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != channels:
        raise UserError(f"data.{name}={values} has {len(values)} entries for data.in_channels={channels}")
    return values


def _limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N x C x H x W) as pixel values in [0, 1],
    summed in float64 over chunks of images (a float64 copy of CIFAR-10 whole would take 1.2 GB)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].double() / 255.0
        total += pixels.sum((0, 2, 3))
        squares += pixels.square().sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).clamp_(min=0).sqrt()
    return mean.tolist(), std.tolist()


def check_idx_pair(images: Path, labels: Path, dataset: str = "MNIST") -> int:
    """The number of images in a valid pair of IDX files; UserError naming the problem otherwise
    (wrong magic number or image size, truncated, or images and labels that disagree in count)."""
    n_images = _check_idx(images, IMAGES_MAGIC, "images", (28, 28), dataset)
    n_labels = _check_idx(labels, LABELS_MAGIC, "labels", (), dataset)
    if n_images != n_labels:
        raise UserError(f"{images} holds {n_images:,} images but {labels} holds {n_labels:,} labels; they must match")
    return n_images


def _check_idx(path: Path, magic: int, kind: str, item_shape: tuple[int, ...], dataset: str) -> int:
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
            f"{path} has magic number {found:#010x}, not {magic:#010x} ({dataset} {kind}): it is not an "
            f"uncompressed {dataset} file (gzip'd or another file?); fetch it again"
        )
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(1 + len(item_shape))]
    if tuple(dims[1:]) != item_shape:
        raise UserError(f"{path} holds {kind} of shape {tuple(dims[1:])}, not {item_shape}: it is not {dataset}")
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
