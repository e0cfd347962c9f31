"""Custom field values on the entities' read models (clients, deals, tasks, projects), written once for all four.

Each entity projection handles its own `<Entity>.CustomFieldsChanged` with `apply` and `CustomField.Deleted` with
`hide` (only the definitions of its entity type), then refreshes its search text: text-like values are searchable
(`f_custom_text`, migrations/0020_settings.sql). List filters use `containment` (a GIN index answers it).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from projections.base import touch


def apply(cur: Any, table: str, event: Any) -> None:
    """Merge the changed values into the row's `custom_fields` (None removes a key)."""
    set_values = {k: v for k, v in event.values.items() if v is not None}
    removed = [k for k, v in event.values.items() if v is None]
    touch(cur, table, event, "custom_fields = (custom_fields || %s::jsonb) - %s::text[]", (Jsonb(set_values), removed))


def hide(cur: Any, table: str, entity_type: str, event: Any) -> list[UUID]:
    """A deleted definition's values leave the read model (the events keep them); returns the rows changed."""
    if event.entity_type != entity_type:
        return []
    rows = cur.execute(
        f"UPDATE {table} SET custom_fields = custom_fields - %s"  # noqa: S608 - table names are constants
        " WHERE organization_id = %s AND custom_fields ? %s RETURNING id",
        (event.key, event.org_id, event.key)).fetchall()
    return [r["id"] if isinstance(r, dict) else r[0] for r in rows]


def containment(filter_value: dict[str, Any] | None) -> tuple[str, list[Any]] | None:
    """(`custom_fields @> %s`, params) for a list filter {key: stored value}, or None without one."""
    if not filter_value:
        return None
    return "custom_fields @> %s::jsonb", [Jsonb(filter_value)]
