"""Writing and reading files whole: each file is written whole or not at all (temp file + rename),
whatever kills the process, so a reader finds the old file or the new one, never half of one.

The generic helpers every record uses (JSON, CSV, text, torch's files); the records themselves (run
folder, summary, checkpoint) are cnnsweep.records'.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from cnnsweep.errors import UserError, first_line

_UMASK = os.umask(0o022)  # read the process umask (the only way is to set it) ...
os.umask(_UMASK)  # ... and put it straight back


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(file) on a temp file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows may differ in keys; columns are their union in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_torch(path: Path, state: Any) -> None:
    """torch.save(state) into `path`, whole or not at all."""
    import torch  # here, not at the top: train.py's precheck loads this module, and must not wait for torch

    write_atomically(path, lambda file: torch.save(state, file))


def read_torch(path: Path, purpose: str) -> Any:
    """What torch.save wrote into `path` (tensors and plain containers only), on the CPU; a UserError
    naming `purpose` when it cannot be read."""
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} cannot be read ({first_line(error)}); {purpose}") from error


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file, with numbers as int or float and empty cells as None."""
    with open(path, newline="") as file:
        return [{key: parse_value(value) for key, value in row.items()} for row in csv.DictReader(file)]


def parse_value(text: Any) -> Any:
    """A CSV cell or override value as int or float where it is one; '' as None; else unchanged."""
    if not isinstance(text, str):
        return text
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
