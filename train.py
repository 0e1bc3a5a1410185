"""Train one configured CNN (`python train.py key=value ...`) or sweep many (`--multirun`).

Returns the run's objective so Hydra's sweepers can optimise it.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import execution_whitelist
from omegaconf import DictConfig

from cnnsweep.cli import check_config, precheck, resumed_run
from cnnsweep.errors import RUN_TARGETS, UserError
from cnnsweep.schema import ConfigOptions
from cnnsweep.train.signals import Interrupted

CONF_DIR = Path(__file__).resolve().parent / "conf"
# Your own model classes (`_target_: mynet.MyNet`) are found in the folder you run from, as they would
# be beside a script of your own; appended, so that a file there never hides an installed package.
sys.path.append(os.getcwd())


@hydra.main(config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # torch is imported here, after the precheck: a bad override is refused without waiting for it (3 s)
    from cnnsweep.train.loop import Diverged
    from cnnsweep.train.run import train

    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    options = ConfigOptions.of_running_app(hydra_cfg.job.config_name)  # models to offer in a budget refusal
    try:
        if cfg.resume is not None:
            if sweeping:
                raise UserError("resume=PATH continues one run; it cannot be swept (drop --multirun)")
            return train(resumed_run(cfg.resume, hydra_cfg.overrides.task), run_dir, resume=True, options=options)
        check_config(cfg)  # unset (???) or unresolvable values, in one line (a sweep's job, a --config-dir run)
        # In a cnnsweep Optuna sweep the job reports to its trial each epoch, so it can be pruned.
        reporter, place = None, None
        if sweeping:
            from cnnsweep.sweep.trial import connect_trial, trial_place  # optuna: 2.5 s a plain run need not wait

            reporter, place = connect_trial(hydra_cfg), trial_place(hydra_cfg)
        return train(cfg, run_dir, reporter, options=options, place=place)
    except (UserError, Interrupted, Diverged) as error:
        if sweeping:
            raise  # the sweeper records the trial as failed (or interrupted) with this message
        logging.getLogger("cnnsweep").error(f"error: {error}")
        sys.exit(exit_code(error))


def exit_code(error: Exception) -> int:
    """2 for a bad input, 1 for a diverged run, 128 + the signal's number for an interrupted one."""
    if isinstance(error, Interrupted):
        return error.exit_code
    return 2 if isinstance(error, UserError) else 1


if __name__ == "__main__":
    precheck(sys.argv[1:], CONF_DIR)  # bad overrides and unwritable folders: one line, before Hydra makes anything
    with execution_whitelist(RUN_TARGETS):  # what Hydra itself builds from the config (the SweepTable callback)
        main()
