"""Errors a model can act on: what was wrong, what is allowed, an example, and (for ids) what the id really is.

The validation layer says "Invalid enum value 'won'"; a model needs "'won' is not a status; did you mean
'accepted'?". A not-found needs to say whether the id is of another kind ("… is a deal id, not a client id"),
was deleted ("deleted on 2026-11-20 by Mario Rossi") or merged ("merged into …"). This module turns the one into
the other; the runner calls it only on the error path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.utils import resolve_topic

SYNONYMS = {
    "won": "accepted", "win": "accepted", "closed_won": "accepted", "closed won": "accepted", "lost": "rejected",
    "closed_lost": "rejected", "closed lost": "rejected", "declined": "rejected", "reopen": "open", "reopened": "open",
    "completed": "done", "complete": "done", "closed": "done", "finished": "done", "todo": "open", "pending": "open",
    "in_progress": "open", "medium": "normal", "critical": "urgent", "prospect": "lead", "customer": "client",
    "email_sent": "email", "phone": "call", "phone_call": "call", "meeting_held": "meeting", "comment": "note",
    "asc": "created_asc", "desc": "created_desc", "newest": "created_desc", "oldest": "created_asc",
}


def schema_at(schema: dict[str, Any], path: str | None) -> dict[str, Any]:
    """The (inlined) schema node of an argument path such as `address.city` or `tags[0]`."""
    node = schema
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path or ""):
        variants = node.get("anyOf", [node])
        node = next((v for v in variants if "properties" in v or "items" in v), node)
        node = node.get("items", {}) if part.startswith("[") else node.get("properties", {}).get(part, {})
    return node


def enum_values(node: dict[str, Any]) -> list[Any]:
    return [v for variant in node.get("anyOf", [node]) for v in variant.get("enum", []) if v is not None]


def explain_validation(text: str, path: str | None, schema: dict[str, Any], today: Callable[[], date]) -> str | None:
    """A better message for a msgspec refusal, or None to keep its own."""
    m = re.match(r"Invalid enum value '(.*)'", text)
    if m:
        allowed = enum_values(schema_at(schema, path))
        given = m.group(1)
        guess = SYNONYMS.get(given.lower().strip())
        name = (path or "value").rsplit(".", 1)[-1]
        hint = f" did you mean {guess!r}?" if guess in allowed else ""
        return f"{given!r} is not a {name}; allowed: {', '.join(map(str, allowed))}.{hint}"
    if text.startswith("Invalid RFC3339 encoded date") and "datetime" not in text:
        return (f"expected a date as YYYY-MM-DD, e.g. {today().isoformat()} (today in the organization's time zone);"
                " words such as 'tomorrow' or other formats are not read")
    if text.startswith("Invalid RFC3339 encoded datetime"):
        return (f"expected a date and time as ISO 8601 with its offset, e.g. {today().isoformat()}T15:30:00+01:00"
                f" (today in the organization's time zone is {today().isoformat()})")
    if text.startswith("Invalid decimal string") or re.match(r"Expected `decimal`", text):
        return ('expected an amount as digits with a dot before decimals, e.g. "4800" or "4800.50": no currency'
                " symbol or code, no thousands separators")
    if text.startswith("Invalid UUID"):
        return "expected an id such as 0f8fad5b-d9cb-469f-a165-70867728950e, as list and search tools return them"
    return None


def explain_not_found(conn: Any, org_id: UUID, entity: str, entity_id: Any, user_name: Callable[[UUID], str | None],
                      merged_into: Callable[[UUID], Any]) -> str | None:
    """Why an id of this organization is not there: another kind of entity, deleted, or merged. None when the
    id is unknown here (another organization's ids stay unknown: nothing is said about them)."""
    try:
        originator = UUID(str(entity_id))
    except ValueError:
        return None
    rows = conn.execute(
        "SELECT e.topic, e.notification_id, c.user_id, c.recorded_at, c.token_id, c.oauth_client_id, c.workflow_run_id"
        " FROM stored_events e"
        " LEFT JOIN LATERAL (SELECT user_id, recorded_at, token_id, oauth_client_id, workflow_run_id FROM event_causes"
        "   WHERE first_notification_id <= e.notification_id"
        "   AND last_notification_id >= e.notification_id ORDER BY first_notification_id DESC LIMIT 1) c ON true"
        " WHERE e.originator_id = %s AND e.organization_id = %s AND (e.originator_version = 1 OR e.notification_id ="
        "   (SELECT max(notification_id) FROM stored_events WHERE originator_id = %s))"
        " ORDER BY e.notification_id", (originator, org_id, originator)).fetchall()
    if not rows:
        return _settings_deletion(conn, org_id, entity, entity_id, user_name)
    first, last = rows[0], rows[-1]
    kind = _entity_of(first["topic"])
    if kind is not None and kind != entity:
        return f"{entity_id} is {_article(kind)} {kind} id, not {_article(entity)} {entity} id"
    topic = last["topic"]
    when = last["recorded_at"].date().isoformat() if last.get("recorded_at") else "an unknown date"
    who = (user_name(last["user_id"]) if last.get("user_id") else None) or _credential(conn, org_id, last)
    if topic.endswith(".MergedInto"):
        survivor = merged_into(originator)
        return f"{entity} {entity_id} was merged into {survivor} on {when} by {who}: use that id"
    if topic.endswith(".Deleted"):
        return (f"{entity} {entity_id} was deleted on {when} by {who}; restore with crm_audit_restore_entity "
                "(entity_id), its history with crm_audit_entity_history")
    return None


def _settings_deletion(conn: Any, org_id: UUID, entity: str, entity_id: Any,
                       user_name: Callable[[UUID], str | None]) -> str | None:
    """A role (or another settings entity: auth tables, changed without events) deleted, from the settings log."""
    row = conn.execute(
        "SELECT action, occurred_at, actor_user_id AS user_id, actor_token_id AS token_id,"
        " actor_oauth_client_id AS oauth_client_id FROM settings_changes"
        " WHERE organization_id = %s AND entity_id = %s ORDER BY id DESC LIMIT 1", (org_id, str(entity_id))).fetchone()
    if row is None or row["action"] != "deleted":
        return None
    who = (user_name(row["user_id"]) if row.get("user_id") else None) or _credential(conn, org_id, row)
    return (f"{entity} {entity_id} was deleted on {row['occurred_at'].date().isoformat()} by {who}; a setting cannot "
            "be restored (create it again); its history: crm_audit_entity_history")


def _credential(conn: Any, org_id: UUID, cause: dict[str, Any]) -> str:
    """Who deleted it when no user is named: the workflow, API token or OAuth client behind the cause."""
    if cause.get("workflow_run_id"):
        row = conn.execute("SELECT workflow_name FROM workflow_runs WHERE id = %s AND organization_id = %s",
                           (cause["workflow_run_id"], org_id)).fetchone()
        return f"the workflow {row['workflow_name']!r}" if row else "a workflow"
    if cause.get("token_id"):
        row = conn.execute("SELECT name FROM api_tokens WHERE id = %s AND organization_id = %s",
                           (cause["token_id"], org_id)).fetchone()
        return f"the API token {row['name']!r}" if row and row["name"] else "an API token"
    if cause.get("oauth_client_id"):
        row = conn.execute("SELECT client_name FROM oauth_clients WHERE client_id = %s",
                           (cause["oauth_client_id"],)).fetchone()
        return f"the OAuth client {row['client_name']!r}" if row and row["client_name"] else "an OAuth client"
    return "an API token or automation"


def _entity_of(topic: str) -> str | None:
    try:
        owner = resolve_topic(topic.rsplit(".", 1)[0])
    except Exception:
        return None
    return getattr(owner, "entity_name", None)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
