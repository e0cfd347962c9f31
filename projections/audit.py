"""Audit queries over the event store itself (`stored_events`, `event_causes`) and the settings log
(`settings_changes`): no read model of their own, so nothing to rebuild and nothing a restore can miss.

- `entity_events`: every stored event of one entity, each with the cause row of the command that recorded it
  (user, API token, OAuth client, workflow run, tool, correlation id, the request's W3C trace id, time);
- `changes_page`: an organization's changes, newest first, events and settings changes merged into one feed,
  paged by a keyset cursor on (time, source, sequence) so that each page is a few index probes however long the
  history (`event_causes (organization_id, recorded_at)` and its user and tool variants, migration 0060; the
  aggregate of each event, 0061);
- `actor_names`: the names beside the ids (users, API tokens, OAuth clients, workflows of runs).

Callers check tenancy: every query filters on the organization, and `entity_events` returns the organization of
each event so the caller can refuse another tenant's entity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row

from projections import pagination

def entity_events(conn: Any, entity_id: UUID) -> list[tuple[Any, ...]]:
    """Every event of one entity (any organization: the caller compares the organization), oldest first, as
    (notification_id, originator_id, originator_version, topic, state, organization_id) tuples (an entity may have
    thousands: no per-row dictionaries)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state, organization_id"
            " FROM stored_events WHERE originator_id = %s ORDER BY originator_version", (entity_id,)).fetchall()


def causes_of(conn: Any, org_id: UUID, notification_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The cause row (who, tool, correlation id, W3C trace id, time) of each of these events of the organization."""
    if not notification_ids:
        return {}
    rows = conn.execute(
        "SELECT n.id AS notification_id, c.recorded_at, c.user_id, c.token_id, c.oauth_client_id, c.correlation_id,"
        " c.tool, c.workflow_run_id, c.trace_id FROM unnest(%s::bigint[]) AS n(id)"
        " CROSS JOIN LATERAL (SELECT * FROM event_causes WHERE first_notification_id <= n.id"
        "   ORDER BY first_notification_id DESC LIMIT 1) c"
        " WHERE c.last_notification_id >= n.id AND c.organization_id = %s", (notification_ids, org_id)).fetchall()
    return {r["notification_id"]: r for r in rows}


def settings_entity_changes(conn: Any, org_id: UUID, entity_id: str) -> list[dict[str, Any]]:
    """The settings log of one settings entity (a user, role, API token, ...), oldest first."""
    return conn.execute(
        "SELECT id, occurred_at, actor_user_id AS user_id, actor_token_id AS token_id,"
        " actor_oauth_client_id AS oauth_client_id, correlation_id, tool, entity_type, entity_id, action, changes"
        " FROM settings_changes WHERE organization_id = %s AND entity_id = %s ORDER BY id",
        (org_id, entity_id)).fetchall()


# -- the organization's feed -------------------------------------------------------------------------------
EVENTS, SETTINGS = 1, 0
"""The feed's sources, in the order they sort at the same instant (newest first: events before settings)."""
OWNER_OF_TOPIC = "left(e.topic, length(e.topic) - strpos(reverse(e.topic), '.'))"
"""`domain.deals:Deal.Created` -> `domain.deals:Deal`: the aggregate an event's topic belongs to."""
INVALID_CURSOR = pagination.INVALID_CURSOR


@dataclass(frozen=True)
class FeedFilter:
    since: datetime | None = None
    until: datetime | None = None
    user_id: UUID | None = None
    tool: str | None = None
    owners: tuple[str, ...] | None = None
    """Aggregate topics (`domain.deals:Deal`) to keep; None: every aggregate; empty: no events at all."""
    settings_types: tuple[str, ...] | None = None
    """settings_changes entity types to keep; None: all; empty: no settings changes."""


def encode_cursor(at: datetime, source: int, seq: int) -> str:
    return pagination.seal(pagination.pack_instant(at) + bytes([source]) + pagination.pack8(seq))


def decode_cursor(cursor: str) -> tuple[datetime, int, int]:
    """(time, source, sequence) of the last row of the previous page; anything else is the caller's error."""

    def read(body: bytes) -> tuple[datetime, int, int]:
        if len(body) != 17 or body[8] not in (EVENTS, SETTINGS):
            raise ValueError
        seq = pagination.unpack8(body[9:])
        if seq < 0:
            raise ValueError
        return pagination.unpack_instant(body[:8]), body[8], seq

    return pagination.unseal(cursor, read)


TYPE_PROBE_CAUSES = 500
"""With an entity type filter, how many of the newest cause rows are looked at before asking the type index."""


def _event_rows(conn: Any, org_id: UUID, f: FeedFilter, after: tuple[datetime, int, int] | None, limit: int
                ) -> list[dict[str, Any]]:
    """The newest events matching the filter, from the cause rows newest first (an index probe per command); with
    an entity type, a type seen in the newest commands is found there, a rarer one through the type index."""
    where = ["c.organization_id = %(org)s"]
    params: dict[str, Any] = {"org": org_id, "limit": limit}
    if f.since is not None:
        where.append("c.recorded_at >= %(since)s")
        params["since"] = f.since
    if f.until is not None:
        where.append("c.recorded_at < %(until)s")
        params["until"] = f.until
    if f.user_id is not None:
        where.append("c.user_id = %(user)s")
        params["user"] = f.user_id
    if f.tool is not None:
        where.append("c.tool = %(tool)s")
        params["tool"] = f.tool
    if after is not None:
        # (time, source, sequence) below the cursor's; the plain bound on time lets the index range stop early
        where.append("c.recorded_at <= %(at)s")
        where.append("(c.recorded_at, %(events)s, e.notification_id) < (%(at)s, %(source)s, %(seq)s)")
        params.update(at=after[0], events=EVENTS, source=after[1], seq=after[2])
    columns = ("c.recorded_at AS at, e.notification_id AS seq, e.originator_id, e.originator_version, e.topic,"
               " c.user_id, c.token_id, c.oauth_client_id, c.correlation_id, c.tool, c.workflow_run_id, c.trace_id")
    order = " ORDER BY c.recorded_at DESC, e.notification_id DESC LIMIT %(limit)s"
    # Each cause row's events by position (OFFSET 0 keeps the planner walking the causes newest first and probing
    # the events of each, instead of guessing a filter on topics selective and scanning the whole store).
    by_causes = ("FROM {causes} CROSS JOIN LATERAL ("
                 "   SELECT e.notification_id, e.originator_id, e.originator_version, e.topic FROM stored_events e"
                 "   WHERE e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id"
                 "     AND e.organization_id = c.organization_id OFFSET 0) e")
    if f.owners is None:
        return conn.execute(f"SELECT {columns} {by_causes.format(causes='event_causes c')}"
                            f" WHERE {' AND '.join(where)}{order}", params).fetchall()
    params["owners"] = list(f.owners)
    typed = f"{OWNER_OF_TOPIC} = ANY(%(owners)s)"
    cause_where = [w for w in where if "e." not in w]
    probe = (f"(SELECT * FROM event_causes c WHERE {' AND '.join(cause_where)}"
             f" ORDER BY c.recorded_at DESC, c.first_notification_id DESC LIMIT {TYPE_PROBE_CAUSES}) c")
    rows = conn.execute(f"SELECT {columns} {by_causes.format(causes=probe)} WHERE {' AND '.join([*where, typed])}"
                        f"{order}", params).fetchall()
    if len(rows) >= limit:
        return rows
    # Not enough among the newest commands: every event of the type (index on organization and aggregate, 0060),
    # each with its cause, sorted here.
    return conn.execute(
        f"SELECT {columns} FROM stored_events e CROSS JOIN LATERAL ("
        "   SELECT * FROM event_causes WHERE first_notification_id <= e.notification_id"
        "   ORDER BY first_notification_id DESC LIMIT 1) c"
        f" WHERE e.organization_id = %(org)s AND {typed} AND c.last_notification_id >= e.notification_id"
        f" AND {' AND '.join(where)}{order}", params).fetchall()


def _settings_rows(conn: Any, org_id: UUID, f: FeedFilter, after: tuple[datetime, int, int] | None, limit: int
                   ) -> list[dict[str, Any]]:
    where = ["organization_id = %(org)s"]
    params: dict[str, Any] = {"org": org_id, "limit": limit}
    if f.since is not None:
        where.append("occurred_at >= %(since)s")
        params["since"] = f.since
    if f.until is not None:
        where.append("occurred_at < %(until)s")
        params["until"] = f.until
    if f.user_id is not None:
        where.append("actor_user_id = %(user)s")
        params["user"] = f.user_id
    if f.tool is not None:
        where.append("tool = %(tool)s")
        params["tool"] = f.tool
    if f.settings_types is not None:
        where.append("entity_type = ANY(%(types)s)")
        params["types"] = list(f.settings_types)
    if after is not None:
        where.append("occurred_at <= %(at)s AND (occurred_at, %(settings)s, id) < (%(at)s, %(source)s, %(seq)s)")
        params.update(at=after[0], settings=SETTINGS, source=after[1], seq=after[2])
    return conn.execute(
        "SELECT occurred_at AS at, id AS seq, entity_type, entity_id, action, changes, actor_user_id AS user_id,"
        " actor_token_id AS token_id, actor_oauth_client_id AS oauth_client_id, correlation_id, tool"
        f" FROM settings_changes WHERE {' AND '.join(where)}"
        " ORDER BY occurred_at DESC, id DESC LIMIT %(limit)s", params).fetchall()


def changes_page(conn: Any, org_id: UUID, f: FeedFilter, limit: int, cursor: str | None
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the organization's changes, newest first: events (`source` EVENTS) and settings changes
    (`source` SETTINGS) merged by time."""
    after = decode_cursor(cursor) if cursor else None
    rows: list[dict[str, Any]] = []
    if f.owners is None or f.owners:
        rows += [{**r, "source": EVENTS} for r in _event_rows(conn, org_id, f, after, limit + 1)]
    if f.settings_types is None or f.settings_types:
        rows += [{**r, "source": SETTINGS} for r in _settings_rows(conn, org_id, f, after, limit + 1)]
    rows.sort(key=lambda r: (r["at"], r["source"], r["seq"]), reverse=True)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return rows, encode_cursor(last["at"], last["source"], last["seq"]) if more and last else None


# -- names beside ids --------------------------------------------------------------------------------------
def actor_names(conn: Any, org_id: UUID, rows: list[dict[str, Any]]) -> dict[str, dict[Any, Any]]:
    """Names of the users, API tokens, OAuth clients and workflow runs the rows name: {"users": {id: name},
    "tokens": {id: name}, "clients": {client_id: name}, "runs": {run_id: (workflow_id, workflow name)}}."""
    def ids(key: str) -> list[Any]:
        return sorted({r[key] for r in rows if r.get(key) is not None}, key=str)

    out: dict[str, dict[Any, Any]] = {"users": {}, "tokens": {}, "clients": {}, "runs": {}}
    if users := ids("user_id"):
        out["users"] = {r["id"]: r["name"] for r in conn.execute(
            "SELECT id, name FROM users WHERE organization_id = %s AND id = ANY(%s)", (org_id, users)).fetchall()}
    if tokens := ids("token_id"):
        out["tokens"] = {r["id"]: r["name"] for r in conn.execute(
            "SELECT id, name FROM api_tokens WHERE organization_id = %s AND id = ANY(%s)", (org_id, tokens)).fetchall()}
    if clients := ids("oauth_client_id"):
        out["clients"] = {r["client_id"]: r["client_name"] for r in conn.execute(
            "SELECT client_id, client_name FROM oauth_clients WHERE client_id = ANY(%s)", (clients,)).fetchall()}
    if runs := ids("workflow_run_id"):
        out["runs"] = {r["id"]: (r["workflow_id"], r["workflow_name"]) for r in conn.execute(
            "SELECT id, workflow_id, workflow_name FROM workflow_runs WHERE organization_id = %s AND id = ANY(%s)",
            (org_id, runs)).fetchall()}
    return out


def first_events(conn: Any, org_id: UUID, entity_ids: list[UUID]) -> list[dict[str, Any]]:
    """The first event of each entity (its creation): where the feed finds the names shown beside ids."""
    if not entity_ids:
        return []
    return conn.execute(
        "SELECT originator_id, originator_version, topic, state FROM stored_events"
        " WHERE originator_id = ANY(%s) AND originator_version = 1 AND organization_id = %s",
        (entity_ids, org_id)).fetchall()
