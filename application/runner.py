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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
import msgspec
import psycopg
from anyio import CapacityLimiter
from eventsourcing.persistence import IntegrityError
from psycopg_pool import ConnectionPool, PoolTimeout

from application import confirmation
from application.guidance import explain_not_found, explain_validation
from application.logsafe import describe
from application.organization import org_today
from application.errors import (InvalidArguments, PermissionDenied, ReadModelDegraded, StoredButNotReadable, ToolError,
                                UnknownTool)
from application.principal import Principal
from application.registry import Operation, Registry
from application.store import AppendOutcomeUnknown, EventStore, SideWrite
from application.shapes import without_unreadable_labels
from application.values import check_storable, check_text
from domain.base import TenantAggregate
from domain.errors import DomainError, NotFound
from projections.db_connections import connection_lost

log = logging.getLogger("flusia.tools")
MAX_CONFLICT_RETRIES = 12
WRITE_WAIT_SECONDS = 2.0
"""How long a write waits for the read models before answering that it was stored but cannot be shown yet."""


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
    side_writes: list[SideWrite] = field(default_factory=list)
    """Writes outside the event store that must commit with the events (attachment content)."""
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


class _Running:
    """The connection a read is using, so that another thread can cancel its query."""

    conn: Any = None

    def cancel(self) -> None:
        conn = self.conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=2.0)
            except Exception as e:  # the query may have just finished; nothing to stop
                log.info("cancelling a query failed error=%s", type(e).__name__)


@dataclass
class Committed:
    """What a command did: the handler's result, the projection positions to wait for, and what was stored."""

    returned: Any
    targets: dict[str, int]
    ids: list[str] = field(default_factory=list)
    last_event: int | None = None


def _format_validation(e: msgspec.ValidationError) -> InvalidArguments:
    text = str(e)
    path = None
    m = re.search(r" - at `\$\.?(.*)`$", text)
    if m:
        path = m.group(1) or None
        text = text[: m.start()]
    elif m := re.search(r" - at `key` in `\$\.?(.*)`$", text):  # an object's key, e.g. of custom_fields
        path = m.group(1) or None
        text = f"a key is not allowed: {text[: m.start()]}"
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


class ToolRunner:
    def __init__(
        self,
        registry: Registry,
        store: EventStore,
        pool: ConnectionPool,
        projections: list[Any],
        positions: Any | None = None,
        *,
        settle: Callable[[dict[str, int]], None] | None = None,
        threads: int = 16,
        org_concurrency: int | None = None,
        statement_timeout_ms: int = 0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.pool = pool
        self.positions = positions
        self._topic_projections: dict[str, list[str]] = {}
        self._projection_resources: dict[str, set[str]] = {p.name: set(p.resources) for p in projections}
        for p in projections:
            for topic in p.topics():
                self._topic_projections.setdefault(topic, []).append(p.name)
        self.limiter = CapacityLimiter(threads)
        self.org_concurrency = org_concurrency or max(2, threads // 2)
        self._org_limiters: dict[UUID, CapacityLimiter] = {}
        self.statement_timeout_ms = statement_timeout_ms
        # Without the async position feed (CLI, in-process tests), a writer brings projections up to date itself.
        self.sync_settle = settle
        self._checked_at = -1e9
        self.observe: Callable[[str, str, float], None] | None = None
        """Told of every call (tool name or "<unknown>", status, seconds) after its log line: the server's metrics."""

    # -- entry point -------------------------------------------------------------------------------------
    async def call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Run one tool for a principal; returns the JSON-able result or raises ToolError. Logs one line.

        An organization runs at most `org_concurrency` calls at once: one tenant's burst queues behind itself
        while the others keep the remaining threads and connections."""
        started = time.perf_counter()
        status = "ok"
        try:
            limiter, ticket = self._org_limiter(principal.organization_id), object()
            await limiter.acquire_on_behalf_of(ticket)  # a ticket per call: a call may run tools itself
            try:
                return await self._call(principal, name, arguments)
            finally:
                limiter.release_on_behalf_of(ticket)
        except ToolError as e:
            status = e.code
            raise
        except DomainError as e:
            status = e.code
            message = e.message
            if isinstance(e, NotFound) and getattr(e, "entity_id", None) is not None:
                message = await self._thread(self._explain_not_found, principal, e) or message
            raise ToolError(message, field=e.field, code=e.code) from None
        except psycopg.errors.QueryCanceled:
            status = "timeout"
            raise ToolError(
                f"the database work took longer than {self.statement_timeout_ms / 1000:g} s and was stopped; nothing "
                "was changed. Narrow the request (fewer or more specific words, a filter, a smaller limit).",
                code="timeout") from None
        except PoolTimeout:
            status = "busy"
            raise ToolError("the server is too busy to take this call now; nothing was changed. Try again shortly.",
                            code="busy") from None
        except AppendOutcomeUnknown as e:
            status = "unavailable"
            log.error("tool lost its database connection while saving org=%s tool=%s error=%s",
                      principal.organization_id, name, describe(e))
            raise self._outcome_unknown(bool((arguments or {}).get("idempotency_key"))) from None
        except Exception as e:
            if connection_lost(e):
                status = "unavailable"
                log.warning("tool lost its database connection org=%s tool=%s error=%s", principal.organization_id,
                            name, describe(e))
                await self._thread(self._check_connections)
                op = self.registry.get(name)
                raise ToolError(
                    "the database connection was lost (the database may be restarting); nothing was changed. "
                    "Try the call again in a moment.", code="unavailable",
                    details={"retryable": True, **({"stored": False} if op and op.kind != "query" else {})},
                ) from None
            status = "internal_error"
            log.error("tool failed org=%s tool=%s error=%s", principal.organization_id, name, describe(e))
            raise ToolError("internal error; nothing was changed unless the result said so", code="internal_error") from None
        finally:
            tool, seconds = name if self.registry.get(name) else "<unknown>", time.perf_counter() - started
            log.info("tool_call org=%s tool=%s duration_ms=%.1f status=%s", principal.organization_id, tool,
                     seconds * 1000, status)
            if self.observe is not None:
                self.observe(tool, status, seconds)

    @staticmethod
    def _outcome_unknown(keyed: bool) -> ToolError:
        again = ("Repeat the call with the same idempotency_key: if it was stored you get its original result, "
                 "otherwise it is done now, once." if keyed else
                 "This call had no idempotency_key: check whether the change is there before repeating it (a write "
                 "with an idempotency_key can always be repeated safely).")
        return ToolError("the database connection was lost while your change was being saved, and the database did "
                         "not come back in time to tell whether it was stored. " + again, code="unavailable",
                         details={"retryable": True, "stored": "unknown"})

    def _check_connections(self) -> None:
        """After a lost connection (PostgreSQL restarted): replace every pooled connection that no longer works at
        once, rather than letting each of the next calls meet one. At most once a second."""
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return
        self._checked_at = now
        for check in (self.pool.check, self.store.check_connections):
            try:
                check()
            except Exception as e:  # the database may still be down; the pools reconnect by themselves
                log.info("checking pooled connections failed error=%s", type(e).__name__)

    async def _call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        op = self.registry.get(name)
        if op is None:
            raise UnknownTool(f"unknown tool {name!r}", field="name")
        missing = op.missing(principal.grants)
        if missing:
            raise PermissionDenied(op.refusal(missing))
        check_text(arguments)
        confirm = None
        if op.confirmable:  # preview / confirmation of a destructive call (application/confirmation.py)
            arguments, confirm = confirmation.take(arguments)
        try:
            params = msgspec.convert(arguments or {}, op.input)
        except msgspec.ValidationError as e:
            error = _format_validation(e)
            better = explain_validation(error.message.split(": ", 1)[-1], error.field, op.full_input_schema(),
                                        lambda: self._today(principal))
            if better is not None:
                where = f"`{error.field}`" if error.field else "arguments"
                error = InvalidArguments(f"Invalid {where}: {better}", field=error.field)
            raise error from None
        check_storable(params)
        if op.meta:
            return await op.handler(params, self, principal)
        if op.kind == "query":
            try:
                out = await self._cancellable(self.run_query, op, params, principal)
            except Exception as e:
                if not connection_lost(e) or isinstance(e, PoolTimeout):
                    raise
                # A read that met a stale connection (PostgreSQL restarted since it was pooled): once more, afresh.
                await self._thread(self._check_connections)
                out = await self._cancellable(self.run_query, op, params, principal)
        elif confirm is not None and confirm.preview:
            out = await self._thread(self.preview_command, op, params, principal)
        else:
            out = await self.run_command_async(op, params, principal, confirm.token if confirm else None)
        return without_unreadable_labels(msgspec.to_builtins(out), lambda resource: principal.can(resource, "read"))

    def _today(self, principal: Principal) -> Any:
        with self.pool.connection() as conn:
            return org_today(conn, principal.organization_id)

    def _explain_not_found(self, principal: Principal, error: NotFound) -> str | None:
        """'… is a deal id, not a client id', '… was deleted on … by …', '… was merged into …', or None."""
        def user_name(user_id: UUID) -> str | None:
            row = conn.execute("SELECT name FROM users WHERE id = %s AND organization_id = %s",
                               (user_id, principal.organization_id)).fetchone()
            return row["name"] if row else None

        def merged_into(originator: UUID) -> Any:
            try:
                return self.store.repository.get(originator).merged_into
            except Exception:
                return "another one"

        with self.pool.connection() as conn:
            return explain_not_found(conn, principal.organization_id, error.entity, error.entity_id, user_name,
                                     merged_into)

    def _org_limiter(self, org_id: UUID) -> CapacityLimiter:
        limiter = self._org_limiters.get(org_id)
        if limiter is None:
            limiter = self._org_limiters[org_id] = CapacityLimiter(self.org_concurrency)
        return limiter

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _cancellable(self, fn: Any, *args: Any) -> Any:
        """Run a read in a worker thread; if the caller goes away (the client disconnected), cancel its query in
        the database at once instead of letting it run on, holding a thread and a connection."""
        running = _Running()
        try:
            return await anyio.to_thread.run_sync(fn, *args, running, limiter=self.limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            running.cancel()
            raise

    # -- queries -----------------------------------------------------------------------------------------
    @contextmanager
    def query_context(self, principal: Principal, running: _Running | None = None) -> Iterator[QueryContext]:
        with self.pool.connection() as conn:
            if running is not None:
                running.conn = conn
            try:
                yield QueryContext(principal, conn)
            finally:
                if running is not None:
                    running.conn = None

    async def read(self, principal: Principal, fn: Callable[[QueryContext], Any]) -> Any:
        """Run `fn(ctx)` as a query runs (a worker thread, a pooled connection, cancelled if the caller goes
        away): for tools run by the runner itself that read the database (the connector's `search`)."""
        def run(running: _Running) -> Any:
            with self.query_context(principal, running) as ctx:
                return fn(ctx)

        return await self._cancellable(run)

    def run_query(self, op: Operation, params: Any, principal: Principal, running: _Running | None = None) -> Any:
        with self.query_context(principal, running) as ctx:
            parked = self.parked_for(principal.organization_id, ctx.conn)
            affected = {n: nid for n, nid in parked.items()
                        if self._projection_resources.get(n, set()) & {op.resource, *getattr(op, "reads", ())}}
            if affected:
                raise self._degraded(affected)
            try:
                return op.handler(params, ctx)
            except NotFound:
                if parked:  # the entity may be one of the events set aside: never a false "not found"
                    raise self._degraded(parked) from None
                raise

    # -- parked events (stream consumer failures) ----------------------------------------------------------
    def parked_for(self, org_id: UUID, conn: Any = None) -> dict[str, int]:
        """Read models holding a parked event of this organization: name -> parked notification id."""
        if self.positions is not None:
            return self.positions.parked_for(org_id)
        if conn is None:
            with self.pool.connection() as own:
                return self.parked_for(org_id, own)
        rows = conn.execute("SELECT consumer, notification_id FROM consumer_parked WHERE organization_id = %s",
                            (org_id,)).fetchall()
        return {r["consumer"]: r["notification_id"] for r in rows}

    @staticmethod
    def _degraded(parked: dict[str, int]) -> ReadModelDegraded:
        names = ", ".join(sorted(parked))
        return ReadModelDegraded(
            f"the {names} read model{'s are' if len(parked) > 1 else ' is'} behind for this organization: an event "
            f"(#{min(parked.values())}) could not be applied and is parked, so answers could be wrong or incomplete. "
            "Operators see it with `flusia projections failures` and apply it with `flusia projections retry`.",
            details={"behind": sorted(parked)})

    # -- commands ----------------------------------------------------------------------------------------
    async def run_command_async(self, op: Operation, params: Any, principal: Principal,
                                confirmation_token: str | None = None) -> Any:
        """Run a command, then answer only once the read models show it (read-your-writes). A command whose
        events were committed never answers an error saying nothing changed: if its result cannot be read back
        within WRITE_WAIT_SECONDS, or reading it fails, the error says it WAS stored, with the ids."""
        done = await self._thread(self.run_command, op, params, principal, confirmation_token)
        if done.targets:
            try:
                state = await self._settle(done.targets, principal.organization_id)
            except Exception as e:  # stored: whatever fails now must not read as "nothing changed"
                log.error("waiting for the read models failed org=%s tool=%s error=%s", principal.organization_id,
                          op.name, type(e).__name__)
                state = "unreadable"
            if state != "ok":
                raise self._stored_but(done, state, principal.organization_id)
        if op.present is None:
            return done.returned
        try:
            return await self._thread(self._present, op, done.returned, principal)
        except Exception as e:
            if not done.targets:  # an idempotent replay wrote nothing now: an ordinary error
                raise
            log.error("reading back a stored command failed org=%s tool=%s error=%s", principal.organization_id,
                      op.name, type(e).__name__)
            raise self._stored_but(done, "unreadable", principal.organization_id) from None

    async def _settle(self, targets: dict[str, int], org_id: UUID) -> str:
        if self.positions is not None:
            return await self.positions.wait_for(targets, org_id, timeout=WRITE_WAIT_SECONDS)
        if self.sync_settle is not None:
            await self._thread(self.sync_settle, targets)
        parked = await self._thread(self.parked_for, org_id)
        return "degraded" if any(name in targets and nid <= targets[name] for name, nid in parked.items()) else "ok"

    def _stored_but(self, done: Committed, state: str, org_id: UUID) -> ToolError:
        stored = (f"Your change WAS stored (events up to #{done.last_event}; ids: {', '.join(done.ids)}) "
                  "but it cannot be shown yet: ")
        details = {"stored": True, "ids": done.ids, "result": msgspec.to_builtins(done.returned)}
        advice = " Do not repeat the call (it would do it twice); read it again later."
        if state == "degraded":
            parked = self.parked_for(org_id)
            error = self._degraded(parked)
            return ReadModelDegraded(stored + error.message + advice, details={**details, **(error.details or {})})
        reason = ("the read models did not catch up within %.0f s." % WRITE_WAIT_SECONDS if state == "timeout"
                  else "reading it back failed.")
        return StoredButNotReadable(stored + reason + advice, details=details)

    def _present(self, op: Operation, returned: Any, principal: Principal) -> Any:
        with self.query_context(principal) as ctx:
            return op.present(ctx, returned)

    def run_command(self, op: Operation, params: Any, principal: Principal,
                    confirmation_token: str | None = None) -> Committed:
        """Handle, save atomically with the idempotency key and cause; retry optimistic-concurrency conflicts.
        With `confirmation_token`, the handler's effect is first checked against the preview's (and its own
        database work kept only then)."""
        key = getattr(params, "idempotency_key", None)
        request_hash = None
        if key is not None:
            unkeyed = msgspec.structs.replace(params, idempotency_key=None)
            request_hash = hashlib.sha256(msgspec.json.encode(unkeyed)).hexdigest()
        claims = None
        for attempt in range(MAX_CONFLICT_RETRIES):
            if key is not None:
                replay = self._replay(op, principal, key, request_hash)
                if replay is not None:
                    return Committed(replay, {})
            if confirmation_token is not None and claims is None:
                claims = confirmation.verify(confirmation.signing_secret(self.pool), confirmation_token, op.name,
                                             principal, params)
            held = confirmation.HeldPool(self.pool) if claims is not None else None
            uow = UnitOfWork(principal, self.store, held or self.pool)
            try:
                returned = self._handle(op, params, uow)
                if held is not None:
                    confirmation.check_unchanged(claims, confirmation.effect_of(uow, held, op.name, returned), uow)
            except BaseException:
                if held is not None:
                    held.finish(commit=False)
                raise
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
                "workflow_run_id": principal.workflow_run_id, "trace": principal.trace,
            }
            try:
                recordings = self.store.save(*uow.pending, idempotency=idempotency, cause=cause,
                                             side_writes=uow.side_writes)
            except IntegrityError:
                if held is not None:
                    held.finish(commit=False)
                if attempt == MAX_CONFLICT_RETRIES - 1:
                    raise ToolError("the entity kept changing concurrently; try again", code="conflict") from None
                # Someone else wrote the same aggregate (or the same key) first: reload and retry, with a little
                # jitter so that a crowd of writers does not collide again in lockstep.
                time.sleep(random.uniform(0, 0.004) * (attempt + 1))
                continue
            except BaseException:
                if held is not None:
                    held.finish(commit=False)
                raise
            if held is not None:
                held.finish(commit=True)  # the handler's own database work (settings tables), checked above
            ids = list(dict.fromkeys(str(r.domain_event.originator_id) for r in recordings))
            return Committed(returned, self._targets(recordings), ids,
                             max((r.notification.id for r in recordings), default=None))
        raise AssertionError("unreachable")

    def _handle(self, op: Operation, params: Any, uow: UnitOfWork) -> Any:
        try:
            return op.handler(params, uow)
        except NotFound:
            # Handlers check links against read models; with this organization's events parked those can lie.
            parked = self.parked_for(uow.org_id)
            if parked:
                raise self._degraded(parked) from None
            raise

    def preview_command(self, op: Operation, params: Any, principal: Principal) -> dict[str, Any]:
        """A destructive call's preview (application/confirmation.py): the handler runs in a unit of work that is
        never saved, its own database work in a transaction rolled back; answers what it would do and a token."""
        if getattr(params, "idempotency_key", None) is not None:
            params = msgspec.structs.replace(params, idempotency_key=None)  # a preview is never stored nor replayed
        held = confirmation.HeldPool(self.pool)
        uow = UnitOfWork(principal, self.store, held)
        try:
            returned = self._handle(op, params, uow)
            effect = confirmation.effect_of(uow, held, op.name, returned)
        finally:
            uow.close()
            held.finish(commit=False)
        claims = confirmation.claims_for(op.name, principal, params, effect)
        token = confirmation.issue(confirmation.signing_secret(self.pool), claims)
        return confirmation.preview_answer(op.name, effect, token, claims.expires)

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
