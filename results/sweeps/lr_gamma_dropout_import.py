"""Rebuild the lr_gamma_dropout study (hparams_search=lr_gamma_dropout, 19 epochs, seed 0, one draw per
trial) from its stored table, lr_gamma_dropout.trials.csv, into lr_gamma_dropout.optuna.db beside it: its
Optuna database was not kept, and confirming its best configurations on fresh seeds needs a study to read
them from. Each row becomes a trial with its state, parameters, value and test accuracy; nothing is
re-trained, and the trials keep their numbers. Trials 11 and 12 were interrupted and run again as trials 13
and 14 (the same parameters): they are marked as the sweeper marks a re-queued trial and its retry, so
that the sweep sees them retried (else it would queue them again). Then its top configurations are confirmed by the sweep's own command (README, "Recipes"):

    python results/sweeps/lr_gamma_dropout_import.py
    python train.py --multirun hparams_search=lr_gamma_dropout \
        hydra.sweeper.storage=sqlite:///$PWD/results/sweeps/lr_gamma_dropout.optuna.db \
        hydra.sweeper.n_trials=20 hydra.sweeper.confirm.top=3 hydra.sweeper.confirm.seeds=5
"""

import csv
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cnnsweep.sweep.attrs import REQUEUED, RETRIED_FROM

HERE = Path(__file__).resolve().parent
TABLE, DB, STUDY = HERE / "lr_gamma_dropout.trials.csv", HERE / "lr_gamma_dropout.optuna.db", "lr_gamma_dropout"
SPACE = {  # conf/hparams_search/lr_gamma_dropout.yaml's params
    "optimizer.lr": FloatDistribution(0.005, 0.2, log=True),
    "scheduler.gamma": FloatDistribution(0.05, 0.5),
    "model.dropout": FloatDistribution(0.0, 0.2),
}


def main() -> None:
    if DB.exists():
        raise SystemExit(f"{DB} exists: it is the rebuilt study (delete it to rebuild)")
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{DB}", direction="maximize")
    study.set_metric_names(["val_acc"])
    rows = list(csv.DictReader(TABLE.open()))
    params = [{name: float(row[name]) for name in SPACE} for row in rows]
    retried_from = {}  # a retry's number -> the interrupted trial it re-runs (same parameters, later number)
    for number, row in enumerate(rows):
        if row["state"] == "FAIL":
            retry = next(later for later in range(number + 1, len(rows)) if params[later] == params[number])
            retried_from[retry] = number
    for number, row in enumerate(rows):
        assert int(row["number"]) == number, "the table lists every trial, in order"
        state = TrialState[row["state"]]
        attrs = {"test_acc": float(row["test_acc"]), "n_params": int(row["n_params"])} if row["test_acc"] else {}
        if row["reason"]:
            attrs["reason"] = row["reason"]
        if state == TrialState.FAIL:
            attrs[REQUEUED] = True
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=params[number],
                distributions=SPACE,
                value=float(row["value"]) if state == TrialState.COMPLETE else None,
                user_attrs=attrs,
                system_attrs={RETRIED_FROM: retried_from[number]} if number in retried_from else {},
            )
        )
    print(f"{DB.name}: {len(study.trials)} trials of study {STUDY!r}")


if __name__ == "__main__":
    main()
