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

SUPERUSER = "postgres"


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


class Server:
    """A PostgreSQL server with its data in a folder of its own, listening on a loopback port.

    Its superuser connects without a password through the server's Unix socket (in `folder`); over TCP
    (the URLs the tests hand to workers) it asks for what `host_auth` says: `trust` (no password) or
    `scram-sha-256` (the password of the user, see `create_user`).
    """

    def __init__(self, folder: Path, pg_ctl: str, as_user: list[str]) -> None:
        self.folder, self.pg_ctl, self.as_user = folder, pg_ctl, as_user
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"  # for host_auth=trust

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), *args], capture_output=True, text=True, timeout=120
        )

    def start(self) -> None:
        """Start (or restart) the server on its port, with the data it has."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = self.folder / "server.log"  # the server's output goes here, not into our pipes (which it would hold open)
        started = self._pg_ctl("-l", str(log), "-o", options, "-w", "start")
        if started.returncode:
            raise RuntimeError(f"pg_ctl start failed: {(started.stderr or started.stdout).strip()[-300:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: `fast` ends every session (as a restart does), `immediate` crashes."""
        stopped = self._pg_ctl("-m", mode, "-w", "stop")
        if stopped.returncode:
            raise RuntimeError(f"pg_ctl stop failed: {(stopped.stderr or stopped.stdout).strip()[-300:]}")

    def create_user(self, name: str, password: str) -> str:
        """A login role with `password` that owns a new database of its name; returns its URL (password included)."""
        import psycopg
        from psycopg import sql

        # CREATE DATABASE cannot run inside a transaction
        connection = psycopg.connect(
            host=str(self.folder), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )
        try:
            with connection.cursor() as cursor:  # (psycopg 3 binds parameters on the server: none in CREATE ROLE)
                role = sql.Identifier(name)
                cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
                cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
        finally:
            connection.close()
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{name}"


@contextmanager
def running_server(host_auth: str = "trust") -> Iterator[Server]:
    """Start a server with its data in a new temporary folder; yields it, then stops it and deletes the
    folder. `host_auth` is initdb's --auth-host (TCP connections). Raises RuntimeError saying why it
    could not start."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) here: apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        if not shutil.which("runuser"):
            raise RuntimeError("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="cnnsweep-postgres-"))  # directly in /tmp: the server user can reach it
    try:
        if as_user:
            shutil.chown(folder, "postgres")
        server = Server(folder, pg_ctl, as_user)
        auth = ["--auth-local=trust", f"--auth-host={host_auth}"]
        made = subprocess.run(
            [*as_user, initdb, "-D", str(server.data), *auth, "-U", SUPERUSER],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if made.returncode:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()[-300:]}")
        server.start()
        try:
            yield server
        finally:
            server._pg_ctl("-m", "immediate", "stop")  # also when a test left it stopped
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def throwaway_server() -> Iterator[str]:
    """A server that trusts every loopback connection; yields its superuser's URL."""
    with running_server() as server:
        yield server.url
