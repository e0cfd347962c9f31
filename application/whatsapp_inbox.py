"""WhatsApp webhook deliveries: checked and stored in the request, applied in order by a worker.

The webhook (interfaces/whatsapp_webhook.py) verifies `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the
organization's app secret, compared in constant time) and stores each message and status of the delivery as a row
of `whatsapp_inbox` (`store_delivery`), deduplicated by WhatsApp's ids (a message delivered twice is one row), only
for the organization's own business number, under an advisory lock so rows commit in id order. It answers 200 at
once. The worker (`WhatsappWorker`, a thread of `flusia serve`; tests and benchmarks call `run_pending`) applies the
rows in id order, per organization in one append each batch: chats opened (and linked to the CRM client whose phone
or contact's phone matches the number, when exactly one does), messages recorded, statuses reported on the messages
we sent (found by our id in `biz_opaque_callback_data`, else by WhatsApp's id). One worker runs at a time per
database (advisory lock held while it drains), so each chat's deliveries are applied in the order they arrived.

The worker also marks sends abandoned mid-call (the sender's process died) interrupted (application/whatsapp_send.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application import whatsapp_cloud as cloud
from application import whatsapp_send as sending
from application.listening_worker import ListeningWorker
from application.logsafe import describe
from application.store import EventStore, SideWrite
from domain.clients import phone_key
from domain.whatsapp import (Chat, WhatsappMessage, calling_code, chat_id, clean, clean_id, inbound_message_id,
                             match_keys, parse_message, parse_status)

log = logging.getLogger("flusia.whatsapp")
CHANNEL = "whatsapp_inbox"
INBOX_LOCK = 72_000_016
"""Transaction lock serialising inbox inserts: ids commit in order, so the worker never passes over one."""
WORKER_LOCK = 72_000_017
"""Session lock of the worker draining the inbox: one at a time per database, so chats keep their order."""
TOOL = "whatsapp_webhook"
MAX_BODY = 5 * 1024 * 1024
BATCH = 1000


# -- the webhook's side ---------------------------------------------------------------------------------------------
def signature_ok(app_secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header[len("sha256="):].strip().lower().encode())


def handshake_ok(verify_token: str, mode: str | None, token: str | None) -> bool:
    return mode == "subscribe" and token is not None and hmac.compare_digest(verify_token.encode(), token.encode())


def scrub(value: Any, depth: int = 0) -> Any:
    """Webhook JSON made storable (jsonb holds no NUL nor unpaired surrogates), nested at most 20 deep."""
    if depth > 20:
        return None
    if isinstance(value, str):
        return clean(value, 100_000)
    if isinstance(value, Mapping):
        return {clean(str(k), 200): scrub(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, list):
        return [scrub(v, depth + 1) for v in value[:1000]]
    if isinstance(value, float) and value != value:
        return None
    return value


class BadDelivery(ValueError):
    """The body is not a WhatsApp webhook delivery (after a valid signature: nothing stored)."""


def items_of(body: bytes, phone_number_id: str) -> tuple[list[tuple[str, str, str | None, dict[str, Any]]], int]:
    """(dedup key, kind, business account id, payload) of every message and status for our business number, and how
    many items named another number (ignored: a delivery for another organization's number never lands here)."""
    try:
        delivery = json.loads(body)
    except (ValueError, RecursionError):
        raise BadDelivery("not JSON") from None
    if not isinstance(delivery, dict) or not isinstance(delivery.get("entry"), list):
        raise BadDelivery("no entry list")
    out: list[tuple[str, str, str | None, dict[str, Any]]] = []
    foreign = 0
    for entry in delivery["entry"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            continue
        account = clean_id(entry.get("id"), 40)
        for change in entry["changes"]:
            if not isinstance(change, dict) or change.get("field") != "messages" or not isinstance(change.get("value"), dict):
                continue
            value = change["value"]
            metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
            if str(metadata.get("phone_number_id")) != phone_number_id:
                foreign += len(value.get("messages") or []) + len(value.get("statuses") or [])
                continue
            display = clean(metadata.get("display_phone_number"), 40)
            names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or []
                     if isinstance(c, dict) and isinstance(c.get("profile") or {}, dict)}
            for message in value.get("messages") or []:
                wamid = clean_id(message.get("id")) if isinstance(message, dict) else None
                if wamid:
                    out.append((f"m:{wamid}", "message", account, scrub(
                        {"message": message, "name": names.get(message.get("from")), "display_number": display})))
            for status in value.get("statuses") or []:
                wamid = clean_id(status.get("id")) if isinstance(status, dict) else None
                if wamid and isinstance(status.get("status"), str):
                    out.append((f"s:{wamid}:{clean(status['status'], 20)}", "status", account,
                                scrub({"status": status})))
    return out, foreign


STORE = (
    "WITH serial AS (SELECT pg_advisory_xact_lock(%s)),"
    " ins AS (INSERT INTO whatsapp_inbox (organization_id, dedup_key, kind, phone_number_id, business_account_id, payload)"
    " SELECT %s, t.k, t.kind, %s, t.account, t.payload::jsonb FROM serial,"
    " unnest(%s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS t(k, kind, account, payload, n)"
    " ORDER BY t.n ON CONFLICT (organization_id, dedup_key) DO NOTHING RETURNING id)"
    " SELECT count(*) AS stored, pg_notify(%s, '') FROM ins"
)


def store_delivery(conn: Any, org_id: UUID, phone_number_id: str, body: bytes) -> dict[str, int]:
    """Store a verified delivery's items for the worker; returns how many were new, repeated and ignored."""
    items, foreign = items_of(body, phone_number_id)
    if not items:
        return {"stored": 0, "duplicates": 0, "ignored": foreign}
    keys, kinds, accounts, payloads = zip(*((k, kind, a, json.dumps(p)) for k, kind, a, p in items))
    row = conn.execute(STORE, (INBOX_LOCK, org_id, phone_number_id, list(keys), list(kinds), list(accounts),
                               list(payloads), CHANNEL)).fetchone()
    stored = row["stored"] if isinstance(row, dict) else row[0]
    return {"stored": stored, "duplicates": len(items) - stored, "ignored": foreign}


# -- applying deliveries ----------------------------------------------------------------------------------------------
def cause(org_id: UUID) -> dict[str, Any]:
    return {"organization_id": org_id, "user_id": None, "token_id": None, "oauth_client_id": None,
            "correlation_id": uuid4(), "tool": TOOL}


class _Batch:
    """One organization's rows of one pass: the aggregates they change, the outcome of each row.

    Chats are read in bulk: a chat whose read model is at its event store version is known from its row, and its
    aggregate is loaded only when a delivery changes it (a new profile name, archived, a client to link); messages
    only name their chat. Numbers are matched to clients in one query per pass."""

    def __init__(self, store: EventStore, conn: Any, org_id: UUID) -> None:
        self.store = store
        self.conn = conn
        self.org_id = org_id
        self.chats: dict[UUID, Chat] = {}
        self.known: dict[UUID, dict[str, Any]] = {}
        """Chats known from their read model row (contact_name, archived, client_link), not loaded."""
        self.matches: dict[str, set[UUID]] = {}
        self.messages: dict[UUID, WhatsappMessage] = {}
        self.outcomes: dict[int, str] = {}
        self._code: str | None = None

    def calling_code(self) -> str:
        if self._code is None:
            org = self.conn.execute("SELECT locale, address FROM organizations WHERE id = %s", (self.org_id,)).fetchone()
            address = (org or {}).get("address") or {}
            self._code = calling_code((org or {}).get("locale"), address.get("country") if isinstance(address, dict) else None)
        return self._code

    def _load(self, aggregate_id: UUID) -> Any | None:
        try:
            return self.store.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def prepare(self, parsed: list[tuple[str, dict[str, Any]]]) -> None:
        """Read the pass's chats (event store versions, read model rows) and match their numbers to clients."""
        numbers = {chat_id(self.org_id, pnid, p["from"]): p["from"] for pnid, p in parsed}
        if not numbers:
            return
        ids = list(numbers)
        versions = {r["originator_id"]: r["v"] for r in self.conn.execute(
            "SELECT originator_id, max(originator_version) AS v FROM stored_events WHERE originator_id = ANY(%s)"
            " GROUP BY originator_id", (ids,)).fetchall()}
        rows = self.conn.execute("SELECT id, version, contact_name, archived, client_link FROM whatsapp_chats"
                                 " WHERE organization_id = %s AND id = ANY(%s)", (self.org_id, ids)).fetchall()
        self.known = {r["id"]: r for r in rows if versions.get(r["id"]) == r["version"]}
        unlinked = [cid for cid in ids if cid not in self.known or self.known[cid]["client_link"] is None]
        keys = {phone_key(k): numbers[cid] for cid in unlinked for k in match_keys(numbers[cid], self.calling_code())}
        if keys:
            found = self.conn.execute(
                "SELECT k.key, c.id AS client_id FROM unnest(%s::text[]) AS k(key)"
                " JOIN clients c ON c.organization_id = %s AND c.phone_key = k.key"
                " UNION SELECT k.key, cc.client_id FROM unnest(%s::text[]) AS k(key) JOIN client_contacts cc"
                " ON cc.organization_id = %s AND cc.phone IS NOT NULL"
                " AND regexp_replace(regexp_replace(cc.phone, '^\\s*00', ''), '\\D', '', 'g') = k.key",
                (list(keys), self.org_id, list(keys), self.org_id)).fetchall()
            for r in found:
                self.matches.setdefault(keys[r["key"]], set()).add(r["client_id"])

    def matching_client(self, wa_id: str) -> UUID | None:
        """The one client whose phone, or whose contact's phone, is this number (international, or national in the
        organization's country); None when none or several match."""
        found = self.matches.get(wa_id, set())
        return next(iter(found)) if len(found) == 1 else None

    def chat(self, phone_number_id: str, wa_id: str, display: str | None, name: str | None) -> UUID:
        """The chat a message from `wa_id` belongs to, opened, renamed, brought back from the archive and linked to
        its client as needed."""
        cid = chat_id(self.org_id, phone_number_id, wa_id)
        row = self.known.get(cid)
        if cid not in self.chats and row is not None:
            match = self.matching_client(wa_id) if row["client_link"] is None else None
            if not ((name and name != row["contact_name"]) or row["archived"] or match):
                return cid  # nothing about the chat changes
        chat = self.chats.get(cid) or self._load(cid)
        if chat is None:
            chat = Chat.open(self.org_id, phone_number_id, wa_id, display_number=display, contact_name=name,
                             client_id=self.matching_client(wa_id))
        elif cid not in self.chats and chat.client_link is None:
            found = self.matching_client(wa_id)
            if found is not None:
                chat.link_client(found, automatic=True)
        chat.rename_contact(name)
        chat.unarchive()
        self.chats[cid] = chat
        self.known.pop(cid, None)
        return cid

    def message(self, row: dict[str, Any], parsed: dict[str, Any] | None, existing: set[UUID]) -> str:
        if parsed is None:
            return "ignored"
        mid = inbound_message_id(self.org_id, parsed["wamid"])
        if mid in existing or mid in self.messages:
            return "duplicate"
        payload = row["payload"]
        cid = self.chat(row["phone_number_id"], parsed["from"], payload.get("display_number"),
                        clean(payload.get("name"), 256))
        self.messages[mid] = WhatsappMessage.received(self.org_id, cid, parsed)
        return "applied"

    def status(self, row: dict[str, Any]) -> str:
        parsed = parse_status(row["payload"].get("status") or {}, row["received_at"])
        if parsed is None:
            return "ignored"
        target = self._ours(parsed)
        if target is None:
            return "unknown_message"
        message = self.messages.get(target) or self._load(target)
        if not isinstance(message, WhatsappMessage) or message.org_id != self.org_id or message.direction != "out":
            return "unknown_message"
        recorded = message.report(parsed["status"], parsed["at"], parsed["wamid"], parsed["error_code"],
                                  parsed["error_title"])
        self.messages[target] = message
        return "applied" if recorded else "duplicate"

    def _ours(self, parsed: dict[str, Any]) -> UUID | None:
        """The message we sent that a status is about: our id, passed as biz_opaque_callback_data, else WhatsApp's id."""
        candidates: list[UUID] = []
        try:
            candidates.append(UUID(parsed["callback"]))
        except (TypeError, ValueError):
            pass
        row = self.conn.execute(
            "SELECT message_id FROM whatsapp_outbox WHERE organization_id = %s AND (message_id = ANY(%s) OR wamid = %s)"
            " ORDER BY (message_id = ANY(%s)) DESC LIMIT 1",
            (self.org_id, candidates, parsed["wamid"], candidates)).fetchone()
        if row is not None:
            return row["message_id"]
        known = self.conn.execute("SELECT id FROM whatsapp_messages WHERE organization_id = %s AND wamid = %s"
                                  " AND direction = 'out'", (self.org_id, parsed["wamid"])).fetchone()
        return known["id"] if known else None

    def changed(self) -> list[Any]:
        chats = [c for c in self.chats.values() if c.pending_events]
        messages = [m for m in self.messages.values() if m.pending_events]
        return [*chats, *messages]


def apply_rows(store: EventStore, conn: Any, org_id: UUID, rows: list[dict[str, Any]]) -> dict[int, str]:
    """Apply one organization's inbox rows (in id order) in one append with their `processed` marks; a concurrent
    change of one of the chats or messages makes the whole batch start again from the event store."""
    parsed = {r["id"]: parse_message(r["payload"].get("message") or {}, r["received_at"])
              for r in rows if r["kind"] == "message" and isinstance(r["payload"].get("message"), dict)}
    wamids = [inbound_message_id(org_id, p["wamid"]) for p in parsed.values() if p]
    for _ in range(8):
        batch = _Batch(store, conn, org_id)
        batch.prepare([(r["phone_number_id"], parsed[r["id"]]) for r in rows if parsed.get(r["id"])])
        existing = {r["originator_id"] for r in conn.execute(
            "SELECT originator_id FROM stored_events WHERE originator_id = ANY(%s) AND originator_version = 1",
            (wamids,)).fetchall()} if wamids else set()
        for row in rows:
            batch.outcomes[row["id"]] = batch.message(row, parsed.get(row["id"]), existing) \
                if row["kind"] == "message" else batch.status(row)
        ids = list(batch.outcomes)
        side = [SideWrite("UPDATE whatsapp_inbox SET processed_at = now(), outcome = o.outcome FROM"
                          " unnest(%s::bigint[], %s::text[]) AS o(id, outcome) WHERE whatsapp_inbox.id = o.id",
                          (ids, [batch.outcomes[i] for i in ids]))]
        try:
            store.save(*batch.changed(), cause=cause(org_id), side_writes=side, organization_id=org_id)
        except IntegrityError:
            continue
        return batch.outcomes
    raise IntegrityError("whatsapp chats kept changing concurrently")


class WhatsappWorker(ListeningWorker):
    """Applies inbox rows in order and tidies abandoned sends. `run_pending()` drains now in the calling thread
    (waiting for another worker's pass to end); `start()` runs it in a thread woken by NOTIFY."""

    channel, thread_name, application_name = CHANNEL, "whatsapp-inbox", "flusia-whatsapp"

    def __init__(self, database_url: str, store: EventStore) -> None:
        super().__init__(database_url, store)
        self._lock = threading.Lock()
        self.abandoned_after = float(os.environ.get("FLUSIA_WHATSAPP_ABANDONED_SECONDS") or 120)
        """A send still `sending` this long after its record, its lock free, was abandoned by a dead process."""

    def run_pending(self, *, wait: bool = True) -> int:
        """Apply every row stored so far; returns how many this call applied. With `wait`, a pass of another
        worker (another process) is waited for, so the rows stored before this call are applied when it returns."""
        with self._lock:
            db = self._db()
            if wait:
                db.execute("SELECT pg_advisory_lock(%s)", (WORKER_LOCK,))
            elif not db.execute("SELECT pg_try_advisory_lock(%s) AS ok", (WORKER_LOCK,)).fetchone()["ok"]:
                return 0
            try:
                return self._drain(db)
            finally:
                try:
                    db.execute("SELECT pg_advisory_unlock(%s)", (WORKER_LOCK,))
                except psycopg.Error:
                    self.close()

    def _drain(self, db: psycopg.Connection) -> int:
        done = 0
        while True:
            rows = db.execute(
                "SELECT id, organization_id, kind, phone_number_id, business_account_id, payload, received_at"
                " FROM whatsapp_inbox WHERE processed_at IS NULL ORDER BY id LIMIT %s", (BATCH,)).fetchall()
            if not rows:
                return done
            by_org: dict[UUID, list[dict[str, Any]]] = {}
            for row in rows:
                by_org.setdefault(row["organization_id"], []).append(row)
            for org_id, org_rows in by_org.items():
                self._apply(db, org_id, org_rows)
            done += len(rows)

    def _apply(self, db: psycopg.Connection, org_id: UUID, rows: list[dict[str, Any]]) -> None:
        accounts = {r["business_account_id"] for r in rows if r["business_account_id"]}
        if len(accounts) == 1:
            cloud.remember_account(db, org_id, accounts.pop())
        try:
            apply_rows(self.store, db, org_id, rows)
        except Exception as e:  # one bad row must not stop the others: apply them one by one, set the bad one aside
            if db.broken:
                raise
            log.error("whatsapp inbox batch failed org=%s error=%s", org_id, describe(e))
            for row in rows:
                try:
                    apply_rows(self.store, db, org_id, [row])
                except Exception as one:  # noqa: BLE001
                    if db.broken:
                        raise
                    log.error("whatsapp inbox row set aside org=%s row=%s error=%s", org_id, row["id"], describe(one))
                    db.execute("UPDATE whatsapp_inbox SET processed_at = now(), outcome = 'failed' WHERE id = %s",
                               (row["id"],))

    # -- abandoned sends ----------------------------------------------------------------------------------------
    def sweep(self, *, older_than: float | None = None) -> int:
        """Mark `sending` records whose sender is gone (its lock free) and that are older than `older_than` seconds
        interrupted. Returns how many."""
        db = self._db()
        rows = db.execute(
            "SELECT message_id, organization_id FROM whatsapp_outbox WHERE state = 'sending'"
            " AND updated_at < now() - make_interval(secs => %s) ORDER BY updated_at LIMIT 200",
            (self.abandoned_after if older_than is None else older_than,)).fetchall()
        marked = 0
        for row in rows:
            if not db.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS ok",
                              (sending.SEND_LOCK, str(row["message_id"]))).fetchone()["ok"]:
                continue
            try:
                sending.interrupt(self.store, row["organization_id"], row["message_id"],
                                  {**cause(row["organization_id"]), "tool": "whatsapp_send_recovery"})
                marked += 1
            except Exception as e:  # noqa: BLE001
                log.error("marking an abandoned send failed error=%s", describe(e))
            finally:
                db.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (sending.SEND_LOCK, str(row["message_id"])))
        return marked

    # -- the thread -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        listener: psycopg.Connection | None = None
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if listener is None or listener.closed or listener.broken:
                    listener = psycopg.connect(self.database_url, autocommit=True)
                    listener.execute(f"LISTEN {CHANNEL}")
                self.run_pending(wait=False)
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + 10.0
                for _ in listener.notifies(timeout=2.0, stop_after=1):
                    pass
            except Exception as e:  # keep going after a database hiccup
                log.error("whatsapp worker error=%s", describe(e))
                self.close()
                if listener is not None:
                    listener.close()
                    listener = None
                self._stop.wait(2.0)
        if listener is not None:
            listener.close()


def now() -> datetime:
    return datetime.now(UTC)
