"""Wires the parts together for one process: event store, pools, projector, position feed, service.

Tool calls and the projector use separate pools: every tool's database work runs under a statement timeout
(FLUSIA_STATEMENT_TIMEOUT_MS, default 5000), which must never stop a projection batch or a rebuild.
"""

from __future__ import annotations

import os

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from application.inventory import registry
from application.runner import ToolRunner
from application.store import EventStore
from projections.inventory import all_projections
from projections.positions import ProjectionPositions
from projections.projector import Projector


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


class Runtime:
    def __init__(self, database_url: str, *, pool_size: int = 20) -> None:
        self.database_url = database_url
        self.store = EventStore(database_url)
        timeout_ms = _int_env("FLUSIA_STATEMENT_TIMEOUT_MS", 5000)
        self.pool = ConnectionPool(
            database_url, min_size=2, max_size=pool_size, open=True, name="flusia", timeout=10,
            kwargs={"row_factory": dict_row, "autocommit": True, "options": f"-c statement_timeout={timeout_ms}"},
        )
        self.projector_pool = ConnectionPool(
            database_url, min_size=1, max_size=4, open=True, name="flusia-projector",
            kwargs={"row_factory": dict_row, "autocommit": True},
        )
        self.projections = all_projections()
        self.projector = Projector(self.store, self.projector_pool, self.projections)
        self.positions = ProjectionPositions(database_url)
        self.registry = registry
        self.runner = ToolRunner(registry, self.store, self.pool, self.projections, self.positions,
                               org_concurrency=_int_env("FLUSIA_ORG_CONCURRENCY", 0) or None,
                               statement_timeout_ms=timeout_ms)

    def projection(self, name: str):
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(name)

    def close(self) -> None:
        self.projector.stop()
        self.pool.close()
        self.projector_pool.close()
        self.store.close()
