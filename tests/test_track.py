"""Experiment trackers (cnnsweep.track), each logger driven by hand: what TensorBoard's own reader and MLflow's
own client read back; a tracker that cannot be reached; the logger config group. Real runs, a killed run resumed
and sweeps with trackers are in test_track_runs.py."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnnsweep.artifacts import write_json
from cnnsweep.files import BEST_CHECKPOINT
from cnnsweep.records import RunFolder
from cnnsweep.track import (
    Logger,
    Loggers,
    MLflowLogger,
    RunInfo,
    SweepInfo,
    TensorBoardLogger,
    build_loggers,
    flatten,
    mask_password,
)
from cnnsweep.track.mlflow import RUN_ID_FILE, read_id

from helpers import REPO

CONFIG = {
    "seed": 1,
    "objective": "val_acc",
    "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9},
    "trainer": {"epochs": 3, "milestones": [2, 3]},
    "note": "x" * 7000,  # longer than an MLflow param value may be
}
SUMMARY = {
    "status": "completed", "n_params": 18970, "epochs_run": 3, "objective": "val_acc", "objective_value": 0.9,
    "objectives": {"val_acc": 0.9}, "final_val_acc": 0.9, "best_val_acc": 0.91, "wall_time_s": 12.5,
    "versions": {"torch": "2"},
}  # fmt: skip


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "lr": 0.05, "train_loss": 1.0 / epoch, "val_acc": 0.8 + epoch / 100, "images_per_s": 900.0}


def write_run_files(run_dir: Path) -> None:
    """What a finished run leaves in its folder, as far as the trackers upload it."""
    folder = RunFolder(run_dir)
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(folder.summary, SUMMARY)
    folder.write_metrics([{"epoch": 1, "val_acc": 0.81}])
    folder.checkpoint(BEST_CHECKPOINT).write_bytes(b"checkpoint")


def run_info(run_dir: Path, resumed: bool = False, sweep: SweepInfo | None = None) -> RunInfo:
    config = CONFIG
    if sweep is not None:  # a trial's config holds its swept values
        config = OmegaConf.to_container(OmegaConf.merge(CONFIG, OmegaConf.from_dotlist(
            [f"{key}={value}" for key, value in sweep.params.items()])))  # fmt: skip
    return RunInfo(run_dir=run_dir, config=config, n_params=18970, name=run_dir.name, resumed=resumed, sweep=sweep)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the module: making one (its schema migrations) takes seconds."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def test_mask_password_hides_only_the_password():
    assert mask_password("http://me:s3cret@host:5000/path") == "http://me:***@host:5000/path"
    assert mask_password("postgresql://u:p@ss@db/x and https://a:b@c") == "postgresql://u:***@db/x and https://a:***@c"
    assert mask_password("sqlite:///outputs/mlflow.db") == "sqlite:///outputs/mlflow.db"
    assert mask_password("http://host:5000") == "http://host:5000"  # a port is no password


def test_flatten_dots_nested_keys_and_keeps_lists_whole():
    assert flatten(CONFIG)["optimizer.lr"] == 0.05
    assert flatten(CONFIG)["trainer.milestones"] == [2, 3]
    assert flatten({"a": {}, "b": None}) == {"a": {}, "b": None}


# ---------------------------------------------------------------- the logger group


@pytest.fixture
def logger_conf(tmp_path: Path) -> Path:
    """The real conf/logger group under a primary config whose defaults list holds `logger: none`, as
    train.yaml's will."""
    shutil.copytree(REPO / "conf" / "logger", tmp_path / "logger")
    (tmp_path / "main.yaml").write_text("defaults:\n  - logger: none\n  - _self_\nseed: 1\n")
    (tmp_path / "logger" / "mine.yaml").write_text("mine:\n  _target_: test_track.CountingLogger\n  label: hi\n")
    return tmp_path


class CountingLogger(Logger):
    """A user's own logger, built by `_target_` from its own config option."""

    def __init__(self, label: str) -> None:
        self.label, self.calls = label, []

    def log_epoch(self, epoch, metrics):
        self.calls.append(epoch)


def compose_logger(config_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir)):
        return compose("main", overrides=overrides).logger


@pytest.mark.parametrize(
    ("overrides", "made"),
    [
        ([], []),
        (["logger=tensorboard"], [TensorBoardLogger]),
        (["logger=[tensorboard,mlflow]"], [TensorBoardLogger, MLflowLogger]),
        (["logger=[mlflow,mine]", "logger.mlflow.experiment=x"], [MLflowLogger, CountingLogger]),
        (["logger=[tensorboard,mlflow]", "logger.mlflow=null"], [TensorBoardLogger]),
    ],
)
def test_the_logger_group_builds_each_chosen_logger(logger_conf, overrides, made):
    loggers = build_loggers(compose_logger(logger_conf, overrides))
    assert [type(logger) for logger in loggers.loggers] == made
    if MLflowLogger in made and "logger.mlflow.experiment=x" in overrides:
        assert loggers.loggers[0].experiment == "x" and loggers.loggers[1].label == "hi"


# ---------------------------------------------------------------- TensorBoard


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def test_tensorboard_writes_scalars_per_epoch_and_a_trials_hparams_session(tmp_path):
    from tensorboard.plugins.hparams import metadata

    run_dir = tmp_path / "multirun" / "lr" / "3"
    sweep = SweepInfo(tmp_path / "multirun" / "lr", "lr", 3, {"optimizer.lr": 0.05, "model": "tiny"})
    logger = TensorBoardLogger(log_dir=None)
    logger.start(run_info(run_dir, sweep=sweep))
    for epoch in (1, 2, 3):
        logger.log_epoch(epoch, epoch_metrics(epoch))
    logger.end("completed", SUMMARY)

    events = read_events(run_dir / "tensorboard")
    assert {"train/loss", "val/acc", "lr", "images_per_s", "objective/val_acc"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("val/acc")] == [(1, 0.81), (2, 0.82), (3, 0.83)]
    assert [(e.step, e.value) for e in events.Scalars("objective/val_acc")] == [(3, pytest.approx(0.9))]
    plugin = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(plugin[metadata.EXPERIMENT_TAG])
    assert sorted(info.name for info in experiment.hparam_infos) == ["model", "optimizer.lr"]
    assert [info.name.tag for info in experiment.metric_infos] == ["objective/val_acc"]
    start = metadata.parse_session_start_info_plugin_data(plugin[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["optimizer.lr"].number_value == 0.05 and start.hparams["model"].string_value == "tiny"
    end = metadata.parse_session_end_info_plugin_data(plugin[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS


@pytest.mark.parametrize(
    ("status", "shown"),
    [("pruned", "STATUS_UNKNOWN"), ("interrupted", "STATUS_UNKNOWN"), ("diverged", "STATUS_FAILURE")],
)
def test_a_trial_that_did_not_complete_ends_its_hparams_session_with_a_status_tensorboard_has(tmp_path, status, shown):
    from tensorboard.plugins.hparams import api_pb2, metadata

    run_dir = tmp_path / "lr" / "4"
    logger = Loggers([TensorBoardLogger(log_dir=None)])
    logger.start(run_info(run_dir, sweep=SweepInfo(tmp_path / "lr", "lr", 4, {"optimizer.lr": 0.05})))
    logger.log_epoch(1, epoch_metrics(1))
    logger.end(status, SUMMARY | {"status": status, "epochs_run": 1})
    assert logger.failed == {}
    plugin = read_events(run_dir / "tensorboard").PluginTagToContent(metadata.PLUGIN_NAME)
    end = metadata.parse_session_end_info_plugin_data(plugin[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.Status.Value(shown)


def test_a_resumed_tensorboard_run_shows_each_epoch_once(tmp_path):
    first = TensorBoardLogger(log_dir=None)
    first.start(run_info(tmp_path))
    for epoch in (1, 2):
        first.log_epoch(epoch, epoch_metrics(epoch))
    first.writer.close()  # killed: no end()
    again = TensorBoardLogger(log_dir=None)
    again.start(run_info(tmp_path, resumed=True))
    for epoch in (1, 2, 3):  # the restored epochs replayed, then the new one
        again.log_epoch(epoch, epoch_metrics(epoch))
    again.end("completed", SUMMARY)
    assert [e.step for e in read_events(tmp_path / "tensorboard").Scalars("train/loss")] == [1, 2, 3]


# ---------------------------------------------------------------- MLflow


def test_mlflow_records_params_metrics_artifacts_and_status(tmp_path, tracking_uri, client):
    write_run_files(tmp_path)
    logger = MLflowLogger(tracking_uri=tracking_uri, experiment="single", log_checkpoint=True)
    logger.start(run_info(tmp_path))
    for epoch in (1, 2, 3):
        logger.log_epoch(epoch, epoch_metrics(epoch))
    logger.end("completed", SUMMARY)

    run = client.get_run(read_id(tmp_path / RUN_ID_FILE))
    assert run.info.status == "FINISHED" and run.data.tags["cnnsweep.status"] == "completed"
    params = run.data.params
    assert params["optimizer.lr"] == "0.05" and params["trainer.milestones"] == "[2, 3]"
    assert params["n_params"] == "18970" and len(params["note"]) == 6000 and params["note"].endswith("(7000 chars)")
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 0.81), (2, 0.82), (3, 0.83)]
    assert run.data.metrics["summary.objective.val_acc"] == 0.9 and run.data.metrics["summary.wall_time_s"] == 12.5
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert uploaded == {"summary.json", "metrics.csv", "best.pt"}


# ---------------------------------------------------------------- trackers that fail


def test_an_unreachable_server_is_one_warning_and_no_password(tmp_path, caplog, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # unset, and unset again afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    counting = CountingLogger("kept")
    loggers = Loggers(
        [
            MLflowLogger(tracking_uri="http://me:s3cret@127.0.0.1:9", experiment="cnnsweep", log_checkpoint=True),
            counting,
        ]
    )
    with caplog.at_level(logging.WARNING):
        loggers.start(run_info(tmp_path))
        for epoch in (1, 2):
            loggers.log_epoch(epoch, epoch_metrics(epoch))
        loggers.end("completed", SUMMARY)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "cnnsweep.track.logger"
    ]
    assert len(warnings) == 1 and warnings[0].startswith("MLflowLogger: start failed ("), warnings
    assert counting.calls == [1, 2]  # the other logger went on
    said = caplog.text + "".join(capsys.readouterr())
    assert "s3cret" not in said
    assert not (tmp_path / RUN_ID_FILE).exists()


def test_a_password_in_the_config_is_not_stored_as_a_param(tmp_path, tracking_uri, client):
    config = CONFIG | {"logger": {"mlflow": {"tracking_uri": "https://me:s3cret@mlflow.example.org"}}}
    logger = MLflowLogger(tracking_uri=tracking_uri, experiment="cnnsweep", log_checkpoint=True)
    logger.start(RunInfo(tmp_path, config, 18970, "masked"))
    logger.end("completed", SUMMARY)
    params = client.get_run(logger.run_id).data.params
    assert params["logger.mlflow.tracking_uri"] == "https://me:***@mlflow.example.org"
    assert not any("s3cret" in value for value in params.values())


def test_an_unwritable_event_folder_is_one_warning_and_the_calls_after_it_do_nothing(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    loggers = Loggers([TensorBoardLogger(log_dir=str(tmp_path / "file" / "events"))])
    with caplog.at_level(logging.WARNING):
        loggers.start(run_info(tmp_path))
        loggers.log_epoch(1, epoch_metrics(1))
        loggers.end("completed", SUMMARY)
    assert len(caplog.records) == 1 and "TensorBoardLogger: start failed" in caplog.records[0].getMessage()
    assert loggers.loggers == [] and list(loggers.failed) == ["TensorBoardLogger"]
