"""The machine a figure was measured on, and the precision its hardware runs fast (`trainer.precision: auto`).

Every speed or time figure cnnsweep writes (a run's summary.json, the bench and runbench JSON) carries
`machine_facts()`: the CPU model, its cores, torch's CPU capability, whether it has native bf16
arithmetic, and the GPU used. A figure holds for the machine it names, not for every machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# bf16 autocast against fp32 training, measured side by side by `cnnsweep bench` on two
# 2-core CPUs (results/bench/<machine>/cpu.json): with AMX (Intel Xeon) bf16 trained the seed network
# 1.16x faster (4,264 against 3,686 img/s, compiled) and evaluated 1.74x faster; without native bf16
# (AMD EPYC, AVX2), where it is emulated, 0.18x (299 against 1,619 img/s): 5.4 times slower.
EMULATED_BF16_COST = "trained 5.4x slower than fp32 on an AVX2 AMD EPYC (results/bench/epyc_avx2/cpu.json)"
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere and later do bf16 arithmetic natively; older GPUs emulate it
# CNNSWEEP_NATIVE_BF16=1 makes `auto` act as on a CPU with native bf16 (it trains in bf16), whatever this CPU
# has: the test suite runs with it to hold on AVX2 machines what must hold where auto picks bf16 (README,
# Tests). The machine facts written beside figures still say what the CPU really has.
SIMULATE_NATIVE_BF16 = "CNNSWEEP_NATIVE_BF16"


@dataclass(frozen=True)
class PrecisionChoice:
    """The autocast precision a run trains in, why, and a warning where an explicit choice is slow here."""

    precision: str
    reason: str
    warning: str | None = None


def cpu_model() -> str:
    """The CPU's marketing name (e.g. 'Intel(R) Xeon(R) Platinum 8481C'), as the OS reports it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may run on (a container's or a job's share, not the whole host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_bf16_instructions() -> str | None:
    """The CPU's native bf16 instructions: 'AMX', 'AVX512_BF16', 'ARM_BF16', or None where bf16 is emulated."""
    # Private torch functions: torch's public get_cpu_capability() names the vector width (AVX2, AVX512)
    # but not bf16 support, which AVX-512 CPUs before Cooper Lake lack. tests/test_machine.py fails if
    # these names go away.
    if platform.machine().lower() in ("x86_64", "amd64"):
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return "AVX512_BF16"
        return None
    if platform.machine().lower() in ("aarch64", "arm64") and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "ARM_BF16"  # on ARM oneDNN reports bf16 only where the CPU has the BF16 extension
    return None


def simulated_native_bf16() -> str | None:
    """'simulated' where CNNSWEEP_NATIVE_BF16=1 asks `auto` to act as on a CPU with native bf16, else None."""
    return "simulated: CNNSWEEP_NATIVE_BF16=1" if os.environ.get(SIMULATE_NATIVE_BF16) == "1" else None


def gpu_name(device: torch.device | None = None) -> str | None:
    """The CUDA device's name (`device`, or the first one when None and one exists); None without one."""
    if device is not None and device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def machine_facts(device: torch.device | None = None) -> dict[str, Any]:
    """What a speed figure measured on `device` (or on this machine) depends on, for the JSON beside it."""
    bf16 = cpu_bf16_instructions()
    return {
        "cpu": cpu_model(),
        "cpu_cores": cpu_cores(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # torch's kernels: AVX2, AVX512, ...
        "cpu_native_bf16": bf16 is not None,
        "cpu_bf16_instructions": bf16,
        "gpu": gpu_name(device),
        "torch": torch.__version__,
    }


def machine_label(facts: dict[str, Any]) -> str:
    """One short line for tables and logs: 'AMD EPYC, 2 cores, AVX2' (plus the GPU where one was used)."""
    cpu = f"{facts['cpu']}, {facts['cpu_cores']} cores, {facts['cpu_bf16_instructions'] or facts['cpu_capability']}"
    return f"{facts['gpu']} ({cpu})" if facts.get("gpu") else cpu


def choose_precision(setting: str, device: torch.device) -> PrecisionChoice:
    """What `trainer.precision` means here: an explicit fp32/bf16/fp16 is obeyed (bf16 on a CPU that
    emulates it, with a warning naming the cost); 'auto' is bf16 where the hardware does bf16 natively
    and it was measured faster (CPUs with AMX or AVX-512 BF16, CUDA devices of compute capability 8.0
    and later), fp32 elsewhere."""
    if setting != "auto":
        warning = None
        if setting == "bf16" and device.type == "cpu" and (cpu_bf16_instructions() or simulated_native_bf16()) is None:
            warning = (
                f"trainer.precision=bf16 on a CPU without native bf16 ({cpu_model()}, "
                f"{torch.backends.cpu.get_cpu_capability()}): it runs emulated, which {EMULATED_BF16_COST}; "
                "trainer.precision=auto picks fp32 here"
            )
        return PrecisionChoice(setting, f"trainer.precision={setting}", warning)
    if device.type == "cpu":
        instructions = cpu_bf16_instructions() or simulated_native_bf16()
        if instructions is not None:
            return PrecisionChoice("bf16", f"auto: the CPU has native bf16 ({instructions})")
        capability = torch.backends.cpu.get_cpu_capability()
        return PrecisionChoice("fp32", f"auto: the CPU has no native bf16 ({capability}), where bf16 runs emulated")
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        said = f"{torch.cuda.get_device_name(device)}, compute capability {capability[0]}.{capability[1]}"
        if capability >= CUDA_BF16_CAPABILITY:
            return PrecisionChoice("bf16", f"auto: native bf16 on {said}")
        return PrecisionChoice("fp32", f"auto: no native bf16 on {said}")
    return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")
