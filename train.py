"""Train one configured CNN (`python train.py key=value ...`) or sweep many (`--multirun`).

Returns the run's objective so Hydra's sweepers can optimise it.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import cnnsweep.schema  # noqa: F401  (registers the config schemas before Hydra composes)
from cnnsweep.errors import UserError
from cnnsweep.run import train
from cnnsweep.trial import connect_trial


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        # In a cnnsweep Optuna sweep the job reports to its trial each epoch, so it can be pruned.
        reporter = connect_trial(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else None
        return train(cfg, Path(hydra_cfg.runtime.output_dir), reporter)
    except UserError as error:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed with this message
        logging.getLogger("cnnsweep").error(f"error: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
