"""A throwaway PostgreSQL server on loopback for the distributed-sweep tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a server with its data in a new temporary folder; yields its URL, then stops it and deletes
    the folder. Raises RuntimeError saying why it could not start."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) here: apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        if not shutil.which("runuser"):
            raise RuntimeError("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="cnnsweep-postgres-"))  # directly in /tmp: the server user can reach it
    if as_user:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    port = free_port()
    run = dict(capture_output=True, text=True, timeout=120)
    made = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], **run)
    if made.returncode:
        raise RuntimeError(f"initdb failed: {made.stderr.strip()[-300:]}")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    log = folder / "server.log"  # the server's output goes here, not into our pipes (which it would hold open)
    started = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], **run)
    if started.returncode:
        raise RuntimeError(f"pg_ctl start failed: {(started.stderr or started.stdout).strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)
