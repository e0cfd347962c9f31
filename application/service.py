"""Runs operations: validation, permission check, unit of work, idempotency, read-your-writes.

The eventsourcing Application and psycopg pool are synchronous; async callers reach them through
anyio's bounded worker threads, never on the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
import msgspec
from anyio import CapacityLimiter
from eventsourcing.persistence import IntegrityError
from psycopg_pool import ConnectionPool

from application.errors import InvalidArguments, PermissionDenied, ToolError, UnknownTool
from application.principal import Principal
from application.registry import Operation, Registry
from application.store import EventStore
from application.values import check_storable
from domain.base import TenantAggregate
from domain.errors import DomainError

log = logging.getLogger("flusia.tools")
MAX_CONFLICT_RETRIES = 12


@dataclass
class QueryContext:
    principal: Principal
    conn: Any  # psycopg.Connection with dict rows

    @property
    def org_id(self) -> UUID:
        return self.principal.organization_id


@dataclass
class UnitOfWork:
    """What a command handler gets: load aggregates of the caller's organization, and stage them for saving."""

    principal: Principal
    store: EventStore
    pool: ConnectionPool
    pending: list[TenantAggregate] = field(default_factory=list)
    _borrowed: Any = None
    _conn: Any = None

    @property
    def org_id(self) -> UUID:
        return self.principal.organization_id

    @property
    def conn(self) -> Any:
        """A read connection, borrowed from the pool only by handlers that check something (most do not)."""
        if self._conn is None:
            self._borrowed = self.pool.connection()
            self._conn = self._borrowed.__enter__()
        return self._conn

    def close(self) -> None:
        if self._borrowed is not None:
            self._borrowed.__exit__(None, None, None)
            self._borrowed = self._conn = None

    def get(self, aggregate_type: type[TenantAggregate], aggregate_id: UUID, *, field: str) -> Any:
        from eventsourcing.application import AggregateNotFoundError

        from domain.errors import NotFound

        try:
            agg = self.store.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(aggregate_type.entity_name, aggregate_id, field=field) from None
        if not isinstance(agg, aggregate_type):
            raise NotFound(aggregate_type.entity_name, aggregate_id, field=field)
        try:
            agg.ensure_usable(self.org_id)
        except DomainError as e:
            e.field = field
            raise
        self.add(agg)
        return agg

    def add(self, *aggregates: TenantAggregate) -> None:
        for agg in aggregates:
            if all(agg is not p for p in self.pending):
                self.pending.append(agg)


def _format_validation(e: msgspec.ValidationError) -> InvalidArguments:
    text = str(e)
    path = None
    m = re.search(r" - at `\$\.?(.*)`$", text)
    if m:
        path = m.group(1) or None
        text = text[: m.start()]
    m2 = re.match(r"Object contains unknown field `(.+)`", text)
    if m2:
        path = (f"{path}." if path else "") + m2.group(1)
        text = "unknown argument; check the tool's inputSchema for allowed arguments"
    m3 = re.match(r"Object missing required field `(.+)`", text)
    if m3:
        path = (f"{path}." if path else "") + m3.group(1)
        text = "required argument is missing"
    where = f"`{path}`" if path else "arguments"
    return InvalidArguments(f"Invalid {where}: {text}", field=path)


class Service:
    def __init__(
        self,
        registry: Registry,
        store: EventStore,
        pool: ConnectionPool,
        projections: list[Any],
        positions: Any | None = None,
        *,
        threads: int = 16,
    ) -> None:
        self.registry = registry
        self.store = store
        self.pool = pool
        self.positions = positions
        self._topic_projections: dict[str, list[str]] = {}
        for p in projections:
            for topic in p.topics():
                self._topic_projections.setdefault(topic, []).append(p.name)
        self.limiter = CapacityLimiter(threads)
        # Without the async position feed (CLI, in-process tests), a writer brings projections up to date itself.
        self.sync_settle: Any | None = None

    # -- entry point -------------------------------------------------------------------------------------
    async def call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Run one tool for a principal; returns the JSON-able result or raises ToolError. Logs one line."""
        started = time.perf_counter()
        status = "ok"
        try:
            return await self._call(principal, name, arguments)
        except ToolError as e:
            status = e.code
            raise
        except DomainError as e:
            status = e.code
            raise ToolError(e.message, field=e.field, code=e.code) from None
        except Exception:
            status = "internal_error"
            log.exception("tool failed org=%s tool=%s", principal.organization_id, name)
            raise ToolError("internal error; nothing was changed unless the result said so", code="internal_error") from None
        finally:
            log.info(
                "tool_call org=%s tool=%s duration_ms=%.1f status=%s",
                principal.organization_id, name if self.registry.get(name) else "<unknown>",
                (time.perf_counter() - started) * 1000, status,
            )

    async def _call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        op = self.registry.get(name)
        if op is None:
            raise UnknownTool(f"unknown tool {name!r}", field="name")
        if not principal.can(op.resource, op.action):
            raise PermissionDenied(
                f"missing permission {op.permission}: the token or the user's role does not grant {op.action} on {op.resource}"
            )
        try:
            params = msgspec.convert(arguments or {}, op.input)
        except msgspec.ValidationError as e:
            raise _format_validation(e) from None
        check_storable(params)
        if op.kind == "query":
            out = await self._thread(self.run_query, op, params, principal)
        else:
            out = await self.run_command_async(op, params, principal)
        return msgspec.to_builtins(out)

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- queries -----------------------------------------------------------------------------------------
    @contextmanager
    def query_context(self, principal: Principal) -> Iterator[QueryContext]:
        with self.pool.connection() as conn:
            yield QueryContext(principal, conn)

    def run_query(self, op: Operation, params: Any, principal: Principal) -> Any:
        with self.query_context(principal) as ctx:
            return op.handler(params, ctx)

    # -- commands ----------------------------------------------------------------------------------------
    async def run_command_async(self, op: Operation, params: Any, principal: Principal) -> Any:
        returned, targets = await self._thread(self.run_command, op, params, principal)
        if targets:
            if self.positions is not None:
                await self.positions.wait_for(targets)
            elif self.sync_settle is not None:
                await self._thread(self.sync_settle, targets)
        if op.present is None:
            return returned
        return await self._thread(self._present, op, returned, principal)

    def _present(self, op: Operation, returned: Any, principal: Principal) -> Any:
        with self.query_context(principal) as ctx:
            return op.present(ctx, returned)

    def run_command(self, op: Operation, params: Any, principal: Principal) -> tuple[Any, dict[str, int]]:
        """Handle, save atomically with the idempotency key and cause; retry optimistic-concurrency conflicts."""
        key = getattr(params, "idempotency_key", None)
        request_hash = None
        if key is not None:
            unkeyed = msgspec.structs.replace(params, idempotency_key=None)
            request_hash = hashlib.sha256(msgspec.json.encode(unkeyed)).hexdigest()
        for attempt in range(MAX_CONFLICT_RETRIES):
            if key is not None:
                replay = self._replay(op, principal, key, request_hash)
                if replay is not None:
                    return replay, {}
            uow = UnitOfWork(principal, self.store, self.pool)
            try:
                returned = op.handler(params, uow)
            finally:
                uow.close()
            idempotency = None
            if key is not None:
                idempotency = {
                    "organization_id": principal.organization_id, "key": key, "tool": op.name,
                    "request_hash": request_hash, "result": msgspec.to_builtins(returned),
                }
            cause = {
                "organization_id": principal.organization_id, "user_id": principal.user_id,
                "token_id": principal.token_id, "oauth_client_id": principal.oauth_client_id,
                "correlation_id": principal.correlation_id, "tool": op.name,
            }
            try:
                recordings = self.store.save(*uow.pending, idempotency=idempotency, cause=cause)
            except IntegrityError:
                if attempt == MAX_CONFLICT_RETRIES - 1:
                    raise ToolError("the entity kept changing concurrently; try again", code="conflict") from None
                # Someone else wrote the same aggregate (or the same key) first: reload and retry, with a little
                # jitter so that a crowd of writers does not collide again in lockstep.
                time.sleep(random.uniform(0, 0.004) * (attempt + 1))
                continue
            return returned, self._targets(recordings)
        raise AssertionError("unreachable")

    def _replay(self, op: Operation, principal: Principal, key: str, request_hash: str) -> Any | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT tool, request_hash, result FROM idempotency_keys WHERE organization_id = %s AND key = %s",
                (principal.organization_id, key),
            ).fetchone()
        if row is None:
            return None
        if row["tool"] != op.name or row["request_hash"] != request_hash:
            raise InvalidArguments(
                f"idempotency_key was already used for a different call ({row['tool']}); use a new key",
                field="idempotency_key",
            )
        return msgspec.convert(row["result"], op.returns)

    def _targets(self, recordings: list[Any]) -> dict[str, int]:
        """Which projections must catch up, and to which position, before the caller may read."""
        targets: dict[str, int] = {}
        for r in recordings:
            for name in self._topic_projections.get(r.notification.topic, ()):
                targets[name] = max(targets.get(name, 0), r.notification.id)
        return targets
