"""MLflow: one MLflow run per training run (config as params, metrics per epoch, files as artifacts), and for
a sweep a parent run with one child run per trial (`MLflowSweepTracker`, the sweeper's side).

The store is `tracking_uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<working folder>/mlflow.db`: the
folder `python train.py` runs from, where Hydra's outputs/ and multirun/ lie, so that single runs and sweeps
share one store (`mlflow ui --backend-store-uri sqlite:///mlflow.db` from there). Artifacts of that local store
go to `mlartifacts/` beside it.

Ids kept in files, so that another process finds the run: `<run_dir>/mlflow_run.json` (a resumed run
continues that MLflow run; the sweeper finds a trial's child run there) and `<sweep_dir>/mlflow_parent.json`
(the sweep's parent run, which each trial's job reads to become its child).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cnnsweep.artifacts import write_json
from cnnsweep.files import BEST_CHECKPOINT
from cnnsweep.records import RunFolder, RunStatus
from cnnsweep.track.logger import Logger, RunInfo, flatten, mask_password

RUN_ID_FILE = "mlflow_run.json"
PARENT_FILE = "mlflow_parent.json"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a child run under its parent
TRIAL_TAG, STUDY_TAG, STATUS_TAG, STATE_TAG = "cnnsweep.trial", "cnnsweep.study", "cnnsweep.status", "cnnsweep.state"
# A trial with repeats: each repeat's run is tagged with its trial and repeat (not TRIAL_TAG, which marks the one
# run per trial that the sweeper gives the trial's mean and sd over its repeats).
REPEAT_OF_TAG, REPEAT_TAG = "cnnsweep.repeat_of", "cnnsweep.repeat"
# summary.json status -> MLflow run status (pruned: stopped early on purpose, as Optuna's PRUNED)
RUN_STATUS = {RunStatus.COMPLETED: "FINISHED", RunStatus.PRUNED: "KILLED", RunStatus.INTERRUPTED: "KILLED"}
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "RUNNING": "RUNNING"}  # Optuna state -> MLflow
# MLflow's limits (mlflow.utils.validation): a param value's length, params or tags per log_batch call.
MAX_PARAM_LENGTH, MAX_PER_BATCH = 6000, 100
# An MLflow server that does not answer: MLflow retries 7 times with doubling waits (minutes) by default.
# Two tries and a 10 s timeout make a down server cost a run seconds, once (then Loggers turns it off).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the SQLite file mlflow.db in the working folder (beside outputs/, multirun/)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def connect(tracking_uri: str | None) -> tuple[Any, str]:
    """An MlflowClient for the URI, and the URI as cnnsweep shows it (password masked).

    A user:password in an http(s) URI goes to MLflow as MLFLOW_TRACKING_USERNAME/PASSWORD (its own way of
    taking them), not in the URI: MLflow prints the URI of each run it ends ("View run ... at: URI").
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", parts.username or "")
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", parts.password)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        uri = urlunsplit(parts._replace(netloc=host))
    return MlflowClient(tracking_uri=uri), mask_password(tracking_uri or uri)


def experiment_id(client: Any, name: str) -> str:
    """The id of the named experiment, made if missing (a local SQLite store keeps its artifacts beside it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        location = (Path(client.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # two processes made it at once: the other's is as good
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def param_entries(values: Mapping[str, Any]) -> list[Any]:
    """Params for log_batch; a value longer than MLflow takes is cut, saying so at its end."""
    from mlflow.entities import Param

    entries = []
    for key, value in values.items():
        text = "null" if value is None else str(value)
        if len(text) > MAX_PARAM_LENGTH:
            said = f"...({len(text)} chars)"
            text = text[: MAX_PARAM_LENGTH - len(said)] + said
        entries.append(Param(key, text))
    return entries


def log_params(client: Any, run_id: str, values: Mapping[str, Any]) -> None:
    entries = param_entries(values)
    for start in range(0, len(entries), MAX_PER_BATCH):
        client.log_batch(run_id, params=entries[start : start + MAX_PER_BATCH])


def log_metrics(client: Any, run_id: str, values: Mapping[str, Any], step: int = 0) -> None:
    """The numeric values as metrics at `step` (anything else is left out: MLflow metrics are numbers)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    numbers = {key: value for key, value in values.items() if is_number(value)}
    metrics = [Metric(key, float(value), now, step) for key, value in numbers.items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_id(path: Path) -> str | None:
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


def trial_name(number: int, repeat: int | None = None) -> str:
    return f"trial {number}" if repeat is None else f"trial {number} repeat {repeat}"


def place_tags(number: int, repeat: int | None) -> dict[str, str]:
    """The tags that tell a trial's run (or one repeat's run of it) from the sweep's other runs."""
    return {TRIAL_TAG: str(number)} if repeat is None else {REPEAT_OF_TAG: str(number), REPEAT_TAG: str(repeat)}


def summary_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's numbers: its top-level figures and each objective as `objective.<name>`."""
    figures = {key: value for key, value in summary.items() if is_number(value)}
    figures |= {f"objective.{name}": value for name, value in (summary.get("objectives") or {}).items()}
    return {key: value for key, value in figures.items() if is_number(value)}


class MLflowLogger(Logger):
    """One MLflow run per training run: every resolved config value as a param (dotted keys), each epoch's
    metrics at step=epoch, the summary's figures and a `cnnsweep.status` tag at the end, and summary.json,
    metrics.csv and checkpoints/best.pt as artifacts. A sweep trial's run is a child of the sweep's run."""

    # Every setting comes from conf/logger/mlflow.yaml (its defaults live there only); tracking_uri None: see connect.
    def __init__(self, tracking_uri: str | None, experiment: str, log_checkpoint: bool) -> None:
        self.tracking_uri, self.experiment, self.log_checkpoint = tracking_uri, experiment, log_checkpoint
        self.client: Any = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.logged_epochs: set[int] = set()  # of a resumed run: epochs the MLflow run already holds

    def start(self, run: RunInfo) -> None:
        self.client, self.shown_uri = connect(self.tracking_uri)
        self.run_dir = run.run_dir
        id_file = run.run_dir / RUN_ID_FILE
        if run.resumed and id_file.is_file():
            self.run_id = read_id(id_file)
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_epochs = self._logged_epochs()
            return
        tags = {"cnnsweep.run_dir": str(run.run_dir)}
        parent = None
        if run.sweep is not None:
            parent = run.sweep.parent_run_id or read_id(run.sweep.sweep_dir / PARENT_FILE)
            tags |= place_tags(run.sweep.trial_number, run.sweep.repeat) | {STUDY_TAG: run.sweep.study_name}
        if parent is not None:
            tags[PARENT_TAG] = parent
            experiment = self.client.get_run(parent).info.experiment_id
        else:
            experiment = experiment_id(self.client, self.experiment)
        # the same name from either side (the job's run, the sweeper's child for a trial that never ran)
        name = run.name if run.sweep is None else trial_name(run.sweep.trial_number, run.sweep.repeat)
        created = self.client.create_run(experiment, run_name=name, tags=tags)
        self.run_id = created.info.run_id
        write_json(id_file, {"run_id": self.run_id, "experiment_id": experiment, "tracking_uri": self.shown_uri})
        # a password in any value (the tracking URI, a storage URL typed on the command line) is not stored
        params = {
            key: mask_password(value) if isinstance(value, str) else value for key, value in flatten(run.config).items()
        }
        log_params(self.client, self.run_id, params | {"n_params": run.n_params})

    def _logged_epochs(self) -> set[int]:
        keys = list(self.client.get_run(self.run_id).data.metrics)
        epoch_keys = [key for key in keys if "." not in key]  # per-epoch metrics, not the end's figures
        if not epoch_keys:
            return set()
        return {metric.step for metric in self.client.get_metric_history(self.run_id, epoch_keys[0])}

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if epoch in self.logged_epochs:
            return  # a resumed run replaying an epoch this MLflow run already holds
        log_metrics(self.client, self.run_id, {key: value for key, value in metrics.items() if key != "epoch"}, epoch)
        self.logged_epochs.add(epoch)

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        figures = {f"summary.{key}": value for key, value in summary_figures(summary).items()}
        log_metrics(self.client, self.run_id, figures, step=int(summary.get("epochs_run") or 0))
        for path in self._artifacts():
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, STATUS_TAG, status)
        self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "FAILED"))

    def sweep_tracker(self) -> MLflowSweepTracker:
        """The sweep's parent run and its children, in the same store and experiment."""
        return MLflowSweepTracker(self.tracking_uri, self.experiment)

    def _artifacts(self) -> Iterable[Path]:
        folder = RunFolder(self.run_dir)
        candidates = [folder.summary, folder.metrics]
        if self.log_checkpoint:
            candidates.append(folder.checkpoint(BEST_CHECKPOINT))
        return [path for path in candidates if path.is_file()]


class MLflowSweepTracker:
    """The sweeper's side of a sweep in MLflow: a parent run per sweep, a child run per trial, the best at the end.

    start: once, before the first trial is launched; writes the parent's id into the sweep folder, where
      each trial's MLflowLogger reads it. A continued sweep (the file already there) reopens the same run.
    trial_ended: once per trial, when the sweeper tells Optuna its state; makes the child run of a trial
      that never ran (over budget, failed before its job) and tags every child with its Optuna state.
    end: once, with the study's best trials (the Pareto front for several objectives).
    """

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client: Any = None
        self.parent_id: str | None = None

    def start(self, sweep_dir: Path, study_name: str, directions: list[str], metric_names: list[str]) -> str:
        self.client, shown_uri = connect(self.tracking_uri)
        self.sweep_dir, self.study_name, self.metric_names = Path(sweep_dir), study_name, list(metric_names)
        id_file = self.sweep_dir / PARENT_FILE
        self.parent_id = read_id(id_file)
        if self.parent_id is not None:
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id
        experiment = experiment_id(self.client, self.experiment)
        tags = {STUDY_TAG: study_name, "cnnsweep.sweep_dir": str(self.sweep_dir)}
        self.parent_id = self.client.create_run(experiment, run_name=study_name, tags=tags).info.run_id
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(id_file, {"run_id": self.parent_id, "experiment_id": experiment, "tracking_uri": shown_uri})
        pairs = enumerate(zip(metric_names, directions, strict=True))
        objectives = {f"objective.{index}": f"{name} ({direction})" for index, (name, direction) in pairs}
        log_params(self.client, self.parent_id, {"study_name": study_name} | objectives)
        return self.parent_id

    def trial_ended(
        self,
        number: int,
        state: Any,
        params: Mapping[str, Any],
        values: list[float] | None,
        run_dir: Path | None = None,
        spread: Mapping[str, float] | None = None,
    ) -> str:
        """Tag trial `number`'s child run with its Optuna state (COMPLETE, PRUNED, FAIL; a TrialState or its
        name) and objective values; make the child if the trial's job made none. Returns the child's id.

        With repeats, `values` are the means over the trial's seeds and `spread` their sd per objective
        (`<objective>.sd`) and how many ran (`repeats`): the child, made here, holds those, beside the repeats'
        own runs (`trial N repeat r`)."""
        state_name = getattr(state, "name", str(state))
        child = self._child_of(number, run_dir)
        if child is not None and self.client.get_run(child).data.tags.get(STATE_TAG) == state_name:
            return child  # told before (a continued sweep, another worker)
        if child is None:
            tags = {PARENT_TAG: self.parent_id, TRIAL_TAG: str(number), STUDY_TAG: self.study_name}
            experiment = self.client.get_run(self.parent_id).info.experiment_id
            child = self.client.create_run(experiment, run_name=trial_name(number), tags=tags).info.run_id
            log_params(self.client, child, dict(params))
        if values:
            log_metrics(self.client, child, self.objective_values(values))
        if spread:
            log_metrics(
                self.client, child, {f"objective.{key}" if key != "repeats" else key: v for key, v in spread.items()}
            )
        self.client.set_tag(child, STATE_TAG, state_name)
        if self.client.get_run(child).info.status == "RUNNING":  # never ran, or its job died before end()
            self.client.set_terminated(child, TRIAL_STATUS.get(state_name, "FAILED"))
        return child

    def objective_values(self, values: list[float]) -> dict[str, float]:
        return {f"objective.{name}": value for name, value in zip(self.metric_names, values, strict=True)}

    def _child_of(self, number: int, run_dir: Path | None) -> str | None:
        if run_dir is not None and (Path(run_dir) / RUN_ID_FILE).is_file():
            return read_id(Path(run_dir) / RUN_ID_FILE)
        experiment = self.client.get_run(self.parent_id).info.experiment_id
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{TRIAL_TAG}` = '{number}'"
        found = self.client.search_runs([experiment], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    def end(self, best_trials: list[Mapping[str, Any]]) -> None:
        """Record the best trials on the parent run and end it. Each item: {"number": int, "values": [float,
        ...] (in metric_names' order), "params": {...}}; one item for one objective, the front for several.

        The best trial's number and values are metrics (`best.trial`, `best.<objective>`) and its params are
        tags (`best.<param>`): MLflow params are write-once, and a continued sweep may find a new best.
        best_trials.json (the whole front) is an artifact."""
        front = [
            {"number": trial["number"], "values": dict(zip(self.metric_names, trial["values"], strict=True)),
             "params": dict(trial["params"])}
            for trial in best_trials
        ]  # fmt: skip
        if front:
            best = front[0]
            log_metrics(self.client, self.parent_id, {"best.trial": best["number"], "pareto_front.size": len(front)})
            log_metrics(self.client, self.parent_id, {f"best.{name}": v for name, v in best["values"].items()})
            for key, value in best["params"].items():
                self.client.set_tag(self.parent_id, f"best.{key}", str(value))
        self.client.log_dict(self.parent_id, {"best_trials": front}, "best_trials.json")
        self.client.set_terminated(self.parent_id, "FINISHED")

    def confirmed(self, winner: Mapping[str, Any]) -> None:
        """Record a confirmation's winner on the parent run (after end(): a confirmation is the sweep's last
        stage, or a later command). `winner` is optimization_results.yaml's `confirmed` entry
        (cnnsweep.sweep.confirmation.winner_entry): its trial and seed count as metrics (`confirmed.trial`,
        `confirmed.n_seeds`), its objective's and test accuracy's mean, sd and interval bounds as metrics
        (`confirmed.<objective>.mean`, ...), its params and command as tags (`confirmed.<param>`,
        `confirmed.command`), and the whole entry as confirmed.json."""
        figures: dict[str, Any] = {"confirmed.trial": winner["trial"], "confirmed.n_seeds": len(winner["seeds"])}
        for name, interval in ((winner["objective"], winner["value"]), ("test_acc", winner.get("test_acc"))):
            for key, value in (interval or {}).items():
                if key != "n":
                    figures[f"confirmed.{name}.{key}"] = value
        log_metrics(self.client, self.parent_id, figures)
        for key, value in winner["params"].items():
            self.client.set_tag(self.parent_id, f"confirmed.{key}", str(value))
        self.client.set_tag(self.parent_id, "confirmed.command", mask_password(winner["command"]))
        self.client.log_dict(self.parent_id, dict(winner), "confirmed.json")
