"""Custom field values for the toolsets whose entities carry them (clients, deals, tasks, projects).

A create or update tool takes `custom_fields` ({key: value}, null clears one) and calls `record`; a list tool takes
`custom_fields` ({key: value as text}, all must match) and calls `list_filter`; get and list tools return the read model's
`custom_fields`. Definitions come from the settings read model: they are the entity's own schema, so these calls
need no permission on `settings` (an error names a custom field's key, never another resource's data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from uuid import UUID

from msgspec import UNSET, Meta, Struct, UnsetType

from application.shapes import Command, ListQuery
from domain.custom_fields import KEY_PATTERN, HasCustomFields, check_values, filter_value
from domain.errors import DomainError
from projections import settings as settings_q

CustomKey = Annotated[str, Meta(pattern=KEY_PATTERN)]
CustomValue = (Annotated[str, Meta(max_length=2000)] | int | float | bool
               | Annotated[list[Annotated[str, Meta(max_length=200)]], Meta(max_length=100)] | None)
CustomFieldsArg = Annotated[dict[CustomKey, CustomValue], Meta(max_length=50, description=(
    "Keys: crm_settings_list_custom_fields."))]
CustomFieldsOut = Annotated[dict[str, Any], Meta(description="Custom field values by key (see crm_settings_list_custom_fields).")]
CustomFilterValue = Annotated[str, Meta(min_length=1, max_length=2000)]
CustomFilter = Annotated[dict[CustomKey, CustomFilterValue], Meta(min_length=1, max_length=10, description=(
    "Only those with these custom field values, as text: {\"industry\": \"Dental\", \"vip\": \"true\"}."))]


class WithCustomFields(Command, kw_only=True):
    """Base of a create tool's input whose entity carries custom fields."""

    custom_fields: CustomFieldsArg = {}


class ChangesCustomFields(Command, kw_only=True):
    """Base of an update tool's input whose entity carries custom fields (unsent: unchanged)."""

    custom_fields: CustomFieldsArg | UnsetType = UNSET


class FiltersCustomFields(ListQuery, kw_only=True):
    """Base of a list tool's input that filters by custom field values."""

    custom_fields: CustomFilter | None = None


class CustomFieldsShown(Struct, kw_only=True):
    """Base of an entity's output: its custom field values."""

    custom_fields: CustomFieldsOut = {}


def validate(conn: Any, org_id: UUID, entity_type: str, values: Mapping[str, Any] | None, *, creating: bool) -> dict[str, Any]:
    """The values to record after checking them against the entity type's definitions (see domain.custom_fields).
    On create, required fields must be given even when `values` is empty."""
    if values is None or values is UNSET:
        values = {}
    if not values and not creating:
        return {}
    definitions = settings_q.definitions(conn, org_id, entity_type)
    if not definitions and not values:
        return {}
    return check_values(entity_type, definitions, values, creating=creating)


def record(uow: Any, entity: HasCustomFields, entity_type: str, values: Mapping[str, Any] | None, *,
           creating: bool) -> None:
    """Validate and record the custom field values on the entity (nothing when nothing changes)."""
    checked = validate(uow.conn, uow.org_id, entity_type, values, creating=creating)
    if checked:
        entity.set_custom_fields(checked)


def list_filter(conn: Any, org_id: UUID, entity_type: str, wanted: Mapping[str, str] | None) -> dict[str, Any] | None:
    """{key: stored value} for a list's `custom_fields` filter, or None without one; an error names the key
    (`custom_fields.industry`)."""
    if not wanted:
        return None
    definitions = settings_q.definitions(conn, org_id, entity_type)
    out = {}
    for key, value in wanted.items():
        definition = definitions.get(key)
        if definition is None:
            raise DomainError(f"no custom field {key!r} is defined for {entity_type}s (crm_settings_list_custom_fields)",
                              field=f"custom_fields.{key}")
        try:
            out[key] = filter_value(definition, value)
        except DomainError as e:
            e.field = f"custom_fields.{key}"
            raise
    return out
