"""The storage URL as cnnsweep shows it, and a worker giving up on a database that never answers."""

from __future__ import annotations

import logging
import time

import pytest
from postgres import free_port

from cnnsweep.storage import StorageUnavailable, shown_url
from cnnsweep.study import open_storage


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
    pytest.importorskip("psycopg2", reason="psycopg2-binary (the dev extra) talks to PostgreSQL")
    port = free_port()  # nothing listens there: every connection is refused
    url = f"postgresql://cnnsweep:s3cret@127.0.0.1:{port}/sweeps"
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cnnsweep.storage"), pytest.raises(StorageUnavailable) as raised:
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
