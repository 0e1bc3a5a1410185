"""Train one configured CNN (`python train.py key=value ...`) or sweep many (`--multirun`).

Returns the run's objective so Hydra's sweepers can optimise it.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import execution_whitelist
from omegaconf import DictConfig

from cnnsweep.cli import precheck, resumed_run
from cnnsweep.errors import RUN_TARGETS, UserError
from cnnsweep.signals import Interrupted


@hydra.main(config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # torch is imported here, after the precheck: a bad override is refused without waiting for it (3 s)
    from cnnsweep.loop import Diverged
    from cnnsweep.run import train

    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.resume is not None:
            if sweeping:
                raise UserError("resume=PATH continues one run; it cannot be swept (drop --multirun)")
            return train(resumed_run(cfg.resume, hydra_cfg.overrides.task), run_dir, resume=True)
        # In a cnnsweep Optuna sweep the job reports to its trial each epoch, so it can be pruned.
        reporter = None
        if sweeping:
            from cnnsweep.trial import connect_trial  # imports optuna: 2.5 s a plain run need not wait for

            reporter = connect_trial(hydra_cfg)
        return train(cfg, run_dir, reporter)
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
    precheck(sys.argv[1:])  # bad overrides and unwritable folders: one line, before Hydra makes anything
    with execution_whitelist(RUN_TARGETS):  # what Hydra itself builds from the config (the SweepTable callback)
        main()
