"""What the package knows of its own Hydra sweeper plugin (hydra_plugins/cnnsweep_sweeper), kept here below it
so that the plugin imports the package and never the other way round.

Light on purpose: Hydra imports the plugin, and so this module, whenever it lists its plugins.
"""

from dataclasses import dataclass

from hydra_plugins.hydra_optuna_sweeper.config import TPESamplerConfig

# The plugin class's `_target_` in a sweep's config: a job (sweep/trial.py) and `cnnsweep confirm` tell a
# cnnsweep sweep by it.
TARGET = "hydra_plugins.cnnsweep_sweeper.cnnsweep_sweeper.CnnsweepSweeper"
# What a sweep's sampler and pruner configs may build (Hydra 1.4 instantiates only whitelisted targets); a
# job builds the pruner again to report to its trial.
SAMPLER_TARGETS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*", "cnnsweep.sweep.samplers.*")
PRUNER_TARGETS = ("optuna.pruners.*",)


@dataclass
class TPEConf(TPESamplerConfig):
    """`hydra/sweeper/sampler=tpe` (the default) with Optuna 5's own defaults for parallel workers, which
    hydra-optuna-sweeper's config turns off: multivariate (a joint density over the parameters, so widths
    that only fit the budget together are drawn together) and constant_liar (a running trial counts as a
    bad result, so lanes asking at the same moment do not draw the same region). Measured in README, Sweeps.
    Here rather than beside the other sampler configs in the plugin: `cnnsweep noise_sim` samples with it."""

    multivariate: bool = True
    constant_liar: bool = True
