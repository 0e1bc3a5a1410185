"""Confirm a finished sweep's best configurations on fresh seeds:
`cnnsweep confirm multirun/<study> --top N --seeds M`.

It runs the sweep's own command again (multirun.yaml: the folder it ran from, its overrides) with
`hydra.sweeper.confirm.top=N hydra.sweeper.confirm.seeds=M` added, so that the confirmation runs as the
sweep's last stage (cnnsweep.sweep.confirming) through the sweep's launcher and lanes, and the search
does not go on: `hydra.sweeper.n_trials` is held at the trials the study already has. Rerunning it runs
only the confirmation runs that are missing. A folder that is no cnnsweep study, a study with fewer
COMPLETE trials than N or with trials still running, and N or M below 1 are refused in one line (exit
status 2) before anything runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import cnnsweep.schema  # noqa: F401  (registers OmegaConf's resolvers a sweep's multirun.yaml may use)
from cnnsweep.errors import UserError, first_line
from cnnsweep.files import MULTIRUN_FILE
from cnnsweep.sweep.plugin_facts import TARGET
from cnnsweep.sweep.storage import shown_url
from cnnsweep.sweep.study import n_counted, open_storage

CONFIRM_KEYS = ("hydra.sweeper.confirm.", "hydra.sweep.dir=", "hydra.sweeper.n_trials=", "hydra.mode=")


def sweep_config(sweep_dir: Path) -> DictConfig:
    """The sweep's multirun.yaml, its folder set to where it lies now; refused unless cnnsweep's sweeper wrote it."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        raise UserError(
            f"{sweep_dir} is no sweep folder (it holds no {MULTIRUN_FILE}): give the folder of a finished sweep, "
            "e.g. multirun/<study_name>"
        )
    config = OmegaConf.load(path)
    if OmegaConf.select(config, "hydra.sweeper._target_") != TARGET:
        raise UserError(
            f"{sweep_dir} was not swept by cnnsweep's Optuna sweeper (hydra/sweeper=cnnsweep): it has no study to "
            "confirm"
        )
    config.hydra.sweep.dir = str(sweep_dir.resolve())  # ${hydra.sweep.dir} in the storage URL: this folder
    return config


def check_study(config: DictConfig, top: int) -> int:
    """Refuse a study that is missing, still running, or has fewer COMPLETE trials than `top`; returns the
    number of trials it counts toward n_trials (the search's size, which the confirmation keeps)."""
    from optuna.trial import TrialState

    try:
        url, name = str(config.hydra.sweeper.storage), str(config.hydra.sweeper.study_name)
    except Exception as error:  # an ${oc.env:...} whose variable is not set here, say
        raise UserError(
            f"the sweep's hydra.sweeper.storage or study_name cannot be read ({first_line(error)}): set what it "
            "names (e.g. the variable holding the storage URL) as the sweep had it"
        ) from None
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        raise UserError(f"study {name!r} is not in {shown_url(url)}: that sweep never started a trial") from None
    trials = storage.get_all_trials(study_id, deepcopy=False)
    in_flight = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if in_flight:
        raise UserError(
            f"study {name!r} still has trials {in_flight} running or queued: let its sweep end (or rerun the "
            "sweep's command to finish them), then confirm"
        )
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if complete < top:
        raise UserError(
            f"study {name!r} has {complete} COMPLETE trials, fewer than --top {top}: confirm at most {complete}"
            if complete
            else f"study {name!r} has no COMPLETE trial to confirm"
        )
    return n_counted(trials)


def train_script(config: DictConfig) -> Path:
    """The script the sweep ran (train.py beside its config folder)."""
    name = f"{config.hydra.job.name}.py"
    for source in config.hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).parent / name
    return Path(config.hydra.runtime.cwd) / name


def confirm_command(sweep_dir: Path, top: int, seeds: int) -> tuple[list[str], Path]:
    """The command (and the folder to run it from) that confirms the sweep in `sweep_dir`."""
    for flag, value in (("--top", top), ("--seeds", seeds)):
        if value < 1:
            raise UserError(f"{flag} {value}: give at least 1")
    config = sweep_config(sweep_dir)
    counted = check_study(config, top)
    overrides = config.hydra.overrides
    kept = [o for o in overrides.hydra if not o.startswith(CONFIRM_KEYS)]
    command = [
        sys.executable, str(train_script(config)), "--multirun", *overrides.task, *kept,
        f"hydra.sweep.dir={sweep_dir.resolve()}", f"hydra.sweeper.n_trials={counted}",
        f"hydra.sweeper.confirm.top={top}", f"hydra.sweeper.confirm.seeds={seeds}",
    ]  # fmt: skip
    return command, Path(config.hydra.runtime.cwd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnsweep confirm", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep's folder (multirun/<study_name>)")
    parser.add_argument("--top", type=int, default=3, help="how many of its best configurations (default 3)")
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds each is trained on (default 5)")
    args = parser.parse_args(argv)
    try:
        command, cwd = confirm_command(args.sweep_dir, args.top, args.seeds)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return subprocess.call(command, cwd=cwd)


if __name__ == "__main__":
    sys.exit(main())
