"""Sending WhatsApp messages at most once: recorded before the Cloud API is called, completed after.

1. The message is recorded (`WhatsappMessage.Recorded`, status `sending`) in the same statement as its
   `whatsapp_outbox` row (state `sending`): nothing is sent that is not recorded first. Its id is derived from the
   call's idempotency key when there is one, so a repeated call finds the same record.
2. While the Cloud API is called, the sender holds a session advisory lock named after the message (on a pooled
   connection): a process that dies mid-call loses the lock with its connection.
3. The Cloud API's answer is recorded: `Accepted` with its message id (the outbox row moves to `accepted` in the same
   statement, with the call's idempotency key); a refusal is `SendFailed` (state `failed`, or `retry` for a rate
   limit, which may be sent again with the same key); an answer lost on the way is `Interrupted` (the message may
   have gone out: it is never sent again; a later status webhook names what happened, matched by the message id we
   pass as `biz_opaque_callback_data`).

A call that finds its message already recorded (the same idempotency key) never sends again unless the record says
it was refused for a passing reason: `accepted` answers the message, `failed` repeats the refusal, `sending` with the
lock held by another call is "in progress", `sending` with the lock free means the sender died between the call and
its record: the message is marked interrupted (not sent again). The worker (application/whatsapp_inbox.py) marks such
abandoned sends interrupted too, so no record stays `sending`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError

from application import whatsapp_cloud as cloud
from application.runner import UnitOfWork
from application.store import SideWrite
from domain.errors import Conflict, DomainError
from domain.whatsapp import Chat, WhatsappMessage, outbound_message_id

log = logging.getLogger("flusia.whatsapp")
SEND_LOCK = 72_000_015
"""Advisory lock class of a send in flight: (SEND_LOCK, hashtext(message id)) is held during the Cloud API call."""
INTERRUPTED_NOTE = ("the server stopped (or lost WhatsApp's answer) while this message was being handed to WhatsApp: "
                    "it may or may not have been sent, and it is never sent again; its status changes if WhatsApp "
                    "reports it")
after_send: Callable[[UUID], None] | None = None
"""Called between the Cloud API's answer and its record (tests use it to stop a send there)."""
_answered: OrderedDict[UUID, str] = OrderedDict()
_answered_lock = threading.Lock()


class Refused(DomainError):
    code = "whatsapp_refused"


class RateLimited(DomainError):
    code = "rate_limited"


class InProgress(Conflict):
    pass


@dataclass
class Outgoing:
    kind: str                        # text | template
    text: str | None                 # what the customer reads
    details: dict[str, Any]          # template: name, language, parameters, template_id
    message: dict[str, Any]          # the Cloud API's part: {"type": "text", "text": {...}}


@dataclass
class Sent:
    message_id: UUID
    note: str | None = None
    extra: list[Any] = field(default_factory=list)


def cause_for(uow: UnitOfWork, tool: str) -> dict[str, Any]:
    p = uow.principal
    return {"organization_id": p.organization_id, "user_id": p.user_id, "token_id": p.token_id,
            "oauth_client_id": p.oauth_client_id, "correlation_id": p.correlation_id, "tool": tool,
            "workflow_run_id": p.workflow_run_id}


def _remember(message_id: UUID, wamid: str) -> None:
    with _answered_lock:
        _answered[message_id] = wamid
        while len(_answered) > 2000:
            _answered.popitem(last=False)


def _recalled(message_id: UUID) -> str | None:
    with _answered_lock:
        return _answered.get(message_id)


def _outbox(conn: Any, org_id: UUID, message_id: UUID) -> dict[str, Any] | None:
    return conn.execute("SELECT state, wamid, error_code, error_text, attempts FROM whatsapp_outbox"
                        " WHERE message_id = %s AND organization_id = %s", (message_id, org_id)).fetchone()


def _outbox_update(message_id: UUID, state: str, *, wamid: str | None = None, error: cloud.CloudError | None = None,
                   attempt: bool = False) -> SideWrite:
    return SideWrite(
        "UPDATE whatsapp_outbox SET state = %s, wamid = coalesce(%s, wamid), error_code = %s, error_text = %s,"
        " attempts = attempts + %s, updated_at = now() WHERE message_id = %s",
        (state, wamid, error.code if error else None, error.message if error else None, 1 if attempt else 0,
         message_id))


def _save(uow: UnitOfWork, tool: str, message_id: UUID, change: Callable[[WhatsappMessage], None],
          side: list[SideWrite]) -> WhatsappMessage:
    """Load the message, change it and save it at once with `side` (retrying a concurrent status report)."""
    for _ in range(8):
        message = uow.store.repository.get(message_id)
        change(message)
        try:
            uow.store.save(message, cause=cause_for(uow, tool), side_writes=side, organization_id=uow.org_id)
            return message
        except IntegrityError:
            continue
    raise Conflict("the message kept changing concurrently; try again")


def _lock(uow: UnitOfWork, message_id: UUID) -> bool:
    return bool(uow.conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS ok",
                                 (SEND_LOCK, str(message_id))).fetchone()["ok"])


def _unlock(uow: UnitOfWork, message_id: UUID) -> None:
    try:
        uow.conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (SEND_LOCK, str(message_id)))
    except Exception as e:  # noqa: BLE001 - the connection may be gone, and its lock with it
        log.warning("releasing a send lock failed error=%s", type(e).__name__)


def send(uow: UnitOfWork, tool: str, chat: Chat, outgoing: Outgoing, connection: cloud.Connection,
         idempotency_key: str | None) -> Sent:
    """Record, send, complete (see the module docstring). `chat` may be new (opened by this send)."""
    org_id = uow.org_id
    message_id = outbound_message_id(org_id, idempotency_key) if idempotency_key else uuid4()
    for _ in range(8):
        row = _outbox(uow.conn, org_id, message_id)
        if row is not None:
            return _resume(uow, tool, chat, message_id, row, outgoing, connection)
        message = WhatsappMessage.outbound(message_id, org_id, chat.id, outgoing.kind, outgoing.text, outgoing.details,
                                           datetime.now(UTC), uow.principal.user_id)
        chat.unarchive()
        record = SideWrite("INSERT INTO whatsapp_outbox (message_id, organization_id, chat_id, state)"
                           " VALUES (%s, %s, %s, 'sending')", (message_id, org_id, chat.id))
        try:
            uow.store.save(chat, message, cause=cause_for(uow, tool), side_writes=[record], organization_id=org_id)
        except IntegrityError:  # the chat changed (or was opened by a webhook) meanwhile, or the same key raced
            chat = uow.store.repository.get(chat.id) if _exists(uow, chat.id) else _reopen(chat)
            continue
        return _deliver(uow, tool, chat, message, outgoing, connection)
    raise Conflict("the chat kept changing concurrently; try again")


def _exists(uow: UnitOfWork, aggregate_id: UUID) -> bool:
    from eventsourcing.application import AggregateNotFoundError

    try:
        uow.store.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return False
    return True


def _reopen(chat: Chat) -> Chat:
    return Chat.open(chat.org_id, chat.phone_number_id, chat.wa_id, display_number=chat.display_number,
                     contact_name=chat.contact_name, client_id=chat.client_id, opened_by=chat.opened_by)


def _deliver(uow: UnitOfWork, tool: str, chat: Chat, message: WhatsappMessage, outgoing: Outgoing,
             connection: cloud.Connection) -> Sent:
    if not _lock(uow, message.id):
        raise InProgress("a send with this idempotency_key is in progress; ask again in a few seconds",
                         field="idempotency_key")
    try:
        try:
            wamid = cloud.CloudApi(connection).send(chat.wa_id, outgoing.message, str(message.id))
        except cloud.OutcomeUnknown:
            _interrupt(uow, message)
            return Sent(message.id, INTERRUPTED_NOTE)
        except cloud.CloudError as e:
            _save(uow, tool, message.id, lambda m: m.fail(e.code, e.title or e.message, retryable=e.retryable),
                  [_outbox_update(message.id, "retry" if e.retryable else "failed", error=e)])
            raise (RateLimited if e.retryable else Refused)(
                e.message, field="chat_id" if e.code == cloud.REENGAGEMENT else None) from None
        _remember(message.id, wamid)
        if after_send is not None:
            after_send(message.id)
        _accept(uow, message, wamid)
        return Sent(message.id)
    finally:
        _unlock(uow, message.id)


def _accept(uow: UnitOfWork, message: WhatsappMessage, wamid: str) -> None:
    """The answer is recorded by the tool runner's own save: with the call's idempotency key, and read back once
    the read models show it. A conflict there (a status report for this message came first) runs the call again,
    which finds the answer in `_answered`."""
    message.accept(wamid)
    uow.add(message)
    uow.side_writes.append(_outbox_update(message.id, "accepted", wamid=wamid))


def _interrupt(uow: UnitOfWork, message: WhatsappMessage) -> None:
    """Recorded by the tool runner's own save, like an answer (and read back once the read models show it)."""
    message.interrupt()
    uow.add(message)
    uow.side_writes.append(SideWrite("UPDATE whatsapp_outbox SET state = 'interrupted', updated_at = now()"
                                     " WHERE message_id = %s AND state = 'sending'", (message.id,)))


def _resume(uow: UnitOfWork, tool: str, chat: Chat, message_id: UUID, row: dict[str, Any], outgoing: Outgoing,
            connection: cloud.Connection) -> Sent:
    state = row["state"]
    if state == "accepted":
        message = uow.store.repository.get(message_id)
        if not message.accepted:
            _accept(uow, message, row["wamid"])
        return Sent(message_id)
    if state == "failed":
        raise Refused(row["error_text"] or "WhatsApp refused this message", field=None)
    if state == "interrupted":
        return Sent(message_id, INTERRUPTED_NOTE)
    if state == "retry":
        if not _lock(uow, message_id):
            raise InProgress("a send with this idempotency_key is in progress; ask again in a few seconds",
                             field="idempotency_key")
        try:
            message = _save(uow, tool, message_id, lambda m: m.retry(), [_outbox_update(message_id, "sending", attempt=True)])
        finally:
            _unlock(uow, message_id)
        return _deliver(uow, tool, chat, message, outgoing, connection)
    # sending: another call is at it (lock held), or its process died between the call and the record
    if not _lock(uow, message_id):
        raise InProgress("a send with this idempotency_key is in progress; ask again in a few seconds",
                         field="idempotency_key")
    try:
        message = uow.store.repository.get(message_id)
        wamid = _recalled(message_id)
        if wamid is not None:
            _accept(uow, message, wamid)
            return Sent(message_id)
        _interrupt(uow, message)
        return Sent(message_id, INTERRUPTED_NOTE)
    finally:
        _unlock(uow, message_id)


def interrupt(store: Any, org_id: UUID, message_id: UUID, cause: dict[str, Any]) -> None:
    """Mark a send whose sender died mid-call interrupted (outcome unknown, never sent again). The caller holds
    the message's send lock."""
    for _ in range(8):
        message = store.repository.get(message_id)
        message.interrupt()
        try:
            store.save(message, cause=cause, organization_id=org_id,
                       side_writes=[SideWrite("UPDATE whatsapp_outbox SET state = 'interrupted', updated_at = now()"
                                              " WHERE message_id = %s AND state = 'sending'", (message_id,))])
            return
        except IntegrityError:
            continue
    raise Conflict("the message kept changing concurrently; try again")


# -- template placeholders ------------------------------------------------------------------------------------------
def placeholder_values(conn: Any, org_id: UUID, *, client_id: UUID | None, deal_id: UUID | None,
                       sender_id: UUID | None) -> dict[str, Any]:
    """The settings templates' vocabulary (domain.templates.VOCABULARY) filled from the read models: the client, the
    deal (and its client), the organization and the user sending."""
    values: dict[str, Any] = {}
    if deal_id is not None:
        deal = conn.execute(
            "SELECT d.title, d.description, d.value_cents, d.currency, d.status, d.expected_close_date, d.close_date,"
            " d.client_id, d.custom_fields, (SELECT name FROM pipeline_stages s WHERE s.id = d.stage_id) AS stage,"
            " (SELECT name FROM pipelines p WHERE p.id = d.pipeline_id) AS pipeline,"
            " (SELECT name FROM users u WHERE u.id = d.owner_id) AS owner_name FROM deals d"
            " WHERE d.organization_id = %s AND d.id = %s", (org_id, deal_id)).fetchone()
        if deal is None:
            raise DomainError(f"deal {deal_id} not found", field="deal_id")
        values.update({f"deal.{k}": deal[k] for k in ("title", "description", "currency", "status", "stage", "pipeline",
                                                      "expected_close_date", "close_date", "owner_name")})
        values["deal.value"] = None if deal["value_cents"] is None else f"{deal['value_cents'] / 100:.2f}"
        values.update({f"deal.custom.{k}": v for k, v in (deal["custom_fields"] or {}).items()})
        client_id = client_id or deal["client_id"]
    if client_id is not None:
        client = conn.execute(
            "SELECT business_name, contact_name, vat_number, tax_code, email, phone, website, address, source, kind,"
            " status, custom_fields FROM clients WHERE organization_id = %s AND id = %s", (org_id, client_id)).fetchone()
        if client is None:
            raise DomainError(f"client {client_id} not found", field="client_id")
        for key, value in client.items():
            if key == "address" and isinstance(value, dict):
                value = ", ".join(str(v) for v in value.values() if v)
            if key != "custom_fields":
                values[f"client.{key}"] = value
        values.update({f"client.custom.{k}": v for k, v in (client["custom_fields"] or {}).items()})
    org = conn.execute("SELECT name, vat_number, address, logo_url, currency FROM organizations WHERE id = %s",
                       (org_id,)).fetchone() or {}
    for key, value in org.items():
        values[f"organization.{key}"] = ", ".join(str(v) for v in value.values() if v) if isinstance(value, dict) else value
    user = conn.execute("SELECT name, email FROM users WHERE id = %s AND organization_id = %s",
                        (sender_id, org_id)).fetchone() or {}
    values.update({"user.name": user.get("name"), "user.email": user.get("email")})
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in values.items()}
