"""Database connections that come and go (PostgreSQL restarted, a session terminated, the server crashed).

`connection_lost` tells the connection's errors from the work's: a lost connection, a server shutting down or
restarting, a pool that cannot hand out a connection say nothing about the event or the call being run, and the same
work may well succeed on a new connection. The projector never parks an event for one; the tool runner answers one
as retryable, never as an internal error. `HealingPool` does not hand out connections the server has closed.
Here, below both, because projections may not import the application layer.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
"""Besides class 08 (connection exception): a server shutting down, restarting or still starting up."""


def connection_lost(error: BaseException | None) -> bool:
    """True when `error` (or what it was raised from) is a lost or unobtainable database connection."""
    from eventsourcing.persistence import InterfaceError as ESInterfaceError
    from eventsourcing.persistence import OperationalError as ESOperationalError
    from psycopg_pool import PoolClosed, PoolTimeout

    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, (psycopg.InterfaceError, PoolTimeout, PoolClosed)):
            return True
        if isinstance(error, psycopg.OperationalError):
            state = error.sqlstate
            if state is None or state.startswith("08") or state in CONNECTION_SQLSTATES:
                return True
            return False  # a server error with a code of its own (a statement timeout, a full disk): the work's
        if isinstance(error, (ESOperationalError, ESInterfaceError)) and error.__cause__ is None:
            return True  # eventsourcing's own, raised on a connection problem without a psycopg error behind it
        error = error.__cause__ or error.__context__
        seen += 1
    return False




def healing_check(pool: ConnectionPool) -> Callable[[psycopg.Connection], None]:
    """A pool's `check` that refuses, without a round trip, an idle connection the server has closed.

    An idle connection is sent nothing unless the server is closing it (its goodbye, or the end of the stream), so a
    readable socket means a connection that would fail its next query: it is closed (the pool then discards it) and
    the whole pool checked at once (after a restart every idle connection is stale; met one by one, each would cost
    the caller the pool's back-off). A zero-timeout poll costs microseconds; a checking query, a round trip."""
    swept = [-1e9]

    def check(conn: psycopg.Connection) -> None:
        if not (conn.closed or conn.broken):
            readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
            if not readable:
                return
        conn.close()  # a connection the pool believes healthy would be handed out again
        now = time.monotonic()
        if now - swept[0] > 0.5:
            swept[0] = now
            pool.check()  # every other idle connection, with a query each: dead ones are replaced now
        raise psycopg.OperationalError("the server closed this connection")

    return check


class HealingPool(ConnectionPool):
    """A psycopg pool that does not hand out connections the server has closed (PostgreSQL restarted, a session was
    terminated): see `healing_check`."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, check=lambda conn: self._healing(conn), **kwargs)

    def _healing(self, conn: psycopg.Connection) -> None:
        check = self.__dict__.get("_healing_check")
        if check is None:
            check = self.__dict__["_healing_check"] = healing_check(self)
        check(conn)


def heal(pool: ConnectionPool) -> None:
    """Give a pool built elsewhere (eventsourcing's) the same check, where it has none."""
    if getattr(pool, "_check", "missing") is None:
        pool._check = healing_check(pool)  # noqa: SLF001 - psycopg_pool keeps its `check` argument here
