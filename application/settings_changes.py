"""Changes to the auth and settings tables, made in one transaction with their `settings_changes` row.

Organizations, users, roles, invitations, connections and API tokens are plain tables (README: deviation from
DESIGN.md), so a tool that changes them does not append events. `admin_transaction` gives its handler a
transaction that
- first locks the organization's row, so settings changes of one organization happen one after the other (the
  "last active admin" rule cannot be raced past by two concurrent demotions);
- records each change with `record` (who: user, token or OAuth client, correlation id; the tool; the entity;
  field-level before/after without secrets) in `settings_changes`, which operators and the audit tools read;
- stores the call's idempotency key with its result in the same transaction, so a retried call returns the first
  result and changes nothing, and a crash cannot leave a change without its key (the tool runner then finds the
  key already stored and answers the stored result, as it does for a concurrent duplicate).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from application.errors import ToolError
from application.runner import UnitOfWork
from domain.errors import NotFound


@dataclass
class AdminTransaction:
    conn: Any
    uow: UnitOfWork
    tool: str
    returned: list[Any] = field(default_factory=list)

    @property
    def org_id(self) -> UUID:
        return self.uow.org_id

    def record(self, entity_type: str, entity_id: Any, action: str, changes: dict[str, Any] | None = None) -> None:
        p = self.uow.principal
        self.conn.execute(
            "INSERT INTO settings_changes (organization_id, actor_user_id, actor_token_id, actor_oauth_client_id,"
            " correlation_id, tool, entity_type, entity_id, action, changes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (p.organization_id, p.user_id, p.token_id, p.oauth_client_id, p.correlation_id, self.tool, entity_type,
             str(entity_id), action, Jsonb(msgspec.to_builtins(changes or {}))),
        )


def record_console(conn: Any, org_id: UUID, command: str, entity_type: str, entity_id: Any, action: str,
                   changes: dict[str, Any]) -> None:
    """A change made with the server's command line (`flusia user deactivate`, `flusia token revoke`, ...): no user,
    token or OAuth client acted, so the row names none and its tool is the command; operators see it beside the
    assistant's changes (`flusia settings changes`, crm_audit_recent_changes)."""
    conn.execute(
        "INSERT INTO settings_changes (organization_id, correlation_id, tool, entity_type, entity_id, action, changes)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (org_id, uuid4(), command, entity_type, str(entity_id), action, Jsonb(msgspec.to_builtins(changes))))


def request_hash(command: Any) -> str:
    """The hash the tool runner stores beside an idempotency key: the call's arguments without the key."""
    unkeyed = msgspec.structs.replace(command, idempotency_key=None)
    return hashlib.sha256(msgspec.json.encode(unkeyed)).hexdigest()


@contextmanager
def admin_transaction(uow: UnitOfWork, tool: str, command: Any) -> Iterator[AdminTransaction]:
    """`with admin_transaction(uow, "crm_settings_x", cmd) as tx: ...; tx.returned.append(result)`: the change, its
    log rows and (when the call has one) its idempotency key with `result`, committed together or not at all."""
    with uow.pool.connection() as conn, conn.transaction():
        org = conn.execute("SELECT id FROM organizations WHERE id = %s FOR UPDATE", (uow.org_id,)).fetchone()
        if org is None:
            raise NotFound("organization", uow.org_id)
        tx = AdminTransaction(conn, uow, tool)
        yield tx
        key = getattr(command, "idempotency_key", None)
        if key is not None and tx.returned:
            try:
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO idempotency_keys (organization_id, key, tool, request_hash, result)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        (uow.org_id, key, tool, request_hash(command), Jsonb(msgspec.to_builtins(tx.returned[-1]))))
            except psycopg.errors.UniqueViolation:
                raise ToolError("a call with this idempotency_key was made at the same moment; nothing was changed by "
                                "this one. Repeat it to get that call's result.", code="conflict",
                                field="idempotency_key") from None


def recent(conn: Any, org_id: UUID, limit: int = 50) -> list[dict[str, Any]]:
    """The organization's latest settings changes, newest first, with the acting user's name beside the id."""
    return conn.execute(
        "SELECT c.id, c.occurred_at, c.actor_user_id, u.name AS actor_name, c.actor_token_id, c.actor_oauth_client_id,"
        " c.correlation_id, c.tool, c.entity_type, c.entity_id, c.action, c.changes"
        " FROM settings_changes c LEFT JOIN users u ON u.id = c.actor_user_id"
        " WHERE c.organization_id = %s ORDER BY c.id DESC LIMIT %s", (org_id, limit)).fetchall()
