"""torch.compile for training runs: whether it pays (`trainer.compile: auto`) and where its cache lives.

Compiling costs a warm-up in the first steps (tracing, code generation, C++ compilation) and then
makes every step cheaper. The warm-up is much shorter when torch's on-disk compile cache already
holds the run's graphs: cnnsweep keeps that cache in one folder per user (COMPILE_CACHE, or
$TORCHINDUCTOR_CACHE_DIR where set), shared by every run, sweep trial and resumed run, and notes
there which graphs it has compiled, so that `auto` knows whether a run starts cold or warm.
Deleting the folder clears both.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own setting for the folder; honoured where set
COMPILE_CACHE = Path.home() / ".cache" / "cnnsweep" / "torch_compile"
COMPILED_NOTES = "cnnsweep_graphs"  # subfolder: one empty file per graph key compiled before

# `auto` compiles a run whose planned training steps reach these numbers. They rest on two 2-core
# CPUs, the seed network at batch 128 (results/bench/<machine>/cpu.json and cpu_warm.json):
# - Intel Xeon with AMX, fp32: a step takes 48 ms eagerly and 35 ms compiled, 13 ms saved; the warm-up
#   costs 24.5 s more than eager's with an empty cache and 3.2 s with a warm one: compiling pays
#   after ~1,900 steps cold and ~250 warm.
# - AMD EPYC with AVX2 only, fp32: 90 against 81 ms, 9 ms saved; warm-up 46.5 s cold, 7.8 s warm: it
#   pays after ~5,200 steps cold and ~870 warm.
# The cold threshold stays at 2,000 on both: between 2,000 and 5,200 steps the AMD's first compile
# costs up to 29 s once, and it fills the cache, from which every later run of the same graphs (a
# seed, a resumed run, a sweep's next trial) starts warm. The warm one leaves a margin on the Intel
# and costs the AMD at most 3.3 s (a 500-step run).
MIN_STEPS_COLD = 2000
MIN_STEPS_WARM = 500
COMPILING_DEVICES = ("cpu", "cuda")  # torch.compile on mps is a prototype: auto stays eager there


@dataclass(frozen=True)
class CompileChoice:
    """What a run does about torch.compile, and why (logged and kept in summary.json)."""

    compile: bool
    reason: str
    key: str  # the graph key noted in the cache once the run has compiled


def cache_dir() -> Path:
    """The compile cache folder, made the one torch uses in this process (and in its children)."""
    path = Path(os.environ.get(CACHE_ENV) or COMPILE_CACHE).expanduser()
    os.environ[CACHE_ENV] = str(path)
    return path


def graph_key(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, precision: str,
              channels_last: bool) -> str:  # fmt: skip
    """A name for the graphs torch compiles for this training setup: the architecture (each module's
    type and settings; a module's `graph_settings()` instead where some of its settings are inputs
    of the graphs, as cnnsweep's dropout rate is), the batch shape, device type, precision, memory
    layout and torch version. torch's own nn.Dropout bakes its rate into the graphs: it counts."""
    architecture = [
        f"{name}: {type(module).__name__}({getattr(module, 'graph_settings', module.extra_repr)()})"
        for name, module in model.named_modules()
    ]
    facts = [torch.__version__, device.type, list(input_shape), precision, channels_last, architecture]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def is_warm(key: str) -> bool:
    return (cache_dir() / COMPILED_NOTES / key).is_file()


def note_compiled(key: str) -> None:
    """Record that the cache now holds the graphs of `key`."""
    notes = cache_dir() / COMPILED_NOTES
    notes.mkdir(parents=True, exist_ok=True)
    (notes / key).touch()


def choose(setting: bool | str, device: torch.device, planned_steps: int, key: str) -> CompileChoice:
    """Decide whether a run compiles: `setting` true/false is obeyed; 'auto' compiles on CPU and CUDA
    when the run plans at least MIN_STEPS_WARM steps (graphs in the cache) or MIN_STEPS_COLD."""
    if setting is True or setting is False:
        return CompileChoice(setting, f"trainer.compile={str(setting).lower()}", key)
    if device.type not in COMPILING_DEVICES:
        return CompileChoice(False, f"auto: eager on {device.type}", key)
    warm = is_warm(key)
    needed = MIN_STEPS_WARM if warm else MIN_STEPS_COLD
    said = f"auto: {planned_steps:,} planned steps, compile cache {'warm' if warm else 'cold'}"
    if planned_steps >= needed:
        return CompileChoice(True, f"{said} (compiles from {needed:,})", key)
    return CompileChoice(False, f"{said} (eager below {needed:,})", key)
