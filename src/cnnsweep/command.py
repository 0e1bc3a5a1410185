"""The `cnnsweep` command: `cnnsweep TOOL [ARGS...]` runs one of the tools (cnnsweep/tools/) with ARGS.

Installed as a console script ([project.scripts] in pyproject.toml); `python -m cnnsweep TOOL` is the same
command without the install, and `python -m cnnsweep.tools.TOOL` runs one tool directly.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# Each tool: the module whose main(argv) -> exit status it runs, and the line `cnnsweep --help` shows.
TOOLS = {
    "report": ("cnnsweep.tools.report", "tables and plots of run and sweep folders"),
    "evaluate": ("cnnsweep.tools.evaluate", "a run's checkpoint on the test set"),
    "bench": ("cnnsweep.tools.bench", "training and evaluation throughput, variants side by side"),
    "runbench": ("cnnsweep.tools.runbench", "whole runs and sweeps timed from the outside"),
    "stats": ("cnnsweep.tools.stats", "per-channel mean and std of a data option's training images"),
    "confirm": ("cnnsweep.tools.confirm", "a finished sweep's best configurations on fresh seeds"),
    "noise_sim": ("cnnsweep.tools.noise_sim", "simulated sweeps: single seeds, repeats and confirmation compared"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in TOOLS.items()]
    return "\n".join(
        ["usage: cnnsweep TOOL [ARGS...]   (cnnsweep TOOL --help: the tool's own arguments)", "", "tools:", *lines]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool argv[0] names with the rest of argv; its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not args or args[0] not in TOOLS:
        said = f"unknown tool {args[0]!r}" if args else "no tool given"
        print(f"error: cnnsweep: {said}; allowed: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    module, _ = TOOLS[args[0]]
    # imported only now: most tools pull in torch, which --help and a refusal need not wait for
    return importlib.import_module(module).main(args[1:])
