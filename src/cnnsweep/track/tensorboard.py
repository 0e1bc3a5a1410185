"""TensorBoard: per-epoch scalars in each run's folder, and for a sweep trial its HParams session, so that
`tensorboard --logdir multirun/<sweep>` lists every trial (with its swept values and final objectives) in the
HParams tab."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnnsweep.records import RunStatus
from cnnsweep.track.logger import Logger, RunInfo

EVENT_FOLDER = "tensorboard"  # <run_dir>/tensorboard: a trial's lies under its sweep folder (<sweep>/<number>/)
OBJECTIVE_PREFIX = "objective/"  # the HParams tab's metric columns: the run's final objective values
# summary.json status -> the HParams tab's session status (success, failure, running or unknown: it has no word
# for a run stopped on purpose, so a pruned or interrupted one is unknown; diverged, failed: failure)
SESSION_STATUS = {
    RunStatus.COMPLETED: "STATUS_SUCCESS", RunStatus.PRUNED: "STATUS_UNKNOWN", RunStatus.INTERRUPTED: "STATUS_UNKNOWN"
}  # fmt: skip


class TensorBoardLogger(Logger):
    """Scalars per epoch (`train/loss`, `val/acc`, `lr`, `images_per_s`, ...) under `log_dir`
    (default `<run_dir>/tensorboard`); for a sweep trial also an HParams session of its swept values."""

    def __init__(self, log_dir: str | None) -> None:  # conf/logger/tensorboard.yaml: null, the run folder's
        self.log_dir = log_dir
        self.writer: Any = None
        self.hparams: dict[str, Any] = {}

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(self.log_dir) if self.log_dir else run.run_dir / EVENT_FOLDER
        # A resumed run replays its restored epochs from 1: purge_step=1 makes TensorBoard hide what the
        # earlier invocation wrote, so each epoch shows once (the newer copy).
        self.writer = SummaryWriter(str(folder), purge_step=1 if run.resumed else None)
        if run.sweep is not None:
            self.hparams = {key: hparam_value(value) for key, value in run.sweep.params.items()}

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(scalar_tag(key), value, global_step=epoch)
        self.writer.flush()

    def end(self, status: str, summary: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            if self.hparams:
                self._write_session(status, summary.get("objectives") or {}, summary.get("epochs_run", 0))
        finally:
            self.writer.close()
            self.writer = None

    def _write_session(self, status: str, objectives: Mapping[str, Any], last_epoch: int) -> None:
        """The trial's HParams session, in its own event folder (writer.add_hparams would make a new
        sub-folder per call, named by the time): the experiment (columns), the session's values, each final
        objective as a scalar the tab reads, and the session's end with its status."""
        from torch.utils.tensorboard.summary import hparams

        columns = {f"{OBJECTIVE_PREFIX}{name}": value for name, value in objectives.items()}
        # every objective is a column, also for a failed trial: the tab takes its columns from any one trial
        experiment, session_start, _ = hparams(self.hparams, columns)  # its session end always says success
        values = {tag: value for tag, value in columns.items() if value is not None}
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end(status)):
            file_writer.add_summary(summary)
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), global_step=last_epoch)
        self.writer.flush()


def session_end(status: str) -> Any:
    """The HParams session-end summary with the run's status (torch's hparams() always writes success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    end = SessionEndInfo(status=Status.Value(SESSION_STATUS.get(status, "STATUS_FAILURE")))
    content = HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    tagged = Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))
    return Summary(value=[tagged])


def scalar_tag(key: str) -> str:
    """`val_acc` -> `val/acc`: TensorBoard groups scalars by the part before the slash (train, val, test)."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in ("train", "val", "test") and rest else key


def hparam_value(value: Any) -> Any:
    """A swept value as HParams takes it: numbers, strings and booleans as they are, anything else as text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)
