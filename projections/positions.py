"""Read-your-writes: wait until projections have applied given notification ids, and know what is parked.

One LISTEN connection per process follows `flusia_projections`; positions and parked events start from the
tracking and parking tables (read after LISTEN, so no announcement is missed). Waiters are woken by
notifications (or directly by the projector in this process), never by sleeping or polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Literal
from uuid import UUID

import psycopg

from projections.db_connections import connection_lost
from projections.projector import CHANNEL

log = logging.getLogger("flusia.consistency")
WaitResult = Literal["ok", "degraded", "timeout"]


class ProjectionPositions:
    """Known positions of every projection, parked events per (projection, organization), and the writers
    waiting for some positions. Lives on the event loop; the projector's thread reaches it through the
    thread-safe `advanced` / `parked` / `unparked` (the projector's `ConsumerListener`)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.positions: dict[str, int] = {}
        self.parked_events: dict[tuple[str, UUID], int] = {}
        self._waiters: list[tuple[Mapping[str, int], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._follow(), name="projection-positions")
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    def _soon(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    # -- the projector in this process (any thread) ------------------------------------------------------
    def advanced(self, name: str, position: int) -> None:
        self._soon(self._update, {name: position})

    def parked(self, name: str, organization_id: UUID, notification_id: int) -> None:
        self._soon(self._park, name, organization_id, notification_id)

    def unparked(self, name: str, organization_id: UUID | None) -> None:
        self._soon(self._unpark, name, organization_id)

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
                    positions = {name: pos for name, pos in await cur.fetchall()}
                    cur = await conn.execute("SELECT consumer, organization_id, notification_id FROM consumer_parked")
                    self.parked_events = {(name, org): nid for name, org, nid in await cur.fetchall()}
                    self._update(positions)
                    self._ready.set()
                    async for note in conn.notifies():
                        self._heard(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Writers waiting meanwhile answer at WRITE_WAIT_SECONDS that their change was stored; on reconnect
                # the positions are read again, so none waits for an announcement lost in between.
                if connection_lost(e):
                    log.warning("lost the projection position feed error=%s; reconnecting", type(e).__name__)
                    await asyncio.sleep(0.2)
                else:
                    log.exception("lost the projection position feed; reconnecting")
                    await asyncio.sleep(1.0)

    def _heard(self, payload: str) -> None:
        if payload.startswith("park|"):
            _, name, org, nid = payload.split("|")
            self._park(name, UUID(org), int(nid))
        elif payload.startswith("unpark|"):
            _, name, org = payload.split("|")
            self._unpark(name, None if org == "*" else UUID(org))
        else:
            name, _, pos = payload.rpartition(":")
            self._update({name: int(pos)})

    def _park(self, name: str, organization_id: UUID, notification_id: int) -> None:
        self.parked_events[(name, organization_id)] = notification_id

    def _unpark(self, name: str, organization_id: UUID | None) -> None:
        for key in [k for k in self.parked_events if k[0] == name and organization_id in (None, k[1])]:
            del self.parked_events[key]

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

    def parked_for(self, organization_id: UUID) -> dict[str, int]:
        """Projections holding a parked event of this organization: name -> the parked notification id."""
        return {name: nid for (name, org), nid in self.parked_events.items() if org == organization_id}

    def behind(self, targets: Mapping[str, int], organization_id: UUID) -> dict[str, int]:
        """Of `targets`, the projections where this organization's events up to the target wait behind a parked one."""
        parked = self.parked_for(organization_id)
        return {name: parked[name] for name, pos in targets.items() if name in parked and parked[name] <= pos}

    async def wait_for(self, targets: Mapping[str, int], organization_id: UUID | None = None,
                       timeout: float = 15.0) -> WaitResult:
        """'ok' once every projection in `targets` has applied its position for this organization; 'degraded'
        when one of them set this organization's events aside (parked); 'timeout' when not reached in time."""
        if targets and not self.reached(targets):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((targets, future))
            try:
                await asyncio.wait_for(future, timeout)
            except TimeoutError:
                log.warning("projections did not catch up within %.1fs: %s", timeout, dict(targets))
                return "timeout"
        if organization_id is not None and self.behind(targets, organization_id):
            return "degraded"
        return "ok"
