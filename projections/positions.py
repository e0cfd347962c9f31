"""Read-your-writes: wait until projections have applied given notification ids.

One LISTEN connection per process follows `flusia_projections`; positions start from the tracking
table (read after LISTEN, so no announcement is missed). Waiters are woken by notifications, never by
sleeping or polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import psycopg

from projections.runner import CHANNEL

log = logging.getLogger("flusia.consistency")


class ProjectionPositions:
    """Known positions of every projection, and the writers waiting for some of them. Lives on the event loop."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.positions: dict[str, int] = {}
        self._waiters: list[tuple[Mapping[str, int], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._follow(), name="projection-positions")
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    def advanced(self, name: str, position: int) -> None:
        """Thread-safe: the projector in this process committed `name` at `position`."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._update, {name: position})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _follow(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    cur = await conn.execute("SELECT name, position FROM projection_tracking")
                    self._update({name: pos for name, pos in await cur.fetchall()})
                    self._ready.set()
                    async for note in conn.notifies():
                        name, _, pos = note.payload.rpartition(":")
                        self._update({name: int(pos)})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the projection position feed; reconnecting")
                await asyncio.sleep(1.0)

    def _update(self, new: Mapping[str, int]) -> None:
        for name, pos in new.items():
            # A rebuild restarts from 0; positions only count forward for waiters.
            if pos >= self.positions.get(name, 0) or pos == 0:
                self.positions[name] = pos
        still = []
        for targets, future in self._waiters:
            if future.done():
                continue
            if self.reached(targets):
                future.set_result(None)
            else:
                still.append((targets, future))
        self._waiters = still

    def reached(self, targets: Mapping[str, int]) -> bool:
        return all(self.positions.get(name, 0) >= pos for name, pos in targets.items())

    async def wait_for(self, targets: Mapping[str, int], timeout: float = 15.0) -> bool:
        """True once every projection in `targets` is at or past its position; False on timeout."""
        if not targets or self.reached(targets):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((targets, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            log.warning("projections did not catch up within %.0fs: %s", timeout, dict(targets))
            return False
