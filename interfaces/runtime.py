"""Wires the parts together for one process: event store, pools, projector, position feed, service."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from application.catalog import registry
from application.service import Service
from application.store import EventStore
from projections.catalog import all_projections
from projections.positions import ProjectionPositions
from projections.runner import Projector


class Runtime:
    def __init__(self, database_url: str, *, pool_size: int = 20) -> None:
        self.database_url = database_url
        self.store = EventStore(database_url)
        self.pool = ConnectionPool(
            database_url, min_size=2, max_size=pool_size, open=True, name="flusia",
            kwargs={"row_factory": dict_row, "autocommit": True},
        )
        self.projections = all_projections()
        self.projector = Projector(self.store, self.pool, self.projections)
        self.positions = ProjectionPositions(database_url)
        self.registry = registry
        self.service = Service(registry, self.store, self.pool, self.projections, self.positions)

    def projection(self, name: str):
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(name)

    def close(self) -> None:
        self.projector.stop()
        self.pool.close()
        self.store.close()
