"""Newsletter read model (lists, subscribers, campaigns with their open/click/unsubscribe counters, the blacklist,
sender domains) and its queries. Deliveries are not here: they are the sender's own record of what it sent
(application/newsletter_sending.py), not something rebuilt from events."""

from __future__ import annotations

import json
from datetime import date
from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.newsletter import (BlacklistEntry, Campaign, Engagement, MailingList, SenderDomain, campaign_links)
from projections.base import Projection, exists, handles, set_columns, touch
from projections.pagination import BY_CREATION, NEWEST, OLDEST, paginate

LIST_COLUMNS = ("id, name, description, subscribed_count, unsubscribed_count, bounced_count, complained_count,"
                " created_by, created_at, updated_at")
SUBSCRIBER_COLUMNS = ("id, list_id, email, first_name, last_name, client_id, contact_id, status, consent_source,"
                      " consent_at, status_changed_at, created_at, updated_at")
CAMPAIGN_COLUMNS = ("id, name, subject, from_name, from_email, reply_to, list_ids, status, scheduled_at, started_at,"
                    " sent_at, cancelled_at, recipients_count, tests_sent, opens, unique_opens, clicks, unique_clicks,"
                    " unsubscribes, created_by, created_at, updated_at")
BLACKLIST_COLUMNS = "id, value, kind, reason, created_by, created_at"
DOMAIN_COLUMNS = ("id, domain, selector, public_key, spf_ok, dkim_ok, dmarc_ok, verified, problems, checked_at,"
                  " verified_at, created_by, created_at, updated_at")
STATUS_COUNTS = ", ".join(
    f"{status}_count = {status}_count - (SELECT count(*) FROM old WHERE status = '{status}')"
    f" + CASE WHEN %(new)s::text = '{status}' THEN 1 ELSE 0 END"
    for status in ("subscribed", "unsubscribed", "bounced", "complained"))
"""Counters of a list after one subscriber changed from the status in the CTE `old` to %(new)s (NULL: removed)."""
ENGAGEMENT_COLUMNS = {"open": ("opens", "unique_opens"), "click": ("clicks", "unique_clicks")}


def _uuids(values: Any) -> list[UUID]:
    return [UUID(str(v)) for v in values or []]


class NewsletterProjection(Projection):
    name = "newsletter"
    tables = ("newsletter_lists", "newsletter_subscribers", "newsletter_campaigns", "newsletter_engagements",
              "newsletter_blacklist", "newsletter_domains")
    resources = ("newsletter",)

    # -- lists and subscribers -----------------------------------------------------------------------------------
    @handles(MailingList.Created)
    def list_created(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO newsletter_lists (id, organization_id, name, description, created_by, created_at,"
                    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (e.originator_id, e.org_id, e.name, e.description, e.created_by, e.timestamp, e.timestamp))

    @handles(MailingList.Updated)
    def list_updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "newsletter_lists", e, dict(e.changes))

    @handles(MailingList.SubscribersAdded)
    def subscribers_added(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO newsletter_subscribers (id, organization_id, list_id, email, first_name, last_name, client_id,"
            " contact_id, status, consent_source, consent_at, created_at, updated_at)"
            " SELECT s.id, l.organization_id, l.id, s.email, s.first_name, s.last_name, s.client_id, s.contact_id,"
            " 'subscribed', s.consent_source, s.consent_at, %s, %s"
            " FROM newsletter_lists l, jsonb_to_recordset(%s::jsonb) AS s(id uuid, email text, first_name text,"
            " last_name text, client_id uuid, contact_id uuid, consent_source text, consent_at timestamptz)"
            " WHERE l.id = %s",
            (e.timestamp, e.timestamp, json.dumps(e.subscribers), e.originator_id))
        touch(cur, "newsletter_lists", e, "subscribed_count = subscribed_count + %s", (len(e.subscribers),))

    @handles(MailingList.SubscriberRemoved)
    def subscriber_removed(self, cur: Any, e: Any) -> None:
        cur.execute(
            "WITH old AS (DELETE FROM newsletter_subscribers WHERE list_id = %(list)s AND email = %(email)s"
            f" RETURNING status) UPDATE newsletter_lists SET {STATUS_COUNTS}, updated_at = %(at)s WHERE id = %(list)s",
            {"list": e.originator_id, "email": e.email, "new": None, "at": e.timestamp})

    @handles(MailingList.SubscriberStatusChanged)
    def subscriber_status(self, cur: Any, e: Any) -> None:
        cur.execute(
            "WITH old AS (SELECT status FROM newsletter_subscribers WHERE list_id = %(list)s AND email = %(email)s),"
            " changed AS (UPDATE newsletter_subscribers SET status = %(new)s, status_changed_at = %(at)s,"
            " updated_at = %(at)s WHERE list_id = %(list)s AND email = %(email)s)"
            f" UPDATE newsletter_lists SET {STATUS_COUNTS}, updated_at = %(at)s WHERE id = %(list)s",
            {"list": e.originator_id, "email": e.email, "new": e.status, "at": e.timestamp})
        if e.status == "unsubscribed" and e.campaign_id is not None:
            cur.execute("UPDATE newsletter_campaigns SET unsubscribes = unsubscribes + 1 WHERE id = %s", (e.campaign_id,))

    @handles(MailingList.Deleted)
    def list_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM newsletter_subscribers WHERE list_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM newsletter_lists WHERE id = %s", (e.originator_id,))

    # -- campaigns -----------------------------------------------------------------------------------------------
    @handles(Campaign.Created)
    def campaign_created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "INSERT INTO newsletter_campaigns (id, organization_id, name, subject, from_name, from_email, reply_to,"
            " html_body, text_body, list_ids, links, status, created_by, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'draft', %s, %s, %s)",
            (e.originator_id, e.org_id, f.get("name"), f.get("subject"), f.get("from_name"), f.get("from_email"),
             f.get("reply_to"), f.get("html_body"), f.get("text_body"), _uuids(f.get("list_ids")),
             campaign_links(f.get("html_body"), f.get("text_body")), e.created_by, e.timestamp, e.timestamp))

    @handles(Campaign.Updated)
    def campaign_updated(self, cur: Any, e: Any) -> None:
        changes = dict(e.changes)
        if "list_ids" in changes:
            changes["list_ids"] = _uuids(changes["list_ids"])
        set_columns(cur, "newsletter_campaigns", e, changes)
        if "html_body" in changes or "text_body" in changes:
            row = cur.execute("SELECT html_body, text_body FROM newsletter_campaigns WHERE id = %s",
                              (e.originator_id,)).fetchone()
            if row is not None:
                html, text = (row["html_body"], row["text_body"]) if isinstance(row, dict) else row
                cur.execute("UPDATE newsletter_campaigns SET links = %s WHERE id = %s",
                            (campaign_links(html, text), e.originator_id))

    @handles(Campaign.TestSent)
    def tested(self, cur: Any, e: Any) -> None:
        touch(cur, "newsletter_campaigns", e, "tests_sent = tests_sent + %s", (len(e.addresses),))

    @handles(Campaign.Scheduled)
    def scheduled(self, cur: Any, e: Any) -> None:
        touch(cur, "newsletter_campaigns", e, "status = 'scheduled', scheduled_at = %s", (e.at,))

    @handles(Campaign.SendingStarted)
    def started(self, cur: Any, e: Any) -> None:
        touch(cur, "newsletter_campaigns", e, "status = 'sending', started_at = %s, recipients_count = %s",
              (e.timestamp, e.recipients))

    @handles(Campaign.Finished)
    def finished(self, cur: Any, e: Any) -> None:
        touch(cur, "newsletter_campaigns", e, "status = 'sent', sent_at = %s", (e.timestamp,))

    @handles(Campaign.Cancelled)
    def cancelled(self, cur: Any, e: Any) -> None:
        touch(cur, "newsletter_campaigns", e, "status = 'cancelled', cancelled_at = %s", (e.timestamp,))

    @handles(Campaign.Deleted)
    def campaign_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM newsletter_engagements WHERE campaign_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM newsletter_campaigns WHERE id = %s", (e.originator_id,))

    @handles(Engagement.Recorded)
    def engaged(self, cur: Any, e: Any) -> None:
        total, unique = ENGAGEMENT_COLUMNS[e.kind]
        cur.execute(
            "WITH hit AS (INSERT INTO newsletter_engagements (organization_id, campaign_id, delivery_id, kind, first_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (campaign_id, delivery_id, kind)"
            " DO UPDATE SET hits = newsletter_engagements.hits + 1 RETURNING (xmax = 0) AS fresh)"
            f" UPDATE newsletter_campaigns SET {total} = {total} + 1,"
            f" {unique} = {unique} + (SELECT CASE WHEN fresh THEN 1 ELSE 0 END FROM hit) WHERE id = %s",
            (e.org_id, e.campaign_id, e.delivery_id, e.kind, e.timestamp, e.campaign_id))

    # -- blacklist -----------------------------------------------------------------------------------------------
    @handles(BlacklistEntry.Created)
    def blacklisted(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO newsletter_blacklist (id, organization_id, value, kind, reason, created_by,"
                    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (e.originator_id, e.org_id, e.value, e.kind, e.reason, e.created_by, e.timestamp, e.timestamp))

    @handles(BlacklistEntry.Deleted)
    def unblacklisted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM newsletter_blacklist WHERE id = %s", (e.originator_id,))

    # -- sender domains ------------------------------------------------------------------------------------------
    @handles(SenderDomain.Created)
    def domain_added(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO newsletter_domains (id, organization_id, domain, selector, public_key, created_by,"
                    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (e.originator_id, e.org_id, e.domain, e.selector, e.public_key, e.created_by, e.timestamp,
                     e.timestamp))

    @handles(SenderDomain.Checked)
    def domain_checked(self, cur: Any, e: Any) -> None:
        verified = e.spf_ok and e.dkim_ok and e.dmarc_ok
        touch(cur, "newsletter_domains", e,
              "spf_ok = %s, dkim_ok = %s, dmarc_ok = %s, verified = %s, problems = %s::jsonb, checked_at = %s,"
              " verified_at = CASE WHEN %s THEN coalesce(verified_at, %s) END",
              (e.spf_ok, e.dkim_ok, e.dmarc_ok, verified, json.dumps(e.problems), e.timestamp, verified, e.timestamp))

    @handles(SenderDomain.Deleted)
    def domain_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM newsletter_domains WHERE id = %s", (e.originator_id,))


# -- queries ------------------------------------------------------------------------------------------------------
def _one(conn: Any, sql: str, params: tuple[Any, ...], entity: str, entity_id: Any, field: str) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise NotFound(entity, entity_id, field=field)
    return row


def list_lists(conn: Any, org_id: UUID, *, limit: int, cursor: str | None):
    return paginate(conn, LIST_COLUMNS, "FROM newsletter_lists WHERE organization_id = %s", [org_id], NEWEST, limit,
                    cursor)


def get_list(conn: Any, org_id: UUID, list_id: UUID) -> dict[str, Any]:
    return _one(conn, f"SELECT {LIST_COLUMNS} FROM newsletter_lists WHERE organization_id = %s AND id = %s",
                (org_id, list_id), "mailing list", list_id, "list_id")


def list_exists(conn: Any, org_id: UUID, list_id: UUID) -> bool:
    return exists(conn, "newsletter_lists", org_id, list_id)


def list_subscribers(conn: Any, org_id: UUID, list_id: UUID, *, status: str | None, limit: int, cursor: str | None):
    where, params = "FROM newsletter_subscribers WHERE organization_id = %s AND list_id = %s", [org_id, list_id]
    if status is not None:
        where += " AND status = %s"
        params.append(status)
    return paginate(conn, SUBSCRIBER_COLUMNS, where, params, OLDEST, limit, cursor)


def get_subscriber(conn: Any, org_id: UUID, list_id: UUID, email: str) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {SUBSCRIBER_COLUMNS} FROM newsletter_subscribers WHERE organization_id = %s"
                        " AND list_id = %s AND email = %s", (org_id, list_id, email)).fetchone()


def subscriber_lists(conn: Any, org_id: UUID, email: str, list_ids: list[UUID]) -> list[UUID]:
    """The lists among `list_ids` where `email` is subscribed (bounces and unsubscribes go to each of them)."""
    rows = conn.execute("SELECT list_id FROM newsletter_subscribers WHERE organization_id = %s AND email = %s"
                        " AND list_id = ANY(%s) AND status = 'subscribed'", (org_id, email, list_ids)).fetchall()
    return [r["list_id"] if isinstance(r, dict) else r[0] for r in rows]


def audience(conn: Any, org_id: UUID, list_ids: list[UUID]) -> list[dict[str, Any]]:
    """Every address subscribed to one of the lists, once (the first list that has it), with what the
    placeholders need; an address that left any of the lists (unsubscribed, bounced, complained) is left out.
    The addresses that left are a hashed set, so the plan stays linear whatever the statistics say."""
    return conn.execute(
        "WITH targeted AS MATERIALIZED (SELECT email, list_id, first_name, last_name, client_id, status"
        "   FROM newsletter_subscribers WHERE organization_id = %s AND list_id = ANY(%s)),"
        " gone AS MATERIALIZED (SELECT DISTINCT email FROM targeted WHERE status <> 'subscribed')"
        " SELECT DISTINCT ON (t.email) t.email, t.list_id, t.first_name, t.last_name, c.business_name AS client_name"
        " FROM targeted t LEFT JOIN clients c ON c.id = t.client_id AND c.organization_id = %s"
        " WHERE t.status = 'subscribed' AND t.email NOT IN (SELECT email FROM gone)"
        " ORDER BY t.email, array_position(%s::uuid[], t.list_id)",
        (org_id, list_ids, org_id, list_ids)).fetchall()


def list_campaigns(conn: Any, org_id: UUID, *, status: str | None, limit: int, cursor: str | None,
                   sort: str = "created_desc"):
    where, params = "FROM newsletter_campaigns WHERE organization_id = %s", [org_id]
    if status is not None:
        where += " AND status = %s"
        params.append(status)
    return paginate(conn, CAMPAIGN_COLUMNS, where, params, BY_CREATION[sort], limit, cursor)


def get_campaign(conn: Any, org_id: UUID, campaign_id: UUID) -> dict[str, Any]:
    return _one(conn, f"SELECT {CAMPAIGN_COLUMNS}, html_body, text_body, links FROM newsletter_campaigns"
                " WHERE organization_id = %s AND id = %s", (org_id, campaign_id), "campaign", campaign_id, "campaign_id")


def campaign_exists(conn: Any, org_id: UUID, campaign_id: UUID) -> bool:
    return exists(conn, "newsletter_campaigns", org_id, campaign_id)


def campaign_links_of(conn: Any, campaign_id: UUID) -> tuple[UUID, list[str]] | None:
    """(organization, links) of a campaign, for the click redirect (a signed id already proved the recipient)."""
    row = conn.execute("SELECT organization_id, links FROM newsletter_campaigns WHERE id = %s", (campaign_id,)).fetchone()
    if row is None:
        return None
    return (row["organization_id"], list(row["links"])) if isinstance(row, dict) else (row[0], list(row[1]))


def due_campaigns(conn: Any, limit: int = 20) -> list[dict[str, Any]]:
    """Scheduled campaigns whose time has come, every organization (the sender starts them)."""
    return conn.execute("SELECT id, organization_id FROM newsletter_campaigns WHERE status = 'scheduled'"
                        " AND scheduled_at <= now() ORDER BY scheduled_at LIMIT %s", (limit,)).fetchall()


def sending_campaigns(conn: Any) -> list[dict[str, Any]]:
    return conn.execute("SELECT id, organization_id FROM newsletter_campaigns WHERE status = 'sending'").fetchall()


def campaign_performance(conn: Any, org_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
    """Campaigns that started sending in the period, newest first, with their engagement counters."""
    return conn.execute(
        "SELECT id, name, recipients_count, opens, unique_opens, clicks, unique_clicks, unsubscribes, started_at"
        " FROM newsletter_campaigns WHERE organization_id = %s AND started_at IS NOT NULL"
        " AND started_at::date BETWEEN %s AND %s ORDER BY started_at DESC, id LIMIT 500",
        (org_id, start, end)).fetchall()


def has_campaigns(conn: Any, org_id: UUID) -> bool:
    return conn.execute("SELECT 1 FROM newsletter_campaigns WHERE organization_id = %s AND started_at IS NOT NULL"
                        " LIMIT 1", (org_id,)).fetchone() is not None


def list_blacklist(conn: Any, org_id: UUID, *, kind: str | None, limit: int, cursor: str | None):
    where, params = "FROM newsletter_blacklist WHERE organization_id = %s", [org_id]
    if kind is not None:
        where += " AND kind = %s"
        params.append(kind)
    return paginate(conn, BLACKLIST_COLUMNS, where, params, NEWEST, limit, cursor)


def blacklist_values(conn: Any, org_id: UUID) -> set[str]:
    rows = conn.execute("SELECT value FROM newsletter_blacklist WHERE organization_id = %s", (org_id,)).fetchall()
    return {r["value"] if isinstance(r, dict) else r[0] for r in rows}


def blacklist_entry(conn: Any, org_id: UUID, value: str) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {BLACKLIST_COLUMNS} FROM newsletter_blacklist WHERE organization_id = %s"
                        " AND value = %s", (org_id, value)).fetchone()


def get_blacklist_entry(conn: Any, org_id: UUID, entry_id: UUID) -> dict[str, Any]:
    return _one(conn, f"SELECT {BLACKLIST_COLUMNS} FROM newsletter_blacklist WHERE organization_id = %s AND id = %s",
                (org_id, entry_id), "blacklist entry", entry_id, "entry_id")


def list_domains(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT {DOMAIN_COLUMNS} FROM newsletter_domains WHERE organization_id = %s"
                        " ORDER BY domain, id LIMIT 200", (org_id,)).fetchall()


def get_domain(conn: Any, org_id: UUID, domain_id: UUID) -> dict[str, Any]:
    return _one(conn, f"SELECT {DOMAIN_COLUMNS} FROM newsletter_domains WHERE organization_id = %s AND id = %s",
                (org_id, domain_id), "sender domain", domain_id, "domain_id")


def domain_named(conn: Any, org_id: UUID, domain: str) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {DOMAIN_COLUMNS} FROM newsletter_domains WHERE organization_id = %s AND domain = %s"
                        " ORDER BY verified DESC, created_at LIMIT 1", (org_id, domain)).fetchone()
