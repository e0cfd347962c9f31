"""WhatsApp read model (chats, messages, the access list) and its queries, every one of them filtered by what the
caller may see: admins see every chat, other users the chats assigned to them, granted to them, or on a business
number granted to them (`visible`)."""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.whatsapp import Chat, WhatsappAccess, WhatsappMessage, preview
from projections.base import Projection, handles, touch
from projections.pagination import Sort, paginate

CHAT_COLUMNS = (
    "c.id, c.phone_number_id, c.display_number, c.wa_id, c.contact_name, c.client_id, c.client_link, c.assignee_id,"
    " c.archived, c.archived_at, c.unread_count, c.messages_count, c.last_message_id, c.last_message_at,"
    " c.last_message_preview, c.last_message_direction, c.last_inbound_at, c.last_inbound_wamid, c.last_read_at,"
    " c.created_at, c.updated_at,"
    " (SELECT business_name FROM clients k WHERE k.id = c.client_id) AS client_name,"
    " (SELECT name FROM users u WHERE u.id = c.assignee_id) AS assignee_name"
)
MESSAGE_COLUMNS = (
    "m.id, m.chat_id, m.direction, m.kind, m.body, m.details, m.wamid, m.status, m.at, m.sent_by, m.accepted_at,"
    " m.sent_at, m.delivered_at, m.read_at, m.failed_at, m.interrupted, m.error, m.created_at,"
    " (SELECT name FROM users u WHERE u.id = m.sent_by) AS sent_by_name"
)
CHAT_SORTS = {
    "recent": Sort("coalesce(c.last_message_at, c.created_at)", "timestamptz", descending=True, row_id="c.id"),
    "created_desc": Sort("c.created_at", "timestamptz", descending=True, row_id="c.id"),
    "created_asc": Sort("c.created_at", "timestamptz", row_id="c.id"),
}
MESSAGE_SORT = Sort("m.seq", "bigint", descending=True, row_id="m.id")
MESSAGE_TSV = ("to_tsvector('italian', f_unaccent(lower(coalesce(%(body)s, '')))) || to_tsvector('english',"
               " f_unaccent(lower(coalesce(%(body)s, '')))) || to_tsvector('simple', f_unaccent(lower(coalesce(%(body)s, ''))))")
CHAT_TSV = ("to_tsvector('simple', f_unaccent(lower(concat_ws(' ', contact_name, wa_id, '+' || wa_id,"
            " display_number))))")
STATUS_CASE = (
    "CASE WHEN direction = 'in' THEN 'received' WHEN read_at IS NOT NULL THEN 'read'"
    " WHEN delivered_at IS NOT NULL THEN 'delivered' WHEN failed_at IS NOT NULL THEN 'failed'"
    " WHEN sent_at IS NOT NULL THEN 'sent' WHEN accepted_at IS NOT NULL THEN 'accepted'"
    " WHEN interrupted THEN 'interrupted' ELSE 'sending' END"
)
"""The furthest status a message reached (domain.whatsapp.display_status, in SQL)."""


def _chat(cur: Any, e: Any, sets: str, params: tuple[Any, ...] = ()) -> None:
    """A chat event applied: its row changed, and is now at the event's version."""
    touch(cur, "whatsapp_chats", e, f"{sets}, version = %s", (*params, e.originator_version))


class WhatsappProjection(Projection):
    name = "whatsapp"
    tables = ("whatsapp_chats", "whatsapp_messages", "whatsapp_acl")
    resources = ("whatsapp",)

    # -- chats ------------------------------------------------------------------------------------------------
    @handles(Chat.Opened)
    def opened(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO whatsapp_chats (id, organization_id, phone_number_id, display_number, wa_id, contact_name,"
            " client_id, client_link, version, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)",
            (e.originator_id, e.org_id, e.phone_number_id, e.display_number, e.wa_id, e.contact_name, e.client_id,
             "automatic" if e.client_id else None, e.originator_version, e.timestamp, e.timestamp))
        self._refresh_chat_search(cur, e.originator_id)

    def _refresh_chat_search(self, cur: Any, chat: UUID) -> None:
        cur.execute(f"UPDATE whatsapp_chats SET search_tsv = {CHAT_TSV} WHERE id = %s", (chat,))  # noqa: S608

    @handles(Chat.ContactRenamed)
    def renamed(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "contact_name = %s", (e.name,))
        self._refresh_chat_search(cur, e.originator_id)

    @handles(Chat.ClientLinked)
    def linked(self, cur: Any, e: Any) -> None:
        link = "automatic" if e.automatic else "manual"
        _chat(cur, e, "client_id = %s, client_link = %s", (e.client_id, link))

    @handles(Chat.Assigned)
    def assigned(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "assignee_id = %s", (e.user_id,))

    @handles(Chat.Unassigned)
    def unassigned(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "assignee_id = NULL")

    @handles(Chat.Archived)
    def archived(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "archived = true, archived_at = %s", (e.timestamp,))

    @handles(Chat.Unarchived)
    def unarchived(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "archived = false, archived_at = NULL")

    @handles(Chat.Read)
    def read(self, cur: Any, e: Any) -> None:
        _chat(cur, e, "unread_count = 0, last_read_at = %s", (e.timestamp,))

    # -- messages ---------------------------------------------------------------------------------------------
    @handles(WhatsappMessage.Recorded)
    def recorded(self, cur: Any, e: Any) -> None:
        inbound = e.direction == "in"
        values = {"id": e.originator_id, "org": e.org_id, "chat": e.chat_id, "seq": self.notification_id or 0,
                  "direction": e.direction, "kind": e.kind, "body": e.text, "details": json.dumps(e.details),
                  "wamid": e.wamid, "status": "received" if inbound else "sending", "at": e.at, "by": e.sent_by,
                  "ts": e.timestamp}
        cur.execute(
            "INSERT INTO whatsapp_messages (id, organization_id, chat_id, seq, direction, kind, body, details, wamid,"
            " status, at, sent_by, created_at, updated_at, search_tsv) VALUES (%(id)s, %(org)s, %(chat)s, %(seq)s,"
            " %(direction)s, %(kind)s, %(body)s, %(details)s::jsonb, %(wamid)s, %(status)s, %(at)s, %(by)s, %(ts)s,"
            f" %(ts)s, {MESSAGE_TSV}) ON CONFLICT (id) DO NOTHING", values)
        counts_unread = inbound and e.kind != "reaction"
        cur.execute(
            "UPDATE whatsapp_chats SET messages_count = messages_count + 1, unread_count = unread_count + %s,"
            " last_message_id = %s, last_message_at = %s, last_message_preview = %s, last_message_direction = %s,"
            " last_inbound_at = CASE WHEN %s THEN greatest(last_inbound_at, %s) ELSE last_inbound_at END,"
            " last_inbound_wamid = CASE WHEN %s THEN %s ELSE last_inbound_wamid END, updated_at = %s WHERE id = %s",
            (1 if counts_unread else 0, e.originator_id, e.at, preview(e.kind, e.text), e.direction, inbound, e.at,
             inbound, e.wamid, e.timestamp, e.chat_id))

    def _status(self, cur: Any, e: Any, sets: str, params: tuple[Any, ...] = ()) -> None:
        cur.execute(f"UPDATE whatsapp_messages SET {sets}, updated_at = %s WHERE id = %s",  # noqa: S608
                    (*params, e.timestamp, e.originator_id))
        cur.execute(f"UPDATE whatsapp_messages SET status = {STATUS_CASE} WHERE id = %s",  # noqa: S608
                    (e.originator_id,))

    @handles(WhatsappMessage.Accepted)
    def accepted(self, cur: Any, e: Any) -> None:
        self._status(cur, e, "accepted_at = %s, wamid = coalesce(wamid, %s), failed_at = NULL, error = NULL,"
                             " interrupted = false", (e.timestamp, e.wamid))

    @handles(WhatsappMessage.SendFailed)
    def send_failed(self, cur: Any, e: Any) -> None:
        error = {"code": e.code, "title": e.title, "retryable": e.retryable}
        self._status(cur, e, "failed_at = %s, error = %s::jsonb", (e.timestamp, json.dumps(error)))

    @handles(WhatsappMessage.Retried)
    def retried(self, cur: Any, e: Any) -> None:
        self._status(cur, e, "failed_at = NULL, error = NULL")

    @handles(WhatsappMessage.Interrupted)
    def interrupted(self, cur: Any, e: Any) -> None:
        self._status(cur, e, "interrupted = true")

    @handles(WhatsappMessage.StatusReported)
    def status_reported(self, cur: Any, e: Any) -> None:
        column = {"sent": "sent_at", "delivered": "delivered_at", "read": "read_at", "failed": "failed_at"}[e.status]
        sets, params = f"{column} = %s, wamid = coalesce(wamid, %s)", [e.at, e.wamid]
        if e.status == "failed":
            sets += ", error = %s::jsonb"
            params.append(json.dumps({"code": e.error_code, "title": e.error_title, "retryable": False}))
        self._status(cur, e, sets, tuple(params))

    # -- access -----------------------------------------------------------------------------------------------
    @handles(WhatsappAccess.Granted)
    def granted(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO whatsapp_acl (organization_id, user_id, chat_id, phone_number_id, granted_by, granted_at)"
            " SELECT %s, %s, %s, %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM whatsapp_acl WHERE organization_id = %s"
            " AND user_id = %s AND chat_id IS NOT DISTINCT FROM %s AND phone_number_id IS NOT DISTINCT FROM %s)",
            (e.org_id, e.user_id, e.chat_id, e.phone_number_id, e.by, e.timestamp, e.org_id, e.user_id, e.chat_id,
             e.phone_number_id))

    @handles(WhatsappAccess.Revoked)
    def revoked(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM whatsapp_acl WHERE organization_id = %s AND user_id = %s"
                    " AND chat_id IS NOT DISTINCT FROM %s AND phone_number_id IS NOT DISTINCT FROM %s",
                    (e.org_id, e.user_id, e.chat_id, e.phone_number_id))


# -- who may see what ---------------------------------------------------------------------------------------------
def is_admin(conn: Any, org_id: UUID, user_id: UUID | None) -> bool:
    """Admins (the built-in admin role) see every chat."""
    if user_id is None:
        return False
    row = conn.execute("SELECT r.built_in AND r.name = 'admin' AS admin FROM users u JOIN roles r ON r.id = u.role_id"
                       " WHERE u.id = %s AND u.organization_id = %s", (user_id, org_id)).fetchone()
    return bool(row and row["admin"])


def visible(admin: bool, user_id: UUID | None) -> tuple[str, list[Any]]:
    """The SQL condition (on chats aliased `c`) for the chats a user may see, and its parameters."""
    if admin:
        return "true", []
    return ("(c.assignee_id = %s OR EXISTS (SELECT 1 FROM whatsapp_acl a WHERE a.organization_id = c.organization_id"
            " AND a.user_id = %s AND (a.chat_id = c.id OR a.phone_number_id = c.phone_number_id)))", [user_id, user_id])


def can_see_number(conn: Any, org_id: UUID, admin: bool, user_id: UUID | None, phone_number_id: str) -> bool:
    if admin:
        return True
    return conn.execute("SELECT 1 FROM whatsapp_acl WHERE organization_id = %s AND user_id = %s AND phone_number_id = %s",
                        (org_id, user_id, phone_number_id)).fetchone() is not None


# -- queries ----------------------------------------------------------------------------------------------------
def get_chat(conn: Any, org_id: UUID, chat: UUID, *, admin: bool, user_id: UUID | None) -> dict[str, Any]:
    """The chat, when the user may see it; otherwise (and when it does not exist) not found, the same answer."""
    condition, params = visible(admin, user_id)
    row = conn.execute(f"SELECT {CHAT_COLUMNS} FROM whatsapp_chats c WHERE c.organization_id = %s AND c.id = %s"
                       f" AND {condition}", (org_id, chat, *params)).fetchone()
    if row is None:
        raise NotFound("chat", chat, field="chat_id")
    return row


def chat_exists(conn: Any, org_id: UUID, chat: UUID) -> bool:
    return conn.execute("SELECT 1 FROM whatsapp_chats WHERE organization_id = %s AND id = %s",
                        (org_id, chat)).fetchone() is not None


def list_chats(conn: Any, org_id: UUID, *, admin: bool, user_id: UUID | None, assignee_id: UUID | None = None,
               unassigned: bool = False, client_id: UUID | None = None, unread_only: bool = False,
               archived: bool = False, phone_number_id: str | None = None, sort: str = "recent", limit: int = 25,
               cursor: str | None = None):
    condition, params = visible(admin, user_id)
    where = ["c.organization_id = %s", condition, "c.archived = %s"]
    args: list[Any] = [org_id, *params, archived]
    for column, value in (("c.assignee_id", assignee_id), ("c.client_id", client_id),
                          ("c.phone_number_id", phone_number_id)):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    if unassigned:
        where.append("c.assignee_id IS NULL")
    if unread_only:
        where.append("c.unread_count > 0")
    return paginate(conn, CHAT_COLUMNS, "FROM whatsapp_chats c WHERE " + " AND ".join(where), args, CHAT_SORTS[sort],
                    limit, cursor)


def list_messages(conn: Any, org_id: UUID, chat: UUID, *, limit: int, cursor: str | None):
    return paginate(conn, MESSAGE_COLUMNS, "FROM whatsapp_messages m WHERE m.organization_id = %s AND m.chat_id = %s",
                    [org_id, chat], MESSAGE_SORT, limit, cursor)


def get_message(conn: Any, org_id: UUID, message: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM whatsapp_messages m WHERE m.organization_id = %s AND m.id = %s",
                       (org_id, message)).fetchone()
    if row is None:
        raise NotFound("message", message, field="message_id")
    return row


def message_by_wamid(conn: Any, org_id: UUID, wamid: str) -> dict[str, Any] | None:
    return conn.execute("SELECT id, chat_id FROM whatsapp_messages WHERE organization_id = %s AND wamid = %s",
                        (org_id, wamid)).fetchone()


def words(text: str) -> list[str]:
    """Search words: letters and digits only (the rest separates words), at most 12."""
    return [w for w in re.sub(r"[^\w]+", " ", text.replace("_", " ")).split() if w][:12]


def _tsquery(terms: list[str]) -> tuple[str, list[Any]]:
    """Every word must match, as an Italian or English stem or as a word beginning."""
    parts, params = [], []
    for w in terms:
        parts.append("(to_tsquery('italian', f_unaccent(lower(%s))) || to_tsquery('english', f_unaccent(lower(%s)))"
                     " || to_tsquery('simple', f_unaccent(lower(%s)) || ':*'))")
        params += [w, w, w]
    return " && ".join(parts), params


def search(conn: Any, org_id: UUID, text: str, *, admin: bool, user_id: UUID | None, chat: UUID | None = None,
           limit: int = 20, hits_per_chat: int = 3) -> list[dict[str, Any]]:
    """Chats matching by contact name or number, or with messages matching the words (Italian and English stems,
    word beginnings, accents ignored), best first; for each, its best matching messages."""
    terms = words(text)
    if not terms:
        return []
    query, qparams = _tsquery(terms)
    condition, vparams = visible(admin, user_id)
    digits = "".join(ch for ch in text if ch.isdigit())
    sql = f"""
WITH q AS (SELECT {query} AS q),
chats AS (
    SELECT c.id FROM whatsapp_chats c WHERE c.organization_id = %s AND {condition} AND (%s::uuid IS NULL OR c.id = %s)
),
hits AS (
    SELECT m.chat_id, m.id, m.at, m.direction, m.kind, m.body, ts_rank(m.search_tsv, q.q) AS rank,
           row_number() OVER (PARTITION BY m.chat_id ORDER BY ts_rank(m.search_tsv, q.q) DESC, m.seq DESC) AS n,
           count(*) OVER (PARTITION BY m.chat_id) AS matched
    FROM whatsapp_messages m, q WHERE m.organization_id = %s AND m.search_tsv @@ q.q AND m.chat_id IN (SELECT id FROM chats)
),
named AS (
    SELECT c.id FROM whatsapp_chats c, q WHERE c.id IN (SELECT id FROM chats)
      AND (c.search_tsv @@ q.q OR (length(%s) >= 4 AND c.wa_id LIKE '%%' || %s || '%%'))
),
ranked AS (
    SELECT id AS chat_id, max(score) AS score FROM (
        SELECT id, 1.0::float AS score FROM named
        UNION ALL SELECT chat_id, rank::float FROM hits
    ) s GROUP BY id ORDER BY max(score) DESC LIMIT %s
)
SELECT r.chat_id, round(r.score::numeric, 4)::float AS score, (r.chat_id IN (SELECT id FROM named)) AS by_contact,
       coalesce((SELECT max(matched) FROM hits h WHERE h.chat_id = r.chat_id), 0)::int AS matched_messages,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', h.id, 'at', h.at, 'direction', h.direction, 'kind', h.kind,
                 'text', left(h.body, 300)) ORDER BY h.n) FROM hits h WHERE h.chat_id = r.chat_id AND h.n <= %s),
                '[]'::jsonb) AS messages
FROM ranked r ORDER BY r.score DESC, r.chat_id
"""  # noqa: S608 - fragments are constants
    rows = conn.execute(sql, (*qparams, org_id, *vparams, chat, chat, org_id, digits, digits, limit,
                              hits_per_chat)).fetchall()
    if not rows:
        return []
    chats = {r["id"]: r for r in conn.execute(
        f"SELECT {CHAT_COLUMNS} FROM whatsapp_chats c WHERE c.id = ANY(%s)", ([r["chat_id"] for r in rows],)).fetchall()}
    return [{**chats[r["chat_id"]], "score": r["score"], "by_contact": r["by_contact"],
             "matched_messages": r["matched_messages"], "messages": r["messages"]} for r in rows if r["chat_id"] in chats]


def acl_of_chat(conn: Any, org_id: UUID, chat: dict[str, Any]) -> list[dict[str, Any]]:
    """Who may see a chat besides admins: its assignee, users granted the chat, users granted its business number."""
    return conn.execute(
        "SELECT a.user_id, u.name AS user_name, CASE WHEN a.chat_id IS NOT NULL THEN 'chat' ELSE 'business_number' END"
        " AS via, a.granted_by, (SELECT name FROM users g WHERE g.id = a.granted_by) AS granted_by_name, a.granted_at"
        " FROM whatsapp_acl a LEFT JOIN users u ON u.id = a.user_id"
        " WHERE a.organization_id = %s AND (a.chat_id = %s OR a.phone_number_id = %s)"
        " UNION ALL SELECT c.assignee_id, u.name, 'assignee', NULL, NULL, NULL FROM whatsapp_chats c"
        " LEFT JOIN users u ON u.id = c.assignee_id WHERE c.id = %s AND c.assignee_id IS NOT NULL"
        " ORDER BY 2, 3", (org_id, chat["id"], chat["phone_number_id"], chat["id"])).fetchall()


def acl_of_number(conn: Any, org_id: UUID, phone_number_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT a.user_id, u.name AS user_name, 'business_number' AS via, a.granted_by,"
        " (SELECT name FROM users g WHERE g.id = a.granted_by) AS granted_by_name, a.granted_at"
        " FROM whatsapp_acl a LEFT JOIN users u ON u.id = a.user_id WHERE a.organization_id = %s"
        " AND a.phone_number_id = %s ORDER BY u.name, a.user_id", (org_id, phone_number_id)).fetchall()


def admins(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT u.id AS user_id, u.name AS user_name FROM users u JOIN roles r ON r.id = u.role_id"
        " WHERE u.organization_id = %s AND r.built_in AND r.name = 'admin' AND u.status = 'active'"
        " ORDER BY u.name, u.id", (org_id,)).fetchall()


def number_known(conn: Any, org_id: UUID, phone_number_id: str) -> bool:
    return conn.execute("SELECT 1 FROM whatsapp_chats WHERE organization_id = %s AND phone_number_id = %s LIMIT 1",
                        (org_id, phone_number_id)).fetchone() is not None
