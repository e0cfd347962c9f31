"""The projector: batched catch-up, then live following of the event store, exactly once.

Each projection has a row in `projection_tracking`. A batch of up to `batch_size` events is applied and
the position advanced in one transaction, which starts by locking that tracking row: killing the
projector at any moment loses nothing and applies nothing twice, and a concurrent rebuild simply
waits. After each commit the new position is announced on the `flusia_projections` channel so that
writers can wait for their own events (read-your-writes). An advisory lock per projection keeps one
active instance among several `flusia project` / `flusia serve` processes.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import psycopg
from eventsourcing.persistence import Notification
from psycopg_pool import ConnectionPool

from application.store import EventStore
from projections.base import Projection

log = logging.getLogger("flusia.projector")
CHANNEL = "flusia_projections"
# Commit order equals notification order (appends lock the table), so every event up to the head read here is
# final: a projection may skip past events it does not handle and still never miss one.
NEXT_BATCH = """
WITH tracking AS (SELECT position FROM projection_tracking WHERE name = %(name)s FOR UPDATE),
     store AS (SELECT coalesce(max(notification_id), 0) AS head FROM stored_events)
SELECT tracking.position, store.head, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state
FROM tracking CROSS JOIN store
LEFT JOIN LATERAL (
    SELECT notification_id, originator_id, originator_version, topic, state FROM stored_events
    WHERE notification_id > tracking.position AND notification_id <= store.head AND topic = ANY(%(topics)s)
    ORDER BY notification_id LIMIT %(limit)s
) e ON true
ORDER BY e.notification_id
"""


def advisory_key(name: str) -> int:
    return zlib.crc32(f"flusia-projection:{name}".encode())


class Projector:
    def __init__(
        self, store: EventStore, pool: ConnectionPool, projections: Sequence[Projection], *, batch_size: int = 1000
    ) -> None:
        self.store = store
        self.pool = pool
        self.projections = list(projections)
        self.batch_size = batch_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Called (from the projector's thread) after each commit that moved a projection: lets waiters in this
        # process wake without the NOTIFY round trip. Other processes still learn it from the channel.
        self.on_advance: Callable[[str, int], None] | None = None
        for p in self.projections:
            with pool.connection() as conn:
                conn.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING", (p.name,)
                )

    # -- one batch ---------------------------------------------------------------------------------------
    def run_batch(self, projection: Projection) -> int:
        """Apply the next batch of events to one projection; returns how many events it applied."""
        with self.pool.connection() as own, own.transaction():
            applied, position = self._apply_batch(own, projection)
        if applied and self.on_advance is not None:
            self.on_advance(projection.name, position)
        return applied

    def _apply_batch(self, conn: psycopg.Connection, projection: Projection) -> tuple[int, int]:
        """One transaction's work: lock the tracking row, read the next events, apply them, move the position.
        Returns (events applied, new position). Two round trips: the read, then the pipelined writes."""
        rows = conn.execute(NEXT_BATCH, {"name": projection.name, "topics": projection.topics(),
                                         "limit": self.batch_size}).fetchall()
        first = rows[0]
        position, head = (first["position"], first["head"]) if isinstance(first, dict) else (first[0], first[1])
        if head <= position:
            return 0, position
        events = [
            Notification(id=r[2], originator_id=r[3], originator_version=r[4], topic=r[5], state=bytes(r[6]))
            for r in (tuple(r.values()) if isinstance(r, dict) else r for r in rows) if r[2] is not None
        ]
        full = len(events) == self.batch_size
        last = events[-1].id if full else head
        with conn.cursor() as cur, conn.pipeline():
            # Pipeline mode: the batch's statements go to the server without waiting for each answer.
            # Read models are rebuilt from the (durably committed) events, so their commit need not wait for the
            # WAL flush: a crash can only lose rows and tracking position together, and they are re-applied.
            cur.execute("SET LOCAL synchronous_commit = off")
            for n in events:
                projection.apply(cur, self.store.mapper.to_domain_event(n))
            cur.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s", (last, projection.name)
            )
            if events:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{projection.name}:{last}"))
        return len(events), last

    def catch_up(self, projection: Projection) -> int:
        total = 0
        while True:
            applied = self.run_batch(projection)
            total += applied
            if applied < self.batch_size:
                return total

    # -- rebuild -----------------------------------------------------------------------------------------
    def rebuild(self, projection: Projection, progress: Callable[[int, int], None] | None = None) -> int:
        """Drop the projection's rows and replay from position 0, in one transaction: readers see the old
        tables until the new ones are complete, and the live projector waits on the tracking row."""
        total_events = self.store.recorder.max_notification_id() or 0
        applied = 0
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (projection.name,))
            with conn.cursor() as cur:
                projection.clear(cur)
            conn.execute("UPDATE projection_tracking SET position = 0 WHERE name = %s", (projection.name,))
            while True:
                n, position = self._apply_batch(conn, projection)
                applied += n
                if progress:
                    progress(position, total_events)
                if n < self.batch_size:
                    break
        if self.on_advance is not None:
            self.on_advance(projection.name, position)
        return applied

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
        for the projections it touches, not for a round of every projection."""
        owned: list[Projection] = []
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as listen:
                    listen.execute(f'LISTEN "{self.store.recorder.channel_name}"')
                    seen = 0  # every owned projection has applied all it handles up to here
                    next_lock_attempt = 0.0
                    while not self._stop.is_set():
                        if len(owned) < len(self.projections) and time.monotonic() >= next_lock_attempt:
                            for p in self._take_locks(listen, owned):
                                self.catch_up(p)
                            next_lock_attempt = time.monotonic() + 5.0
                        head = listen.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
                        if head > seen:
                            self._follow(listen, owned, seen, head)
                            seen = head
                        for _ in listen.notifies(timeout=1.0, stop_after=1):
                            pass
            except Exception:  # keep following after a lost connection; locks are re-taken on reconnect
                log.exception("projector loop failed; retrying")
                owned.clear()
                self._stop.wait(1.0)

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
