"""The projector: batched catch-up, then live following of the event store, exactly once.

Each projection has a row in `projection_tracking`. A batch of up to `batch_size` events is applied and
the position advanced in one transaction, which starts by locking that tracking row: killing the
projector at any moment loses nothing and applies nothing twice, and a concurrent rebuild simply
waits. After each commit the new position is announced on the `flusia_projections` channel so that
writers can wait for their own events (read-your-writes). An advisory lock per projection keeps one
active instance among several `flusia project` / `flusia serve` processes.

Failures are isolated per organization. If a batch fails, it is applied again event by event; an event that
fails is parked (`consumer_parked`: consumer, organization, notification id, error class and SQLSTATE,
attempts, first/last seen) and that organization's later events wait behind it, so its read model never
skips an event and stays consistent; every other organization goes on at full speed. Parked organizations
are retried with back-off (2 s doubling to about an hour) or at once by `flusia projections retry`: their
events are replayed in order, exactly once, in one transaction with the tracking row. Isolation stops at the
organization, not the entity, because read models join entities of one organization (a deal row copies its
client's name): replaying only one entity's events could leave its neighbours stale.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import psycopg
from eventsourcing.domain import CanInitAggregate
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool

from domain.base import TenantAggregate
from projections.base import Projection, aggregate_of
from projections.db_connections import connection_lost

log = logging.getLogger("flusia.projector")
CHANNEL = "flusia_projections"
EVENTS_CHANNEL = "stored_events"
"""Where every append announces itself (the event store's recorder channel)."""
NO_ORGANIZATION = UUID(int=0)
"""Parking key for an event without an organization (appended outside the tool path)."""
# Commit order equals notification order (appends lock the table), so every event up to the head read here is
# final: a projection may skip past events it does not handle and still never miss one. Events of organizations
# parked for this consumer are left out: they wait behind their parked event and are replayed by `retry_parked`.
NEXT_BATCH = """
WITH tracking AS (SELECT position FROM projection_tracking WHERE name = %(name)s FOR UPDATE),
     store AS (SELECT coalesce(max(notification_id), 0) AS head FROM stored_events),
     parked AS (SELECT coalesce(array_agg(organization_id), '{}') AS orgs FROM consumer_parked WHERE consumer = %(name)s)
SELECT tracking.position, store.head, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,
       e.organization_id
FROM tracking CROSS JOIN store CROSS JOIN parked
LEFT JOIN LATERAL (
    SELECT notification_id, originator_id, originator_version, topic, state, organization_id FROM stored_events
    WHERE notification_id > tracking.position AND notification_id <= store.head AND topic = ANY(%(topics)s)
      AND coalesce(organization_id, %(none)s) <> ALL(parked.orgs)
    ORDER BY notification_id LIMIT %(limit)s
) e ON true
ORDER BY e.notification_id
"""
PARKED_EVENTS = """
SELECT notification_id, originator_id, originator_version, topic, state, organization_id FROM stored_events
WHERE organization_id IS NOT DISTINCT FROM %(org)s AND notification_id >= %(from)s AND notification_id <= %(to)s
  AND topic = ANY(%(topics)s)
ORDER BY notification_id LIMIT %(limit)s
"""
PARK = """
INSERT INTO consumer_parked (consumer, organization_id, notification_id, originator_id, topic, error_class, error_code,
                             next_attempt_at)
VALUES (%(consumer)s, %(org)s, %(id)s, %(originator)s, %(topic)s, %(error_class)s, %(error_code)s,
        now() + make_interval(secs => %(delay)s))
ON CONFLICT (consumer, organization_id) DO UPDATE SET
    notification_id = EXCLUDED.notification_id, originator_id = EXCLUDED.originator_id, topic = EXCLUDED.topic,
    error_class = EXCLUDED.error_class, error_code = EXCLUDED.error_code, attempts = consumer_parked.attempts + 1,
    last_seen = now(), next_attempt_at = now() + make_interval(secs => %(delay)s * 2 ^ least(consumer_parked.attempts, 11))
"""
FIRST_RETRY_SECONDS = 2.0
"""Back-off of a parked event: 2 s, then doubling per attempt up to about an hour."""
LOCK_RETRY_SECONDS = 1.0
"""How often a standby tries the advisory locks of projections another process applies: it takes over about this
long after that process dies (its session ends, and its locks with it)."""


def advisory_key(name: str) -> int:
    return zlib.crc32(f"flusia-projection:{name}".encode())


@dataclass(frozen=True)
class Parked:
    """An event a consumer could not handle; its organization's later events wait behind it."""

    consumer: str
    organization_id: UUID
    notification_id: int
    error_class: str


class ConsumerListener(Protocol):
    """Told (from the projector's thread) what it committed: in-process waiters wake without a NOTIFY round trip."""

    def advanced(self, name: str, position: int) -> None: ...
    def parked(self, name: str, organization_id: UUID, notification_id: int) -> None: ...
    def unparked(self, name: str, organization_id: UUID | None) -> None: ...


def _notification(row: Sequence[Any]) -> Notification:
    return Notification(id=row[0], originator_id=row[1], originator_version=row[2], topic=row[3], state=bytes(row[4]))


def _error_class(error: BaseException) -> tuple[str, str | None]:
    """What is recorded of a failure: its class and SQLSTATE. Never its message, which may quote a tenant's value."""
    return type(error).__name__, getattr(error, "sqlstate", None)


class Projector:
    def __init__(
        self, decode: Callable[[Notification], Any], pool: ConnectionPool, projections: Sequence[Projection], *,
        batch_size: int = 1000, channel: str = EVENTS_CHANNEL,
    ) -> None:
        """`decode` turns a stored event into its domain event (the event store's mapper); `channel` is where the
        event store announces appends."""
        self.decode = decode
        self.channel = channel
        self.pool = pool
        self.projections = list(projections)
        self.batch_size = batch_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listener: ConsumerListener | None = None
        self.check_connections: Callable[[], None] | None = None
        """Called after a lost connection, to replace stale pooled connections elsewhere (the decoder's key ring)."""
        self.prefetch: Callable[[list[bytes]], None] | None = None
        """Told a batch's stored states before they are decoded (the decoder's key ring fetches their keys at once)."""
        for p in self.projections:
            p.reinstater = self.reinstate
        for p in self.projections:
            with pool.connection() as conn:
                conn.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING", (p.name,)
                )

    # -- one batch ---------------------------------------------------------------------------------------
    def run_batch(self, projection: Projection) -> int:
        """Apply the next batch of events to one projection; returns how many events it handled."""
        with self.pool.connection() as own:
            handled, position, parked = self._batch(own, projection)
        if position:
            self._announce(projection.name, position, parked)
        return handled

    def _announce(self, name: str, position: int, parked: list[Parked]) -> None:
        """Parks first: a waiter woken by the position must already know its organization's events were set aside."""
        if self.listener is None:
            return
        for p in parked:
            self.listener.parked(name, p.organization_id, p.notification_id)
        self.listener.advanced(name, position)

    def _batch(self, conn: psycopg.Connection, projection: Projection) -> tuple[int, int, list[Parked]]:
        """One batch in its own transaction (or savepoint, inside a rebuild). The fast path applies it whole; if
        anything in it fails, it is done again event by event, parking what fails so the rest goes on."""
        try:
            with conn.transaction():
                return self._apply_batch(conn, projection, careful=False)
        except Exception as e:
            if conn.broken or connection_lost(e):
                raise
        with conn.transaction():
            return self._apply_batch(conn, projection, careful=True)

    def _apply_batch(self, conn: psycopg.Connection, projection: Projection, *, careful: bool
                     ) -> tuple[int, int, list[Parked]]:
        """Lock the tracking row, read the next events, apply them, move the position. Returns (events handled,
        new position or 0 when it did not move, events parked). Two round trips on the fast path: the read, then
        the pipelined writes. The position moves (and is announced) even when every new event waits behind a
        parked one, so a writer of a parked organization learns at once that its event was set aside."""
        with conn.cursor(row_factory=tuple_row) as read:
            rows = read.execute(NEXT_BATCH, {"name": projection.name, "topics": projection.topics(),
                                             "limit": self.batch_size, "none": NO_ORGANIZATION}).fetchall()
        position, head = rows[0][0], rows[0][1]
        if head <= position:
            return 0, 0, []  # nothing moved
        events = [(_notification(r[2:7]), r[7] or NO_ORGANIZATION) for r in rows if r[2] is not None]
        last = events[-1][0].id if len(events) == self.batch_size else head
        parked: list[Parked] = []
        with conn.cursor() as cur:
            # Read models are rebuilt from the (durably committed) events, so their commit need not wait for the
            # WAL flush: a crash can only lose rows and tracking position together, and they are re-applied.
            cur.execute("SET LOCAL synchronous_commit = off")
            if self.prefetch is not None:
                self.prefetch([n.state for n, _ in events])
            if careful:
                parked = self._apply_one_by_one(conn, cur, projection, events)
            else:
                items = [(self.decode(n), n.id) for n, _ in events]
                with conn.pipeline():  # the batch's statements go out without waiting for each answer
                    projection.apply_batch(cur, items)  # set-based where the projection can (handles_many)
            cur.execute("UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                        (last, projection.name))
            for p in parked:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"park|{p.consumer}|{p.organization_id}|{p.notification_id}"))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{projection.name}:{last}"))
        return len(events), last, parked

    def _apply_one_by_one(self, conn: psycopg.Connection, cur: Any, projection: Projection,
                          events: list[tuple[Notification, UUID]]) -> list[Parked]:
        parked: list[Parked] = []
        blocked: set[UUID] = set()
        for n, org in events:
            if org in blocked:
                continue  # waits behind its organization's parked event, replayed in order by retry_parked
            error = self._try_apply(conn, cur, projection, n)
            if error is not None:
                blocked.add(org)
                parked.append(self._park(cur, projection, n, org, error))
        return parked

    def _try_apply(self, conn: psycopg.Connection, cur: Any, projection: Projection, n: Notification) -> Exception | None:
        """Apply one event inside a savepoint; the exception if it failed (the connection being lost is re-raised)."""
        try:
            with conn.transaction():
                projection.apply(cur, self.decode(n), n.id)
        except Exception as e:
            if conn.broken or connection_lost(e):  # e.g. decoding lost its key ring's connection: not the event's
                raise
            return e
        return None

    def _park(self, cur: Any, projection: Projection, n: Notification, org: UUID, error: Exception) -> Parked:
        error_class, error_code = _error_class(error)
        log.warning("parked event consumer=%s notification_id=%s org=%s error=%s sqlstate=%s",
                    projection.name, n.id, org, error_class, error_code)
        cur.execute(PARK, {"consumer": projection.name, "org": org, "id": n.id, "originator": n.originator_id,
                           "topic": n.topic, "error_class": error_class, "error_code": error_code,
                           "delay": FIRST_RETRY_SECONDS})
        return Parked(projection.name, org, n.id, error_class)

    def catch_up(self, projection: Projection) -> int:
        total = 0
        while True:
            applied = self.run_batch(projection)
            total += applied
            if applied < self.batch_size:
                return total

    # -- parked events -------------------------------------------------------------------------------------
    def retry_parked(self, projection: Projection, *, due_only: bool = True) -> list[dict[str, Any]]:
        """Replay each parked organization's events in order, from its parked event up to the projection's
        position, in one transaction holding the tracking row: exactly once, as if it had never failed. An
        organization that fails again stays parked at the event that failed, with a longer back-off."""
        results: list[dict[str, Any]] = []
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            position = cur.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE",
                                   (projection.name,)).fetchone()[0]
            due = cur.execute(
                "SELECT organization_id, notification_id FROM consumer_parked WHERE consumer = %s"
                " AND (NOT %s OR next_attempt_at <= now()) ORDER BY notification_id FOR UPDATE",
                (projection.name, due_only)).fetchall()
            for org, from_id in due:
                results.append(self._replay_organization(conn, cur, projection, org, from_id, position))
        if self.listener is not None:
            for r in results:
                if r["resolved"]:
                    self.listener.unparked(projection.name, r["organization_id"])
        return results

    def _replay_organization(self, conn: psycopg.Connection, cur: Any, projection: Projection, org: UUID,
                             from_id: int, position: int) -> dict[str, Any]:
        applied = 0
        while True:
            rows = cur.execute(PARKED_EVENTS, {"org": None if org == NO_ORGANIZATION else org, "from": from_id,
                                               "to": position, "topics": projection.topics(),
                                               "limit": self.batch_size}).fetchall()
            for row in rows:
                n = _notification(row)
                error = self._try_apply(conn, cur, projection, n)
                if error is not None:
                    parked = self._park(cur, projection, n, org, error)
                    return {"organization_id": org, "resolved": False, "applied": applied,
                            "notification_id": n.id, "error_class": parked.error_class}
                applied += 1
                from_id = n.id + 1
            if len(rows) < self.batch_size:
                break
        cur.execute("DELETE FROM consumer_parked WHERE consumer = %s AND organization_id = %s", (projection.name, org))
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"unpark|{projection.name}|{org}"))
        log.info("parked events applied consumer=%s org=%s events=%s", projection.name, org, applied)
        return {"organization_id": org, "resolved": True, "applied": applied}

    def parked(self, conn: Any, name: str | None = None) -> list[dict[str, Any]]:
        """Parked events (all consumers, or one), with how many later events of the organization wait behind."""
        return conn.execute(
            "SELECT p.consumer, p.organization_id, p.notification_id, p.originator_id, p.topic, p.error_class,"
            " p.error_code, p.attempts, p.first_seen, p.last_seen, p.next_attempt_at,"
            " (SELECT count(*) FROM stored_events e WHERE e.organization_id IS NOT DISTINCT FROM"
            "   nullif(p.organization_id, %s) AND e.notification_id > p.notification_id) AS waiting_behind"
            " FROM consumer_parked p WHERE %s::text IS NULL OR p.consumer = %s ORDER BY p.consumer, p.notification_id",
            (NO_ORGANIZATION, name, name)).fetchall()

    # -- rebuild -----------------------------------------------------------------------------------------
    def rebuild(self, projection: Projection, progress: Callable[[int, int], None] | None = None) -> int:
        """Drop the projection's rows and replay from position 0, in one transaction: readers see the old
        tables until the new ones are complete, and the live projector waits on the tracking row. Events that
        fail are parked as in live following (see `rebuild_report` for them); the rebuild completes."""
        return self.rebuild_report(projection, progress)["events_applied"]

    def rebuild_report(self, projection: Projection, progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, Any]:
        """A consumer that is not rebuildable (`Projection.rebuildable`) keeps its rows and position: replaying its
        events would repeat side effects (start workflow runs again). The report says it was kept."""
        if not projection.rebuildable:
            return {"events_applied": 0, "parked": [], "kept": "not rebuildable: its rows record side effects "
                    "(started workflow runs); rows and position kept, nothing replayed"}
        with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            total_events = cur.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
        applied = 0
        parked: list[Parked] = []
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (projection.name,))
            with conn.cursor() as cur:
                projection.clear(cur)
                cur.execute("DELETE FROM consumer_parked WHERE consumer = %s", (projection.name,))
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"unpark|{projection.name}|*"))
            conn.execute("UPDATE projection_tracking SET position = 0 WHERE name = %s", (projection.name,))
            position = 0
            while True:
                n, moved, newly = self._batch(conn, projection)
                position = moved or position
                applied += n
                parked += newly
                if progress:
                    progress(position, total_events)
                if n < self.batch_size:
                    break
        if self.listener is not None:
            self.listener.unparked(projection.name, None)
        self._announce(projection.name, position, parked)
        return {"events_applied": applied,
                "parked": [{"organization_id": p.organization_id, "notification_id": p.notification_id,
                            "error_class": p.error_class} for p in parked]}

    # -- beside the live read models: investigation copies and online rebuilds -----------------------------
    def _beside(self, schema: str, projections: Sequence[Projection]) -> tuple[Projector, ConnectionPool]:
        """A projector of fresh copies of `projections` working in `schema` (see `schema_search_path`)."""
        pool = ConnectionPool(self.pool.conninfo, min_size=1, max_size=2, open=True, name=f"flusia-{schema}",
                              kwargs={"row_factory": dict_row, "autocommit": True,
                                      "options": f"-c search_path={schema_search_path(schema).replace(' ', '')}"})
        beside = Projector(self.decode, pool, [type(p)() for p in projections], batch_size=self.batch_size)
        beside.prefetch = self.prefetch
        return beside, pool

    def replay_into_schema(self, schema: str, to: int, progress: Callable[[str, int, int], None] | None = None
                           ) -> dict[str, Any]:
        """Every read model as of event `to`, built into a new schema for investigation; the live ones are not
        touched. The schema holds copies of the read tables (and of the projector's tracking and parking), and
        views `stored_events` / `event_causes` that end at `to`, so every query of the projections, replays of
        restores included, sees the store as it was then. Consumers that are not rebuildable are left out."""
        check_schema_name(schema)
        projections = [p for p in self.projections if p.rebuildable]
        tables = [t for p in projections for t in p.tables]
        with psycopg.connect(self.pool.conninfo, autocommit=True) as conn:
            if _schema_exists(conn, schema):
                raise ValueError(f"schema {schema} exists; choose another name or drop it first")
            with conn.transaction():
                clone_tables(conn, schema, [*tables, *CONSUMER_TABLES])
                conn.execute(f"CREATE VIEW {schema}.stored_events AS SELECT * FROM public.stored_events"
                             f" WHERE notification_id <= {int(to)}")
                conn.execute(f"CREATE VIEW {schema}.event_causes AS SELECT * FROM public.event_causes"
                             f" WHERE first_notification_id <= {int(to)}")
        beside, pool = self._beside(schema, projections)
        out: dict[str, int] = {}
        try:
            for p in beside.projections:
                total = 0
                while True:
                    n = beside.run_batch(p)
                    total += n
                    if progress:
                        progress(p.name, total, to)
                    if n < beside.batch_size:
                        break
                out[p.name] = total
            with pool.connection() as conn:
                parked = conn.execute("SELECT consumer, organization_id, notification_id FROM consumer_parked"
                                      " ORDER BY consumer").fetchall()
        finally:
            pool.close()
        return {"schema": schema, "to": to, "tables": tables, "events_applied": out, "parked": parked}

    def rebuild_online(self, projection: Projection, progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, Any]:
        """Rebuild one read model beside the live one and switch when caught up: reads never see a half-built
        table, and the live projector keeps following meanwhile (writers keep their read-your-writes).

        The new tables are built in schema `flusia_rebuild_<name>` by a projector of their own (its positions,
        parking and announcements stay there), from event 1 to the head, in batches, without holding anything
        live. Then one transaction takes the live tracking row (the live projector of that read model waits),
        applies the events that came meanwhile, moves the live tables out and the new ones in under the live
        names (indexes, constraints, sequences and foreign keys included) and sets the live position to the new
        tables'. Readers in flight finish on the old tables; the next statements read the new ones."""
        if not projection.rebuildable:
            return self.rebuild_report(projection, progress)
        schema, trash = f"flusia_rebuild_{projection.name}"[:63], f"flusia_replaced_{projection.name}"[:63]
        tables = list(projection.tables)
        with psycopg.connect(self.pool.conninfo, autocommit=True) as conn:
            views = _dependent_views(conn, tables)
            if views:
                raise ValueError(f"views depend on {projection.name}'s tables ({', '.join(views)}): rebuild offline")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {trash} CASCADE")
            with conn.transaction():
                clone_tables(conn, schema, [*tables, *CONSUMER_TABLES])
            head = conn.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
        beside, pool = self._beside(schema, [projection])
        copy = beside.projections[0]
        applied = 0
        try:
            while True:  # the bulk of the work, nothing live held
                n = beside.run_batch(copy)
                applied += n
                if progress:
                    with pool.connection() as c:
                        progress(c.execute("SELECT position FROM projection_tracking WHERE name = %s",
                                           (copy.name,)).fetchone()["position"], head)
                if n < beside.batch_size:
                    break
            with pool.connection() as c:
                for table in tables:
                    c.execute(f"ANALYZE {schema}.{table}")
            with psycopg.connect(self.pool.conninfo, autocommit=True, row_factory=dict_row) as conn:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '30s'")
                    conn.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE",
                                 (projection.name,))
                    conn.execute(f"SET LOCAL search_path TO {schema_search_path(schema)}")
                    while True:  # what came while building: a few batches at most
                        n, _, _ = beside._batch(conn, copy)
                        applied += n
                        if n < beside.batch_size:
                            break
                    position = conn.execute("SELECT position FROM projection_tracking WHERE name = %s",
                                            (copy.name,)).fetchone()["position"]
                    conn.execute("SET LOCAL search_path TO DEFAULT")
                    swap_tables(conn, schema, trash, tables)
                    conn.execute("UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                                 (position, projection.name))
                    conn.execute("DELETE FROM consumer_parked WHERE consumer = %s", (projection.name,))
                    conn.execute(f"INSERT INTO consumer_parked SELECT * FROM {schema}.consumer_parked"  # noqa: S608
                                 " WHERE consumer = %s", (projection.name,))
                    parked = [(r["organization_id"], r["notification_id"], r["error_class"]) for r in conn.execute(
                        "SELECT organization_id, notification_id, error_class FROM consumer_parked"
                        " WHERE consumer = %s", (projection.name,)).fetchall()]
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"unpark|{projection.name}|*"))
                    for org, nid, _ in parked:
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"park|{projection.name}|{org}|{nid}"))
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{projection.name}:{position}"))
                conn.execute(f"DROP SCHEMA {trash} CASCADE")
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            pool.close()
        if self.listener is not None:
            self.listener.unparked(projection.name, None)
            for org, nid, _ in parked:
                self.listener.parked(projection.name, org, nid)
            self.listener.advanced(projection.name, position)
        return {"events_applied": applied, "online": True, "position": position,
                "parked": [{"organization_id": org, "notification_id": nid, "error_class": error}
                           for org, nid, error in parked]}

    # -- restores ----------------------------------------------------------------------------------------
    def reinstate(self, projection: Projection, cur: Any, event: Any) -> None:
        """An entity brought back by the audit tools (`<Aggregate>.Reinstated`), as one projection applies it."""
        EntityReplay(projection, cur, self.decode, projection.notification_id).run(event)

    # -- live following ----------------------------------------------------------------------------------
    def start(self, conninfo: str) -> None:
        self._thread = threading.Thread(target=self.run_forever, args=(conninfo,), name="projector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def run_forever(self, conninfo: str) -> None:
        """Hold the advisory locks we can get, catch up, then wake on every NOTIFY from the event store.

        After a wake only the projections that handle one of the new events' topics run; the others are known
        to be caught up and their positions move to the new head in one statement. A command therefore waits
        for the projections it touches, not for a round of every projection. Parked events whose back-off has
        passed are retried about once a second."""
        owned: list[Projection] = []
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as listen:
                    listen.execute(f'LISTEN "{self.channel}"')
                    seen = 0  # every owned projection has applied all it handles up to here
                    next_lock_attempt = next_retry_check = 0.0
                    while not self._stop.is_set():
                        if len(owned) < len(self.projections) and time.monotonic() >= next_lock_attempt:
                            for p in self._take_locks(listen, owned):
                                self.catch_up(p)
                            next_lock_attempt = time.monotonic() + LOCK_RETRY_SECONDS
                        head = listen.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
                        if head > seen:
                            self._follow(listen, owned, seen, head)
                            seen = head
                        if time.monotonic() >= next_retry_check:
                            self._retry_due(listen, owned)
                            next_retry_check = time.monotonic() + 1.0
                        for _ in listen.notifies(timeout=1.0, stop_after=1):
                            pass
            except Exception as e:  # keep following after a lost connection; locks are re-taken on reconnect
                lost = connection_lost(e)
                if lost:
                    log.warning("projector lost its database connection error=%s; reconnecting", type(e).__name__)
                else:
                    log.exception("projector loop failed; retrying")
                owned.clear()
                if lost:  # PostgreSQL restarted: every pooled connection is stale; replace them all now
                    for check in (self.pool.check, self.check_connections):
                        try:
                            if check is not None:
                                check()
                        except Exception as error:
                            log.info("checking pooled connections failed error=%s", type(error).__name__)
                self._stop.wait(0.2 if lost else 1.0)

    def _retry_due(self, listen: psycopg.Connection, owned: list[Projection]) -> None:
        due = {r[0] for r in listen.execute(
            "SELECT DISTINCT consumer FROM consumer_parked WHERE next_attempt_at <= now()").fetchall()}
        for p in owned:
            if p.name in due:
                self.retry_parked(p)

    def _take_locks(self, listen: psycopg.Connection, owned: list[Projection]) -> list[Projection]:
        """Try every projection's lock not held yet, in one round trip (a standby does this every second)."""
        free = [p for p in self.projections if p not in owned]
        got = listen.execute("SELECT array_agg(pg_try_advisory_lock(k) ORDER BY i) FROM unnest(%s::bigint[])"
                             " WITH ORDINALITY AS t(k, i)", ([advisory_key(p.name) for p in free],)).fetchone()[0]
        acquired = [p for p, ok in zip(free, got or [], strict=False) if ok]
        owned.extend(acquired)
        return acquired

    def _follow(self, listen: psycopg.Connection, owned: list[Projection], seen: int, head: int) -> None:
        if seen == 0:
            for p in owned:
                self.catch_up(p)
            return
        new_topics = {r[0] for r in listen.execute(
            "SELECT DISTINCT topic FROM stored_events WHERE notification_id > %s AND notification_id <= %s", (seen, head)
        ).fetchall()}
        idle = []
        for p in owned:
            if new_topics.intersection(p.topics()):
                self.catch_up(p)
            else:
                idle.append(p.name)
        if idle:
            listen.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now()"
                " WHERE name = ANY(%s) AND position >= %s AND position < %s",
                (head, idle, seen, head),
            )


# -- restores (the audit tools' `<Aggregate>.Reinstated`) -----------------------------------------------------
NO_BOUND = 2**63 - 1
ENTITY_EVENTS = """
SELECT notification_id, originator_id, originator_version, topic, state, organization_id FROM stored_events
WHERE originator_id = %(id)s AND originator_version < %(below)s AND notification_id < %(before)s
ORDER BY originator_version
"""
MENTIONING = """
SELECT originator_id FROM stored_events
WHERE organization_id = %(org)s AND notification_id > %(after)s AND notification_id < %(before)s
  AND topic = ANY(%(topics)s) AND originator_id <> ALL(%(known)s)
  AND (position(%(hex)s IN state) > 0 OR position(%(text)s IN state) > 0)
GROUP BY originator_id ORDER BY min(notification_id)
"""
ORGANIZATION_EVENTS = """
SELECT notification_id, originator_id, originator_version, topic, state, organization_id FROM stored_events
WHERE organization_id = %(org)s AND notification_id > %(after)s AND notification_id < %(before)s
  AND topic = ANY(%(topics)s)
ORDER BY notification_id
"""


def effective_events(events: Sequence[tuple[int | None, Any]]) -> list[tuple[int | None, Any]]:
    """An entity's events (in version order, with their notification ids) as they count after its restores: a
    `Reinstated` (to version t) puts the entity back where it was after version t, so the events between t and
    it no longer count, and it adds nothing itself. What a projection replays to rebuild the entity's rows."""
    nodes: dict[int, Any] = {0: None}  # version -> (previous node, event): a shared-tail list per version
    last = 0
    for nid, event in events:
        version = event.originator_version
        if isinstance(event, TenantAggregate.Reinstated):
            nodes[version] = nodes.get(event.to_version)
        else:
            nodes[version] = (nodes.get(version - 1), (nid, event))
        last = version
    out: list[tuple[int | None, Any]] = []
    node = nodes.get(last)
    while node is not None:
        node, item = node
        out.append(item)
    return out[::-1]


def _removal(event_class: type) -> bool:
    """A deletion or a merge: what other entities' rows may have changed for (a custom field's values hidden,
    a merged duplicate's tasks moved to the survivor). Applying one twice changes nothing more."""
    return issubclass(event_class, TenantAggregate.Deleted) or event_class.__name__ == "MergedInto"


UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _collect_ids(value: Any, into: set[str]) -> None:
    """Every id in an event's values (ids and id-shaped texts, keys of mappings included)."""
    if isinstance(value, UUID):
        into.add(str(value))
    elif isinstance(value, str):
        if len(value) == 36 and UUID_TEXT.match(value.lower()):
            into.add(value.lower())
    elif isinstance(value, dict):
        for k, v in value.items():
            _collect_ids(k, into)
            _collect_ids(v, into)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _collect_ids(v, into)


def _payload_fields(event_class: type) -> list[str]:
    import dataclasses

    base = {"originator_id", "originator_version", "timestamp"}
    return [f.name for f in dataclasses.fields(event_class) if f.name not in base]


class EntityReplay:
    """Brings one restored entity back into one projection, from its events only (so a rebuild does the same):

    1. its rows are cleared with the projection's own `Deleted` handler (a synthetic deletion at the restore's
       version), and so are the rows of the entities that hang off it there (found as the projection's entities
       whose events name its id: a client's notes and recordings, a wiki page's sub-pages), since that handler
       may have taken them along;
    2. their effective events (see `effective_events`: up to the restored version for the entity, all for the
       others) are applied again, in their original order, interleaved with the deletions and merges of other
       entities the projection handles since then (a custom field deleted later stays hidden, a task of a merged
       client points to the survivor) unless those were restored since.

    Only events before the restore count (`before`, its notification id), so applying a restore in a rebuild
    gives the same rows as applying it live."""

    def __init__(self, projection: Projection, cur: Any, decode: Callable[[Notification], Any],
                 before: int | None) -> None:
        self.projection = projection
        self.cur = cur
        self.decode = decode
        self.before = before if before is not None else NO_BOUND
        self.handlers = projection._handlers

    def _rows(self, sql: str, params: dict[str, Any]) -> list[Any]:
        with self.cur.connection.cursor(row_factory=tuple_row) as read:
            return read.execute(sql, params).fetchall()

    def _events(self, originator_id: UUID, below_version: int = NO_BOUND) -> list[tuple[int, Any]]:
        rows = self._rows(ENTITY_EVENTS, {"id": originator_id, "below": below_version, "before": self.before})
        return [(r[0], self.decode(_notification(r))) for r in rows]

    def _handled(self, event_class: type | None) -> bool:
        return event_class is not None and self.handlers.get(event_class) not in (None, "_reinstate")

    def run(self, event: Any) -> None:
        entity_id = event.originator_id
        own = [*self._events(entity_id, event.originator_version), (None, event)]
        org = event.state.get("org_id") if isinstance(event.state, dict) else None
        if org is None and own[0][0] is not None:
            org = self._rows("SELECT organization_id FROM stored_events WHERE notification_id = %(n)s",
                             {"n": own[0][0]})[0][0]
        owner = aggregate_of(type(event))
        entities = [(entity_id, owner, effective_events(own), dict(event.state))]
        if self._handled(getattr(owner, "Deleted", None)):
            entities += self._dependants(org, entity_id, own[0][0] or 0)
        saved = self.projection.notification_id
        try:
            for oid, kind, effective, state in entities:  # clear
                deleted = getattr(kind, "Deleted", None)
                if self._handled(deleted):
                    payload = {f: state.get(f) for f in _payload_fields(deleted)}
                    self.projection.apply(self.cur, deleted(originator_id=oid, originator_version=event.originator_version,
                                                            timestamp=event.timestamp, **payload), saved)
                if effective and self._handled(type(effective[0][1])):
                    self._remove_rows(oid, [e for _, e in (own if oid == entity_id else effective)])
            stream: list[tuple[int, Any]] = []
            for _, kind, effective, _ in entities:
                if effective and self._handled(type(effective[0][1])):  # its rows are made here (creation handled)
                    stream += [(nid, e) for nid, e in effective if nid is not None and self._handled(type(e))]
            if stream:
                stream += self._removals(org, {oid for oid, *_ in entities}, min(nid for nid, _ in stream))
            for nid, e in sorted(stream, key=lambda item: item[0]):
                self.projection.apply(self.cur, e, nid)
        finally:
            self.projection.notification_id = saved

    def _remove_rows(self, entity_id: UUID, events: Sequence[Any]) -> None:
        """The rows that are the entity's own, by primary key: its id and the ids its events gave to its parts (a
        pipeline's stages, a task's checklist items), not other entities' ids. A deletion handler may keep them
        (a deleted pipeline's row stays, marked, for the deals that name it); replaying the creation makes them
        again."""
        ids: set[str] = {str(entity_id)}
        for event in events:
            _collect_ids(vars(event), ids)
        candidates = [UUID(i) for i in ids if UUID(i) != entity_id]
        if candidates:
            others = {r[0] for r in self._rows("SELECT DISTINCT originator_id FROM stored_events"
                                              " WHERE originator_id = ANY(%(ids)s)", {"ids": candidates})}
            candidates = [c for c in candidates if c not in others]
        own = [entity_id, *candidates]
        for table, column in self._keyed_tables():
            self.cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (own,))  # noqa: S608 - catalogue names

    def _keyed_tables(self) -> list[tuple[str, str]]:
        """The projection's tables with a one-column uuid primary key (as the search_path sees them)."""
        return [(r[0], r[1]) for r in self._rows(
            "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]"
            " WHERE i.indisprimary AND i.indnatts = 1 AND a.atttypid = 'uuid'::regtype AND c.relname = ANY(%(t)s)"
            " AND pg_table_is_visible(c.oid) ORDER BY c.relname", {"t": list(self.projection.tables)})]

    def _dependants(self, org: Any, entity_id: UUID, after: int) -> list[tuple[UUID, type, list, dict]]:
        """Entities of this projection (creation and deletion handled, a plain deletion) whose events name an
        entity being restored, transitively: what the restored entity's deletion may have taken along here."""
        kinds = {aggregate_of(c) for c in self.handlers if issubclass(c, CanInitAggregate)}
        kinds = {k for k in kinds if k is not None and self._handled(getattr(k, "Deleted", None))
                 and not _payload_fields(k.Deleted)}
        topics = [get_topic(c) for c in self.handlers if aggregate_of(c) in kinds and self._handled(c)]
        out: list[tuple[UUID, type, list, dict]] = []
        known, queue = [entity_id], [entity_id]
        while queue and topics:
            parent = queue.pop(0)
            found = self._rows(MENTIONING, {"org": org, "after": after, "before": self.before, "topics": topics,
                                            "known": known, "hex": parent.hex.encode(), "text": str(parent).encode()})
            for (child,) in found:
                events = self._events(child)
                if not events:
                    continue
                kind = aggregate_of(type(events[0][1]))
                if kind not in kinds:
                    continue
                known.append(child)
                queue.append(child)
                out.append((child, kind, effective_events(events), {}))
        return out

    def _removals(self, org: Any, replayed: set[UUID], after: int) -> list[tuple[int, Any]]:
        """Deletions and merges of other entities since `after` that this projection handles, without those
        undone by a restore since."""
        removals = [c for c in self.handlers if _removal(c) and self._handled(c)]
        if not removals:
            return []
        undo = {get_topic(r) for c in removals if (r := getattr(aggregate_of(c), "Reinstated", None)) is not None}
        topics = [*(get_topic(c) for c in removals), *undo]
        rows = self._rows(ORGANIZATION_EVENTS, {"org": org, "after": after, "before": self.before, "topics": topics})
        rows = [r for r in rows if r[1] not in replayed]
        restored_at = {r[1]: r[0] for r in rows if r[3] in undo}  # rows are in order: the last restore wins
        return [(r[0], self.decode(_notification(r))) for r in rows
                if r[3] not in undo and restored_at.get(r[1], 0) < r[0]]


def reinstate_entity(projection: Projection, cur: Any, event: Any, decode: Callable[[Notification], Any], *,
                     before: int | None = None) -> None:
    """Apply a restore to one projection (see EntityReplay); `before`: the restore's position (None: all events)."""
    EntityReplay(projection, cur, decode, before).run(event)


# -- read models built beside the live ones: investigation copies and online rebuilds ------------------------
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_SCHEMAS = {"public", "information_schema"}
CONSUMER_TABLES = ("projection_tracking", "consumer_parked")
"""The projector's own bookkeeping, copied too, so that a projector working in another schema moves only its own
positions and parks only there."""
SILENT_NOTIFY = "CREATE FUNCTION {schema}.pg_notify(channel text, payload text) RETURNS void LANGUAGE sql AS $$ $$"
"""Shadows pg_catalog.pg_notify for connections whose search_path puts the schema first (and pg_catalog after it):
a projector working there announces nothing to the live servers' position feeds."""


def check_schema_name(name: str) -> str:
    if not SCHEMA_NAME.match(name) or name in RESERVED_SCHEMAS or name.startswith("pg_"):
        raise ValueError(f"schema name {name!r}: lower-case letters, digits and _ (at most 63), not public or pg_*")
    return name


def schema_search_path(schema: str) -> str:
    """The search_path of a projector working in `schema`: its tables (and pg_notify) first, then the live ones."""
    return f"{check_schema_name(schema)}, pg_catalog, public"


def clone_tables(conn: psycopg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Create `schema` with empty copies of the given public tables: columns, defaults (with sequences of their
    own), constraints, indexes, and the foreign keys among them (or to the public tables they reference). Inside
    the caller's transaction."""
    check_schema_name(schema)
    conn = conn.cursor(row_factory=tuple_row)  # type: ignore[assignment]
    conn.execute(f"CREATE SCHEMA {schema}")
    for table in tables:
        conn.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")  # noqa: S608
        serials = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " AND column_default LIKE 'nextval(%%'", (schema, table)).fetchall()
        for (column,) in serials:
            sequence = f"{table}_{column}_seq"[:63]
            conn.execute(f"CREATE SEQUENCE {schema}.{sequence} OWNED BY {schema}.{table}.{column}")
            conn.execute(f"ALTER TABLE {schema}.{table} ALTER COLUMN {column} SET DEFAULT"
                         f" nextval('{schema}.{sequence}'::regclass)")
    foreign = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE c.contype = 'f' AND n.nspname = 'public' AND t.relname = ANY(%s) ORDER BY 1, 2",
        (list(tables),)).fetchall()
    conn.execute(f"SET LOCAL search_path TO {schema_search_path(schema)}")
    for table, name, definition in foreign:  # references resolve to the copies where there are copies
        conn.execute(f"ALTER TABLE {schema}.{table.split('.')[-1]} ADD CONSTRAINT {name} {definition}")
    conn.execute("SET LOCAL search_path TO DEFAULT")
    conn.execute(SILENT_NOTIFY.format(schema=schema))


def _schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.cursor(row_factory=tuple_row).execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _index_key(definition: str) -> str:
    """An index definition without its name and schema: how a copy's index is matched to the original's."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+?\.", r"\1", definition)


def _dependent_views(conn: psycopg.Connection, tables: Sequence[str]) -> list[str]:
    return [r[0] for r in conn.cursor(row_factory=tuple_row).execute(
        "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid"
        " JOIN pg_class v ON v.oid = w.ev_class JOIN pg_class t ON t.oid = d.refobjid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = 'public' AND t.relname = ANY(%s) AND v.oid <> t.oid", (list(tables),)).fetchall()]


def swap_tables(conn: psycopg.Connection, schema: str, trash: str, tables: Sequence[str]) -> None:
    """Inside the caller's transaction: move the live tables to `trash` and the copies in `schema` to public, under
    the live names of their indexes, constraints and sequences; foreign keys of other tables that pointed at the
    live tables point at the new ones."""
    conn = conn.cursor(row_factory=tuple_row)  # type: ignore[assignment]
    names = list(tables)
    indexes = conn.execute(
        "SELECT t.relname, i.relname, pg_get_indexdef(i.oid), n.nspname FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname IN ('public', %s) AND t.relname = ANY(%s)"
        " ORDER BY t.relname, i.relname", (schema, names)).fetchall()
    constraints = conn.execute(
        "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid), n.nspname, c.contype FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname IN ('public', %s) AND t.relname = ANY(%s) AND c.contype IN ('p', 'u', 'x', 'c')"
        " ORDER BY 1, 2", (schema, names)).fetchall()
    sequences = conn.execute(
        "SELECT t.relname, a.attname, s.relname, n.nspname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
        " JOIN pg_class t ON t.oid = d.refobjid JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i')"
        " AND n.nspname IN ('public', %s) AND t.relname = ANY(%s)", (schema, names)).fetchall()
    incoming = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace n ON n.oid = r.relnamespace"
        " JOIN pg_class t ON t.oid = c.conrelid"
        " WHERE c.contype = 'f' AND n.nspname = 'public' AND r.relname = ANY(%s) AND NOT t.relname = ANY(%s)",
        (names, names)).fetchall()
    conn.execute(f"CREATE SCHEMA {check_schema_name(trash)}")
    for table in names:
        conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {trash}")
    for table in names:
        conn.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
    live_constraints = {(t, d): n for t, n, d, ns, _ in constraints if ns == "public"}
    for table, name, definition, namespace, _ in constraints:
        wanted = live_constraints.get((table, definition))
        if namespace == schema and wanted and wanted != name:
            conn.execute(f'ALTER TABLE public.{table} RENAME CONSTRAINT "{name}" TO "{wanted}"')
    renamed = {n for t, n, d, ns, k in constraints if ns == "public" and k in ("p", "u", "x")}
    live_indexes: dict[tuple[str, str], list[str]] = {}
    for table, name, definition, namespace in indexes:
        if namespace == "public" and name not in renamed:
            live_indexes.setdefault((table, _index_key(definition)), []).append(name)
    for table, name, definition, namespace in indexes:
        if namespace != schema or any(name == n for t, n, d, ns, k in constraints if ns == schema):
            continue
        wanted = live_indexes.get((table, _index_key(definition)))
        if wanted:
            target = wanted.pop(0)
            if target != name:
                conn.execute(f'ALTER INDEX public."{name}" RENAME TO "{target}"')
    live_sequences = {(t, a): s for t, a, s, ns in sequences if ns == "public"}
    for table, column, name, namespace in sequences:
        wanted = live_sequences.get((table, column))
        if namespace == schema and wanted and wanted != name:
            conn.execute(f'ALTER SEQUENCE public."{name}" RENAME TO "{wanted}"')
    for table, name, definition in incoming:  # they still point at the old tables (by oid): point them here
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
