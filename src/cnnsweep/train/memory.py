"""Free memory on a device, for refusing data that would not fit before it is read."""

from __future__ import annotations

from pathlib import Path

import torch

MEMINFO = Path("/proc/meminfo")  # Linux: MemAvailable counts free memory plus what caches would give back


def available_bytes(device: torch.device) -> int | None:
    """Bytes free on `device` (host memory for cpu and mps, which shares it), or None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _host_available()


def _host_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    try:
        import psutil  # macOS, Windows
    except ImportError:
        return None
    return psutil.virtual_memory().available


def format_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
