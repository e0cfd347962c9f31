"""The event store: one eventsourcing Application for all tenants, on PostgreSQL via psycopg 3.

The recorder is extended so that the idempotency key and the "who caused it" row are written in the
same transaction as the events: a retried command appends nothing, and every event knows its cause.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from secrets import token_bytes
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import (ApplicationRecorder, IntegrityError, JSONTranscoder, Mapper, OperationalError,
                                      Recording, StoredEvent, Transcoding)
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from application import personal_data
from projections.db_connections import connection_lost, heal


class DateAsISO(Transcoding):
    type = dt.date
    name = "date_iso"

    def encode(self, obj: dt.date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> dt.date:
        return dt.date.fromisoformat(data)


APPEND_LOCK = 72_000_002  # serialises appends: ids are drawn under it and it is held until commit


@lru_cache(maxsize=64)
def append_statement(events: int, with_cause: bool, with_key: bool, side_writes: tuple[str, ...] = ()) -> str:
    """One statement that appends `events` events, with the row saying who caused them, the idempotency key and
    any side writes (data-modifying SQL that must commit with the events or not at all, e.g. attachment content).

    Appends take one transaction-scoped advisory lock before drawing notification ids and keep it until they
    commit, so commit order equals notification order and a follower never passes over an id that commits later
    (the guarantee eventsourcing gets from locking the table). A repeated idempotency key or a concurrent write
    of the same aggregate version violates a unique index: the whole statement, events included, is refused.
    Each event records its organization (the cause's), so consumers can isolate one organization's events."""
    ctes = [f"serial AS (SELECT pg_advisory_xact_lock({APPEND_LOCK}))"]
    if with_key:
        ctes.append(
            "idem AS (INSERT INTO idempotency_keys (organization_id, key, tool, request_hash, result)"
            " VALUES (%s, %s, %s, %s, %s))"
        )
    ctes += [f"side{i} AS ({sql})" for i, sql in enumerate(side_writes)]
    if events:
        values = ", ".join(["(%s::uuid, %s::bigint, %s::text, %s::bytea)"] * events)
        ctes.append(
            "ins AS (INSERT INTO stored_events (originator_id, originator_version, topic, state, organization_id)"
            f" SELECT v.*, %s::uuid FROM serial, (VALUES {values}) AS v RETURNING notification_id)"
        )
        if with_cause:
            ctes.append(
                "cause AS (INSERT INTO event_causes (first_notification_id, last_notification_id, organization_id,"
                " user_id, token_id, oauth_client_id, correlation_id, tool, workflow_run_id, trace_id, span_id,"
                " parent_span_id)"
                " SELECT min(notification_id), max(notification_id), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM ins)"
            )
        tail = "SELECT notification_id, pg_notify('stored_events', '') FROM ins ORDER BY notification_id"
    else:
        tail = "SELECT NULL::bigint AS notification_id FROM serial WHERE false"
    return "WITH " + ",\n".join(ctes) + "\n" + tail


class AppendOutcomeUnknown(OperationalError):
    """The connection broke while an append was running and the database could not be asked in time whether it
    committed: the events may or may not be stored. A repeat with the same idempotency key settles it."""


RESOLVE_SECONDS = 8.0
"""How long an append whose connection broke waits for the database to say whether it committed (a restart of
PostgreSQL takes a second or two) before answering that its outcome is unknown."""


@dataclass(frozen=True)
class SideWrite:
    """SQL (INSERT/UPDATE/DELETE, no RETURNING) committed in the same statement as a command's events."""

    sql: str
    params: tuple[Any, ...]


class FlusiaRecorder(PostgresApplicationRecorder):
    """Appends with one statement (see `append_statement`): the idempotency key, the events and the row saying
    who caused them are written together, so a retried command appends nothing and every event has a cause.

    Appends are serialised in the database anyway (the advisory lock), so they share one dedicated autocommit
    connection instead of borrowing from the pool: measured, the pool's checkout and return were a fifth of an
    append. Reads (loading aggregates, notifications) keep using the library's pool."""

    def __init__(self, datastore: Any, *, conninfo: str) -> None:
        super().__init__(datastore)
        self._conninfo = conninfo
        self._append_conn: psycopg.Connection | None = None
        self._session: tuple[int, Any] = (0, None)
        self._append_lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        if self._append_conn is None or self._append_conn.closed or self._append_conn.broken:
            conn = psycopg.connect(self._conninfo, autocommit=True, row_factory=tuple_row, connect_timeout=5)
            # The session's identity, to know for sure when it is over should the connection break mid-append.
            self._session = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
            self._append_conn = conn
        return self._append_conn

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        cause, key = kwargs.get("cause"), kwargs.get("idempotency")
        side_writes: Sequence[SideWrite] = kwargs.get("side_writes") or ()
        params: list[Any] = []
        if key is not None:
            params += [key["organization_id"], key["key"], key["tool"], key["request_hash"], Jsonb(key["result"])]
        for side in side_writes:
            params += side.params
        if stored_events:
            params.append(cause["organization_id"] if cause is not None else kwargs.get("organization_id"))
        for e in stored_events:
            params += [e.originator_id, e.originator_version, e.topic, e.state]
        if cause is not None and stored_events:
            params += [cause["organization_id"], cause["user_id"], cause["token_id"], cause["oauth_client_id"],
                       cause["correlation_id"], cause["tool"],
                       cause.get("workflow_run_id")]  # the workflow run acting, if any (workflow_engine)
            trace = cause.get("trace")  # the request's W3C trace context, if any (application/principal.py)
            params += (trace.trace_id, trace.span_id, trace.parent_id) if trace is not None else (None, None, None)
        sql = append_statement(len(stored_events), cause is not None, key is not None,
                               tuple(side.sql for side in side_writes))
        # psycopg errors are mapped as eventsourcing's own recorder maps them (the service retries conflicts).
        # A failed append is not retried here: it may have committed before the connection broke.
        with self._append_lock:
            sending = False
            try:
                conn = self._connection()
                sending = True
                rows = conn.execute(sql, params, prepare=True).fetchall()
            except psycopg.IntegrityError as e:
                raise IntegrityError(str(e)) from e
            except psycopg.OperationalError as e:
                if not sending or not connection_lost(e):  # never sent, or refused by the server: nothing stored
                    raise OperationalError(str(e)) from e
                rows = self._after_lost_append(e, stored_events, key, sql, params)
        return [row[0] for row in rows]

    def _after_lost_append(self, error: Exception, stored_events: Sequence[StoredEvent], key: dict[str, Any] | None,
                           sql: str, params: list[Any]) -> list[Any]:
        """The connection broke during the append (a restart or crash of PostgreSQL, a killed session): it may have
        committed or not. Once the old session is over (ended here if it lingers), the database says which: the
        first event, byte for byte, or else the idempotency key, is stored or not. If it is, the append's rows are
        answered as if nothing had happened; if not, the append is done now on a new connection (it cannot have
        half-happened: one statement). When the database does not answer within RESOLVE_SECONDS,
        AppendOutcomeUnknown."""
        old_pid, old_start = self._session
        self._append_conn.close()  # type: ignore[union-attr]
        self._append_conn = None
        deadline = time.monotonic() + RESOLVE_SECONDS
        last: Exception = error
        while time.monotonic() < deadline:
            try:
                conn = self._connection()
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s"
                             " AND backend_start = %s", (old_pid, old_start))
                while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
                                   (old_pid, old_start)).fetchone() is not None:
                    if time.monotonic() > deadline:
                        raise AppendOutcomeUnknown(f"the broken append's session {old_pid} did not end") from error
                    time.sleep(0.02)
                if stored_events:
                    first = stored_events[0]
                    found = conn.execute(
                        "SELECT 1 FROM stored_events WHERE originator_id = %s AND originator_version = %s"
                        " AND state = %s", (first.originator_id, first.originator_version, first.state)).fetchone()
                elif key is not None:
                    found = conn.execute(
                        "SELECT 1 FROM idempotency_keys WHERE organization_id = %s AND key = %s AND request_hash = %s",
                        (key["organization_id"], key["key"], key["request_hash"])).fetchone()
                else:
                    raise AppendOutcomeUnknown("nothing to look for: no events and no idempotency key") from error
                if found is None:  # not stored: do it now (should this break too, this session is the one to ask)
                    old_pid, old_start = self._session
                    return conn.execute(sql, params, prepare=True).fetchall()
                if not stored_events:
                    return []
                ids = conn.execute(
                    "SELECT e.notification_id FROM stored_events e JOIN unnest(%s::uuid[], %s::bigint[]) AS k(id, v)"
                    " ON e.originator_id = k.id AND e.originator_version = k.v ORDER BY e.notification_id",
                    ([e.originator_id for e in stored_events], [e.originator_version for e in stored_events])
                ).fetchall()
                return ids
            except psycopg.IntegrityError as e:  # the retried append met a concurrent writer: an ordinary conflict
                raise IntegrityError(str(e)) from e
            except AppendOutcomeUnknown:
                raise
            except psycopg.OperationalError as e:
                if not connection_lost(e):
                    raise OperationalError(str(e)) from e
                last = e
                if self._append_conn is not None:
                    self._append_conn.close()
                    self._append_conn = None
                time.sleep(0.1)
        raise AppendOutcomeUnknown(f"the database did not answer within {RESOLVE_SECONDS:g} s") from last

    def close(self) -> None:
        with self._append_lock:
            if self._append_conn is not None:
                self._append_conn.close()
                self._append_conn = None


def postgres_env(database_url: str, *, create_table: bool = False, pool_size: int = 2, max_overflow: int = 18
                 ) -> dict[str, str]:
    """eventsourcing is configured by environment keys, not a URL: translate once. Its pool keeps `pool_size`
    connections open and opens up to `max_overflow` more under load (closed again when idle)."""
    info = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": info.get("dbname", "postgres"),
        "POSTGRES_HOST": info.get("host", "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port", "5432")),
        "POSTGRES_USER": info.get("user", "postgres"),
        "POSTGRES_PASSWORD": info.get("password", ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "y" if create_table else "n",
    }


NEW_KEY = "INSERT INTO personal_data_keys (id, organization_id, subject_id, sealed_key) VALUES (%s, %s, %s, %s)"


class _NewSubjectKeys:
    """The key ring as `personal_data.keys_for` sees it during one save. A subject created by this very save (its
    aggregate's first event is among the events: a new lead) cannot have a key yet, so its key is made here and its
    row is inserted by the append statement itself, a side write: a new lead is one commit, not a key transaction
    and then the append (measured: the key's own transaction was about half of a create_lead's command). Without
    ON CONFLICT: were the row refused, the events sealed with it would be refused with it. Every other subject's
    key is the key ring's (looked up, created on first use)."""

    def __init__(self, keyring: personal_data.KeyRing, created: set[UUID]) -> None:
        self.keyring = keyring
        self.created = created
        self.side_writes: list[SideWrite] = []

    def active_key(self, org_id: UUID, subject_id: UUID) -> tuple[UUID, bytes]:
        if subject_id not in self.created:
            return self.keyring.active_key(org_id, subject_id)
        key_id, key = uuid4(), token_bytes(32)
        sealed_key = personal_data.sealed.encrypt(self._server_key(), base64.urlsafe_b64encode(key).decode(),
                                                  context=personal_data._context(org_id, subject_id, key_id))
        self.side_writes.append(SideWrite(NEW_KEY, (key_id, org_id, subject_id, sealed_key)))
        return key_id, key

    def _server_key(self) -> bytes:
        try:
            return personal_data.sealed.server_key()
        except personal_data.sealed.SecretUnavailable:  # the key lives in the database (no file, no environment)
            with self.keyring.datastore.transaction(commit=True) as cur:
                return personal_data.sealed.server_key(cur)


class EventStore(Application[UUID]):
    """All aggregates of all organizations; org_id lives inside every aggregate."""

    name = "flusia"

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        super().__init__(env=postgres_env(database_url))
        heal(self.factory.datastore.pool)  # type: ignore[attr-defined]  # no stale connection after a restart

    def construct_env(self, name: str, env: Any = None):
        # Only our own settings: the process environment must not reconfigure the store behind our back.
        from eventsourcing.utils import Environment

        return Environment(name, dict(env or {}))

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())
        transcoder.register(personal_data.PersonalTranscoding(self.keyring))

    def construct_mapper(self) -> Mapper[UUID]:
        self.keyring = personal_data.KeyRing(self.factory.datastore)  # type: ignore[attr-defined]
        return personal_data.PersonalDataMapper(self.construct_transcoder(), self.keyring)

    def save(self, *aggregates: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Append the pending events of our aggregates in one statement (kwargs: `cause`, `idempotency`,
        `side_writes`, and `organization_id` for events appended without a cause).

        The library's save() also takes bare events, takes snapshots and notifies in-process followers; none of
        that is used here, and its runtime Protocol checks measured a tenth of a millisecond per command."""
        events = [event for aggregate in aggregates for event in aggregate.collect_events()]
        created = {e.originator_id for e in events if e.originator_version == 1}
        ring = _NewSubjectKeys(self.keyring, created) if created else self.keyring
        keys = personal_data.keys_for(ring, aggregates, events)  # type: ignore[arg-type]
        if created and ring.side_writes:  # type: ignore[union-attr]
            kwargs["side_writes"] = [*(kwargs.get("side_writes") or ()), *ring.side_writes]  # type: ignore[union-attr]
        token = personal_data.sealing.set(keys) if keys else None
        try:
            recordings = self.events.put(events, **kwargs)
        finally:
            if token is not None:
                personal_data.sealing.reset(token)
        if any(r.notification.topic == personal_data.ERASURE_TOPIC for r in recordings):
            self.keyring.forget()
        return recordings

    def construct_recorder(self) -> ApplicationRecorder:
        return FlusiaRecorder(self.factory.datastore, conninfo=self.database_url)  # type: ignore[attr-defined]

    def check_connections(self) -> None:
        """After a lost connection: replace the pooled connections that no longer work (PostgreSQL restarted), so
        that the next readers do not each meet one. The append connection replaces itself."""
        self.factory.datastore.pool.check()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.keyring.close()
        self.recorder.close()  # type: ignore[attr-defined]
        self.factory.close()
