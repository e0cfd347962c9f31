"""Settings read model: templates and custom field definitions (the event-sourced settings), and their queries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.custom_fields import CustomField, Definition
from domain.errors import NotFound
from domain.templates import TEMPLATE_FIELDS, Template
from projections.base import Projection, exists, handles, set_columns
from projections.pagination import Sort, paginate

TEMPLATE_COLUMNS = ("id, kind, name, entity, description, subject, html_body, text_body, language, category, body,"
                    " parameters, items, placeholders, created_by, created_at, updated_at")
JSON_COLUMNS = frozenset({"parameters", "items"})
FIELD_COLUMNS = ("id, entity_type, key, label, field_type AS type, required, choices, description, position,"
                 " created_by, created_at")


def _db(column: str, value: Any) -> Any:
    return Jsonb(value or []) if column in JSON_COLUMNS else value


class SettingsProjection(Projection):
    name = "settings"
    tables = ("templates", "custom_field_definitions")
    resources = ("settings",)

    @handles(Template.Created)
    def template_created(self, cur: Any, e: Any) -> None:
        f = {c: _db(c, e.fields.get(c)) for c in TEMPLATE_FIELDS}
        cur.execute(
            "INSERT INTO templates (id, organization_id, kind, name, entity, description, subject, html_body, text_body,"
            " language, category, body, parameters, items, placeholders, created_by, created_at, updated_at)"
            " VALUES (%(id)s, %(org)s, %(kind)s, %(name)s, %(entity)s, %(description)s, %(subject)s, %(html_body)s,"
            " %(text_body)s, %(language)s, %(category)s, %(body)s, %(parameters)s, %(items)s, %(placeholders)s,"
            " %(by)s, %(ts)s, %(ts)s)",
            {**f, "id": e.originator_id, "org": e.org_id, "kind": e.kind, "placeholders": list(e.placeholders),
             "by": e.created_by, "ts": e.timestamp},
        )

    @handles(Template.Updated)
    def template_updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "templates", e, {k: _db(k, v) for k, v in e.changes.items()})

    @handles(Template.Deleted)
    def template_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM templates WHERE id = %s", (e.originator_id,))

    @handles(CustomField.Created)
    def field_created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO custom_field_definitions (id, organization_id, entity_type, key, label, field_type, required,"
            " choices, description, position, created_by, created_at)"
            " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(max(position) + 1, 0), %s, %s"
            " FROM custom_field_definitions WHERE organization_id = %s AND entity_type = %s",
            (e.originator_id, e.org_id, e.entity_type, e.key, e.label, e.field_type, e.required, Jsonb(list(e.choices)),
             e.description, e.created_by, e.timestamp, e.org_id, e.entity_type),
        )

    @handles(CustomField.Deleted)
    def field_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM custom_field_definitions WHERE id = %s", (e.originator_id,))


# -- templates -------------------------------------------------------------------------------------------
def list_templates(conn: Any, org_id: UUID, *, kind: str | None = None, entity: str | None = None,
                   q: str | None = None, limit: int = 25, cursor: str | None = None):
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    for column, value in (("kind", kind), ("entity", entity)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if q:
        where.append("lower(name) LIKE '%%' || lower(%s) || '%%'")
        params.append(q)
    return paginate(conn, TEMPLATE_COLUMNS, "FROM templates WHERE " + " AND ".join(where), params,
                    Sort("lower(name)", "text"), limit, cursor)


def get_template(conn: Any, org_id: UUID, template_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {TEMPLATE_COLUMNS} FROM templates WHERE organization_id = %s AND id = %s",
                       (org_id, template_id)).fetchone()
    if row is None:
        raise NotFound("template", template_id, field="template_id")
    return row


def template_exists(conn: Any, org_id: UUID, template_id: UUID) -> bool:
    return exists(conn, "templates", org_id, template_id)


# -- custom fields -----------------------------------------------------------------------------------------
def list_custom_fields(conn: Any, org_id: UUID, entity_type: str | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        f"SELECT {FIELD_COLUMNS} FROM custom_field_definitions WHERE organization_id = %s"
        " AND (%s::text IS NULL OR entity_type = %s) ORDER BY entity_type, position, key",
        (org_id, entity_type, entity_type)).fetchall()


def get_custom_field(conn: Any, org_id: UUID, field_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {FIELD_COLUMNS} FROM custom_field_definitions WHERE organization_id = %s AND id = %s",
                       (org_id, field_id)).fetchone()
    if row is None:
        raise NotFound("custom field", field_id, field="field_id")
    return row


def custom_field_exists(conn: Any, org_id: UUID, field_id: UUID) -> bool:
    return exists(conn, "custom_field_definitions", org_id, field_id)


def definitions(conn: Any, org_id: UUID, entity_type: str) -> dict[str, Definition]:
    """The entity type's custom fields as the domain checks values against them."""
    rows = conn.execute(
        "SELECT key, label, field_type, required, choices FROM custom_field_definitions"
        " WHERE organization_id = %s AND entity_type = %s ORDER BY position, key", (org_id, entity_type)).fetchall()
    return {r["key"]: Definition.of(r) for r in rows}


def custom_keys(conn: Any, org_id: UUID) -> dict[str, set[str]]:
    """entity type -> its custom field keys (what template placeholders may name)."""
    rows = conn.execute("SELECT entity_type, key FROM custom_field_definitions WHERE organization_id = %s",
                        (org_id,)).fetchall()
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["entity_type"], set()).add(r["key"])
    return out
