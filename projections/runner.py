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
from psycopg_pool import ConnectionPool

from application.store import EventStore
from projections.base import Projection

log = logging.getLogger("flusia.projector")
CHANNEL = "flusia_projections"


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
        for p in self.projections:
            with pool.connection() as conn:
                conn.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING", (p.name,)
                )

    # -- one batch ---------------------------------------------------------------------------------------
    def run_batch(self, projection: Projection, *, conn: psycopg.Connection | None = None) -> int:
        """Apply the next batch of events to one projection; returns how many events it applied."""
        if conn is not None:
            return self._apply_batch(conn, projection)
        with self.pool.connection() as own, own.transaction():
            return self._apply_batch(own, projection)

    def _apply_batch(self, conn: psycopg.Connection, projection: Projection) -> int:
        row = conn.execute(
            "SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (projection.name,)
        ).fetchone()
        position = row["position"] if isinstance(row, dict) else row[0]
        # Commit order equals notification order (the recorder locks the table while inserting), so every event
        # up to the head read now is final: a projection can skip past events it does not handle.
        head_row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()
        head = next(iter(head_row.values())) if isinstance(head_row, dict) else head_row[0]
        if head <= position:
            return 0
        notifications = self.store.recorder.select_notifications(
            start=position, stop=head, limit=self.batch_size, topics=projection.topics(), inclusive_of_start=False
        )
        with conn.cursor() as cur:
            # Pipeline mode: a batch's statements go to the server without waiting for each answer.
            with conn.pipeline():
                for n in notifications:
                    projection.apply(cur, self.store.mapper.to_domain_event(n))
            full = len(notifications) == self.batch_size
            last = notifications[-1].id if full else head
            cur.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s", (last, projection.name)
            )
            if notifications:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{projection.name}:{last}"))
        return len(notifications)
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
                n = self._apply_batch(conn, projection)
                applied += n
                row = conn.execute("SELECT position FROM projection_tracking WHERE name = %s", (projection.name,)).fetchone()
                if progress:
                    progress(row["position"], total_events)
                if n < self.batch_size:
                    break
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
