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
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from projections.base import Projection

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
        except Exception:
            if conn.broken:
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
            if careful:
                parked = self._apply_one_by_one(conn, cur, projection, events)
            else:
                with conn.pipeline():  # the batch's statements go out without waiting for each answer
                    for n, _ in events:
                        projection.apply(cur, self.decode(n), n.id)
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
            if conn.broken:
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
                            next_lock_attempt = time.monotonic() + 5.0
                        head = listen.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
                        if head > seen:
                            self._follow(listen, owned, seen, head)
                            seen = head
                        if time.monotonic() >= next_retry_check:
                            self._retry_due(listen, owned)
                            next_retry_check = time.monotonic() + 1.0
                        for _ in listen.notifies(timeout=1.0, stop_after=1):
                            pass
            except Exception:  # keep following after a lost connection; locks are re-taken on reconnect
                log.exception("projector loop failed; retrying")
                owned.clear()
                self._stop.wait(1.0)

    def _retry_due(self, listen: psycopg.Connection, owned: list[Projection]) -> None:
        due = {r[0] for r in listen.execute(
            "SELECT DISTINCT consumer FROM consumer_parked WHERE next_attempt_at <= now()").fetchall()}
        for p in owned:
            if p.name in due:
                self.retry_parked(p)

    def _take_locks(self, listen: psycopg.Connection, owned: list[Projection]) -> list[Projection]:
        acquired = []
        for p in self.projections:
            if p not in owned and listen.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(p.name),)).fetchone()[0]:
                owned.append(p)
                acquired.append(p)
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
