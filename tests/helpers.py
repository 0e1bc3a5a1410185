"""Plain helpers the test files share (fixtures are in conftest.py): the real config shrunk to a quick run,
tiny data sets written in each data set's own format, a user's own model, `python train.py` and the tools in
a subprocess, and the files runs and sweeps write, read back."""

from __future__ import annotations

import csv
import pickle
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from cnnsweep.files import METRICS_FILE, STUDY_DB, SUMMARY_FILE, TRIALS_FILE
from cnnsweep.records import RunFolder
from cnnsweep.schema import CONF_DIR, compose_config

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
TIMING_COLUMNS = ("seconds", "images_per_s")  # metrics.csv's columns that differ between identical runs

# The seed network's layout and widths, as conf/model/seed_cnn.yaml says (checked by test_model)
SEED_LAYOUT = ["conv", "conv", "pool", "conv", "conv", "pool", "conv_valid", "conv_valid", "conv_valid"]
SEED_WIDTHS = [10, 20, 10, 10, 10, 10, 120]


def seed_cnn(**changes: object) -> torch.nn.Module:
    """The seed network as conf/model/seed_cnn.yaml builds it on MNIST (every setting from the YAML), with `changes`."""
    from cnnsweep.train.model import ConvNet

    settings = OmegaConf.to_container(compose_train().model, resolve=True)
    del settings["_target_"]
    return ConvNet(**(settings | changes))


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
        {"_target_": "helpers.PlainNet", "width": width, "in_channels": cfg.data.in_channels,
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


def sweep_overrides(root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    """`--multirun` with the tiny run's overrides on `root`'s data, a 100-image validation split, in `sweep_dir`."""
    return ["--multirun", *tiny_overrides(root, "data.val_size=100", f"hydra.sweep.dir={sweep_dir}", *extra)]


IN_PROCESS = ("hydra/launcher=basic", "hydra.sweeper.n_jobs=1")  # a sweep's trials one at a time, in its process


def optuna_overrides(root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    """The lr_gamma_dropout search (TPE) in a study named 'test', trials in the sweep's process."""
    return sweep_overrides(
        root, sweep_dir, "hparams_search=lr_gamma_dropout", "hydra.sweeper.study_name=test", *IN_PROCESS, *extra
    )


def grid_study_overrides(root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    """cnnsweep's sweeper with Optuna's grid sampler over the command line's sweeps."""
    return sweep_overrides(
        root,
        sweep_dir,
        "hydra/sweeper=cnnsweep",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.study_name=test",
        "objective=val_acc",
        *extra,
    )


def error_line(result: subprocess.CompletedProcess, exit_code: int) -> str:
    """The one `error:` line a sweep that stopped early ends with (and no traceback)."""
    assert result.returncode == exit_code and "Traceback" not in result.stdout + result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def train_py(
    *args: str,
    wait: bool = True,
    cwd: Path = REPO,
    runner: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    **popen,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`python train.py ARGS` run from `cwd`: finished (stdout and stderr captured apart) or, with
    wait=False, started (stdout and stderr in one text pipe, unless `popen` says otherwise: its keywords go
    to Popen). `runner`: a script run in train.py's place that gets train.py's path as its first argument."""
    command = [sys.executable, *([str(runner)] if runner else []), str(REPO / "train.py"), *args]
    if not wait:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        return subprocess.Popen(command, cwd=cwd, env=env, **(pipes | popen))
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def tool(name: str, *args: object, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m cnnsweep NAME ARGS` (the `cnnsweep NAME` command: report, evaluate, bench, ...), finished, its
    output captured."""
    command = [sys.executable, "-m", "cnnsweep", name, *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def summary(run_dir: str | Path) -> dict:
    """A run's summary.json, read by its owner."""
    said = RunFolder(Path(run_dir)).read_summary()
    assert said is not None, f"{run_dir} has no {SUMMARY_FILE}"
    return said


def cells(table: Path) -> list[dict[str, str]]:
    """A CSV file's rows with each cell as the file spells it: for tests of what a table says (a cell "0.0", not
    "0"). cnnsweep.artifacts.read_csv, the tables' reader, gives their values (numbers, None)."""
    with open(table, newline="") as file:
        return list(csv.DictReader(file))


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """A run's metrics.csv, one dict per epoch, every column, as the file spells it."""
    return cells(RunFolder(Path(run_dir)).metrics)


def metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """A run's metrics.csv without its timing columns: what two runs of the same recipe share."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_metrics(run_dir)]


def wait_for_rows(run_dir: Path, rows: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the run in `process` has written `rows` epochs to its metrics.csv."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / METRICS_FILE).is_file() and len(metrics(run_dir)) >= rows:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} never reached {rows} epochs")


def read_trials(sweep_dir: str | Path) -> list[dict[str, str]]:
    """A sweep's trials.csv, one dict per trial, as the file spells it."""
    return cells(Path(sweep_dir) / TRIALS_FILE)


def study_url(sweep_dir: Path) -> str:
    """The URL of a sweep's default study storage (its optuna.db)."""
    return f"sqlite:///{sweep_dir / STUDY_DB}"


def load_study(sweep_dir: Path, name: str = "test") -> optuna.Study:
    """The study `name` in a sweep's default storage."""
    return optuna.load_study(study_name=name, storage=study_url(sweep_dir))


def readme_files(section: str) -> dict[str, str]:
    """The code blocks of README's `## <section>` that start with a `# <path>` line, by path."""
    text = (REPO / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", text, flags=re.S)
    return {path: code for path, code in blocks}


def write_files(folder: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
