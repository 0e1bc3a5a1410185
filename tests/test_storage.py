"""The storage URL as cnnsweep shows it, a worker giving up on a database that never answers, journal files,
and stale heartbeats (a study of an older Optuna refused: test_sweep.py)."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
import sqlalchemy

from cnnsweep.errors import UserError
from cnnsweep.files import STUDY_DB
from cnnsweep.sweep.attrs import BEAT, OWNER, REASON, RETRIED_FROM
from cnnsweep.sweep.storage import StorageUnavailable, shown_url
from cnnsweep.sweep.study import Lanes, open_storage, requeue_lost_trials

from postgres import free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://cnnsweep:s3cret@db-host:5432/sweeps", "postgresql://cnnsweep:***@db-host:5432/sweeps"),
        ("postgresql+psycopg2://cnnsweep:p%40ss@db-host/sweeps", "postgresql+psycopg2://cnnsweep:***@db-host/sweeps"),
        ("postgresql://cnnsweep@db-host/sweeps", "postgresql://cnnsweep@db-host/sweeps"),  # libpq finds the password
        ("sqlite:////home/me/multirun/lr/optuna.db", "sqlite:////home/me/multirun/lr/optuna.db"),
        ("not a url://cnnsweep:s3cret@db-host/sweeps", "not a url://cnnsweep:***@db-host/sweeps"),
    ],
)
def test_a_storage_url_is_shown_without_its_password(url, shown):
    assert shown_url(url) == shown


def test_a_database_that_never_answers_is_given_up_in_one_line_naming_it_without_its_password(caplog):
    pytest.importorskip("psycopg", reason="psycopg (the dev extra) talks to PostgreSQL")
    port = free_port()  # nothing listens there: every connection is refused
    url = f"postgresql://cnnsweep:s3cret@127.0.0.1:{port}/sweeps"
    sqlalchemy.create_engine(url).dispose()  # import the driver first (about 1 s on a busy machine): time the waits
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cnnsweep.sweep.storage"), pytest.raises(StorageUnavailable) as raised:
        open_storage(url, patience_s=2)
    gave_up_s = time.monotonic() - began

    message = str(raised.value)
    assert message.startswith(f"database postgresql://cnnsweep:***@127.0.0.1:{port}/sweeps unreachable for 2 s (")
    assert "Connection refused" in message and message.endswith("rerun the same command to continue the study")
    assert "\n" not in message and "s3cret" not in message
    assert 2 <= gave_up_s < 5
    waits = [record.getMessage() for record in caplog.records]
    assert len(waits) == 2  # waited 1 s, then the 1 s left of the 2
    assert all("unreachable" in wait and "retrying in 1 s" in wait for wait in waits)
    assert not any("s3cret" in wait or "\n" in wait for wait in waits)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("journal://study.log", "names no absolute file: write journal:///abs/path/study.log"),
        ("journal://relative/study.log", "names no absolute file"),
    ],
)
def test_a_journal_url_without_an_absolute_file_is_refused(url, message):
    with pytest.raises(UserError, match=message):
        open_storage(url)


def test_the_rdb_storage_still_lists_stale_trials_for_us(tmp_path):
    """study.Lanes.stale_trial_ids calls RDBStorage's private `_get_stale_trial_ids`: this fails if it goes."""
    storage = open_storage(f"sqlite:///{tmp_path / STUDY_DB}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    [beating, silent] = [study.ask(), study.ask()]
    lanes = Lanes(storage, 1, 1)
    study_id = storage.get_study_id_from_name("s")
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in (beating, silent)]
    lanes.record_heartbeat(ids[1])
    assert lanes.stale_trial_ids(study_id) == set()
    time.sleep(2.2)  # SQLite's clock has whole seconds
    lanes.record_heartbeat(ids[0])
    assert lanes.stale_trial_ids(study_id) == {ids[1]}  # a trial that never beat is the owner check's to judge


def test_a_lost_trial_in_a_journal_is_failed_by_its_stale_heartbeat_and_requeued(tmp_path):
    storage = open_storage(f"journal://{tmp_path / 'sweep' / 'study.log'}")
    study = optuna.create_study(storage=storage, study_name="j", direction="maximize")
    lanes = Lanes(storage, heartbeat_interval=1, grace_period=2)
    trials = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(2)]
    study_id = storage.get_study_id_from_name("j")
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    for trial_id in ids:  # both run on another host, which this one cannot ask about its processes
        storage.set_trial_system_attr(trial_id, OWNER, "elsewhere.example:12345")
        lanes.record_heartbeat(trial_id)
    storage.set_trial_system_attr(ids[1], BEAT, time.time() - 5)  # its worker stopped beating 5 s ago

    assert requeue_lost_trials(study, lanes) == [1]
    after = optuna.load_study(study_name="j", storage=storage).trials
    assert [t.state.name for t in after] == ["RUNNING", "FAIL", "WAITING"]
    assert after[1].user_attrs[REASON] == "interrupted: worker elsewhere.example:12345 stopped"
    assert after[2].params == after[1].params and after[2].system_attrs[RETRIED_FROM] == 1
    assert OWNER not in after[2].system_attrs and BEAT not in after[2].system_attrs
