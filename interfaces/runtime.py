"""The one bootstrap: every process (`flusia serve`, `flusia project`, the other CLI commands, the tests and the
benchmarks) builds its parts here: event store, pools, projections and their projector, the registry with
every toolset, and the tool runner.

`consistency` says how a write waits for the read models (read-your-writes):
- "follow" (the server): the projector runs in a thread of this process and the tool runner waits on the
  position feed (LISTEN/NOTIFY), started with `start()` on the event loop;
- "settle" (in-process callers without an event loop of their own: tests, benchmarks, the CLI): the writer
  brings the projections up to date itself before reading.

Tool calls and the projector use separate pools: every tool's database work runs under a statement timeout
(FLUSIA_STATEMENT_TIMEOUT_MS, default 5000), which must never stop a projection batch or a rebuild.

Consumers of the event stream and their queues (the projector with every projection and the workflow trigger
consumer, the workflow engine, the newsletter sender, the invoice sync and WhatsApp workers) run where `start` is
asked to run them: in `flusia serve` with one worker, in the parent process of `flusia serve --workers N` (its API
workers run none: `start(run_projector=False)`), and alone in `flusia project` (`run_consumers`). Any number of
such processes may share a database: each projection is applied by one process at a time (an advisory lock per
projection, a standby retrying every second), the newsletter sender and the WhatsApp inbox drain hold a lock of
their own, and workflow runs and invoice sync items are claimed one by one (row and advisory locks). A process
that dies loses its session and so its locks at once; a standby takes over at its next attempt.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Literal

from psycopg.rows import dict_row

from application.inventory import registry
from application.invoice_sync import InvoiceSyncWorker
from application.newsletter_sending import NewsletterSender
from application.runner import ToolRunner
from application.whatsapp_inbox import WhatsappWorker
from application.workflow_engine import WorkflowEngine
from application.store import EventStore
from projections.db_connections import HealingPool
from projections.inventory import all_projections
from projections.positions import ProjectionPositions
from projections.projector import Projector

Consistency = Literal["follow", "settle"]


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


class Runtime:
    def __init__(self, database_url: str, *, pool_size: int = 20, consistency: Consistency = "follow") -> None:
        self.database_url = database_url
        self.store = EventStore(database_url)
        timeout_ms = _int_env("FLUSIA_STATEMENT_TIMEOUT_MS", 5000)
        # HealingPool: a pooled connection the server has closed (PostgreSQL restarted) is dropped, not handed out.
        self.pool = HealingPool(
            database_url, min_size=2, max_size=pool_size, open=True, name="flusia", timeout=10,
            kwargs={"row_factory": dict_row, "autocommit": True, "options": f"-c statement_timeout={timeout_ms}"},
        )
        self.projector_pool = HealingPool(
            database_url, min_size=1, max_size=4, open=True, name="flusia-projector",
            kwargs={"row_factory": dict_row, "autocommit": True},
        )
        self.projections = all_projections()
        self.projector = Projector(self.store.mapper.to_domain_event, self.projector_pool, self.projections,
                                   channel=self.store.recorder.channel_name)
        self.projector.check_connections = self.store.check_connections  # its decoder reads keys through the store
        self.projector.prefetch = self.store.keyring.prefetch
        self.registry = registry
        self.positions = ProjectionPositions(database_url) if consistency == "follow" else None
        # Writers wait for read models only: a consumer that is not rebuildable (the workflow triggers) is not one.
        read_models = [p for p in self.projections if p.rebuildable]
        self.runner = ToolRunner(registry, self.store, self.pool, read_models, self.positions,
                                 settle=(lambda targets: self.settle()) if consistency == "settle" else None,
                                 org_concurrency=_int_env("FLUSIA_ORG_CONCURRENCY", 0) or None,
                                 statement_timeout_ms=timeout_ms)
        self.newsletter = NewsletterSender(self.store, database_url)
        """Sends campaigns in the background; started with the server (`start`), not by the CLI or tests."""
        self.workflow_engine = WorkflowEngine(self)
        """Runs workflows (application/workflow_engine.py): started by `start` in the server, by `flusia project`."""
        self._engine_task: asyncio.Task[None] | None = None
        self.invoice_sync = InvoiceSyncWorker(database_url, self.store)
        """Drains the invoice sync queue; started with the server. Tests and benchmarks call `run_pending()`."""
        self.whatsapp = WhatsappWorker(database_url, self.store)
        """Applies WhatsApp webhook deliveries in order; started with the server. Tests call `run_pending()`."""
        self._consumers = False
        from interfaces import metrics

        self.runner.observe = metrics.observe_tool_call
        self.pool_metrics = metrics.PoolSampler(lambda: {
            "tools": self.pool, "projector": self.projector_pool,
            "workflows": self.workflow_engine._pool})  # noqa: SLF001 - opened on first use

    def projection(self, name: str):
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(name)

    def settle(self) -> None:
        """Bring every projection up to date now, in this thread."""
        for p in self.projections:
            self.projector.catch_up(p)

    async def start(self, *, run_projector: bool = True, run_workflows: bool | None = None,
                    run_consumers: bool | None = None) -> None:
        """On the server's event loop: follow positions and parked events, and run the projector thread; the
        workflow engine runs where the projector does (FLUSIA_WORKFLOW_ENGINE=0 keeps it off in this process), and
        so do the newsletter sender and the invoice sync and WhatsApp workers unless `run_consumers` says."""
        if self.positions is not None:
            await self.positions.start()
            self.projector.listener = self.positions
        if run_projector:
            self.projector.start(self.database_url)
        if run_workflows is None:
            run_workflows = run_projector and os.environ.get("FLUSIA_WORKFLOW_ENGINE", "1") != "0"
        if run_workflows:
            self._engine_task = asyncio.create_task(self.workflow_engine.run_forever(), name="workflow-engine")
        self._consumers = run_projector if run_consumers is None else run_consumers
        if self._consumers:
            self.newsletter.start()
        import anyio

        await anyio.to_thread.run_sync(self._secret_key)  # generated into $FLUSIA_HOME on first start when unset
        if self._consumers:
            self.invoice_sync.start()
            self.whatsapp.start()
        self.pool_metrics.start()

    async def stop(self) -> None:
        import anyio

        if self._engine_task is not None:
            self.workflow_engine.stop()
            self._engine_task.cancel()
            try:
                await self._engine_task
            except (asyncio.CancelledError, Exception):
                pass
            self._engine_task = None
        await anyio.to_thread.run_sync(self.newsletter.stop)
        await anyio.to_thread.run_sync(self.invoice_sync.stop)
        await anyio.to_thread.run_sync(self.whatsapp.stop)
        if self.positions is not None:
            await self.positions.stop()
        self.projector.stop()
        await anyio.to_thread.run_sync(self.pool_metrics.stop)

    def run_consumers(self, stop: threading.Event) -> None:
        """Every stream consumer and queue worker of this process, until `stop` is set (`flusia project`, and the
        parent of `flusia serve --workers N`): an event loop of its own in the calling thread, following positions
        so that the workflow engine's writes wait for the read models like any tool call."""
        import anyio

        async def consume() -> None:
            await self.start(run_projector=True, run_consumers=True)
            try:
                while not stop.is_set():
                    await anyio.sleep(0.2)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.stop()

        anyio.run(consume)

    def _secret_key(self) -> None:
        """The key organization secrets are encrypted with (application/secrets.py)."""
        from application import secrets

        with self.pool.connection() as conn:
            secrets.server_key(conn)

    def close(self) -> None:
        self.pool_metrics.stop()
        self.newsletter.stop()
        self.invoice_sync.stop()
        self.whatsapp.stop()
        self.projector.stop()
        self.workflow_engine.close()
        self.pool.close()
        self.projector_pool.close()
        self.store.close()
