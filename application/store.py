"""The event store: one eventsourcing Application for all tenants, on PostgreSQL via psycopg 3.

The recorder is extended so that the idempotency key and the "who caused it" row are written in the
same transaction as the events: a retried command appends nothing, and every event knows its cause.
"""

from __future__ import annotations

import datetime as dt
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


class FlusiaRecorder(PostgresApplicationRecorder):
    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        key = kwargs.get("idempotency")
        if key is not None:
            curs.execute(
                "INSERT INTO idempotency_keys (organization_id, key, tool, request_hash, result) VALUES (%s, %s, %s, %s, %s)",
                (key["organization_id"], key["key"], key["tool"], key["request_hash"], Jsonb(key["result"])),
            )

    def _fetch_ids_after_insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any):
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        cause = kwargs.get("cause")
        if cause is not None and ids:
            curs.execute(
                "INSERT INTO event_causes (first_notification_id, last_notification_id, organization_id, user_id,"
                " token_id, oauth_client_id, correlation_id, tool) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (ids[0], ids[-1], cause["organization_id"], cause["user_id"], cause["token_id"],
                 cause["oauth_client_id"], cause["correlation_id"], cause["tool"]),
            )
        return ids


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
