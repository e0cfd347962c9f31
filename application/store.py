"""The event store: one eventsourcing Application for all tenants, on PostgreSQL via psycopg 3.

The recorder is extended so that the idempotency key and the "who caused it" row are written in the
same transaction as the events: a retried command appends nothing, and every event knows its cause.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder, JSONTranscoder, StoredEvent, Transcoding
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb


class DateAsISO(Transcoding):
    type = dt.date
    name = "date_iso"

    def encode(self, obj: dt.date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> dt.date:
        return dt.date.fromisoformat(data)


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=lambda v: json.dumps(v, default=str))


class FlusiaRecorder(PostgresApplicationRecorder):
    """Appends through `flusia_append` (migrations/0007): the idempotency key, the events and the row saying who
    caused them are written by one statement, so a retried command appends nothing and every event has a cause."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            # One statement is its own transaction: autocommit saves the BEGIN and COMMIT round trips.
            if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.autocommit = True
            curs.execute(
                "SELECT flusia_append(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[], %s, %s) AS id",
                (
                    [e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
                    [e.topic for e in stored_events], [e.state for e in stored_events],
                    _jsonb(kwargs.get("cause")), _jsonb(kwargs.get("idempotency")),
                ),
                prepare=True,
            )
            return [row["id"] for row in curs.fetchall()]


def postgres_env(database_url: str, *, create_table: bool = False, pool_size: int = 10) -> dict[str, str]:
    """eventsourcing is configured by environment keys, not a URL: translate once."""
    info = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": info.get("dbname", "postgres"),
        "POSTGRES_HOST": info.get("host", "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port", "5432")),
        "POSTGRES_USER": info.get("user", "postgres"),
        "POSTGRES_PASSWORD": info.get("password", ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "10",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "y" if create_table else "n",
    }


class EventStore(Application[UUID]):
    """All aggregates of all organizations; org_id lives inside every aggregate."""

    name = "flusia"

    def __init__(self, database_url: str) -> None:
        super().__init__(env=postgres_env(database_url))

    def construct_env(self, name: str, env: Any = None):
        # Only our own settings: the process environment must not reconfigure the store behind our back.
        from eventsourcing.utils import Environment

        return Environment(name, dict(env or {}))

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def construct_recorder(self) -> ApplicationRecorder:
        return FlusiaRecorder(self.factory.datastore)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.factory.close()
