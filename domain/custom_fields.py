"""Custom fields: an organization's own fields on clients, deals, tasks and projects.

A definition (the `CustomField` aggregate) has a key, a label, a type, a required flag and, for choice types,
its choices. Its id comes from (organization, entity type, key), so a key is defined once: two concurrent
creations collide in the event store, and a deleted field's key is not reused (its values are still in the
entities' events, and would otherwise come back under a different meaning).

Values live in the entities' own events (`HasCustomFields.CustomFieldsChanged`, one per aggregate type: a
client's values are client data) and read models. `check_values` validates them against the definitions on
every write; errors name the custom field (`custom_fields.<key>`). Deleting a definition hides its values from
the read models; the events keep them.

Stored forms (JSON-native, in events and read models alike): text, url, email and single choice are strings,
number an integer or a float with at most 15 significant digits (exact in JSON), date an ISO `YYYY-MM-DD`
string, boolean a boolean, multiple choice a list of strings in the order of the choices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.base import TenantAggregate
from domain.errors import Conflict, DomainError
from domain.values import date_problem

ENTITY_TYPES = ("client", "deal", "task", "project")
FIELD_TYPES = ("text", "number", "date", "boolean", "single_choice", "multiple_choice", "url", "email")
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAX_FIELDS_PER_ENTITY = 50
MAX_CHOICES = 100
MAX_TEXT = 2000
MAX_NUMBER = Decimal(10) ** 15
MAX_SIGNIFICANT_DIGITS = 15
_URL = re.compile(r"^https?://\S+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_KEY = re.compile(KEY_PATTERN)


def field_id(org_id: UUID, entity_type: str, key: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:custom-field:{entity_type}:{key}")


class KeyTaken(Conflict):
    code = "custom_field_exists"


@dataclass(frozen=True)
class Definition:
    key: str
    label: str
    field_type: str
    required: bool = False
    choices: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Definition:
        return cls(row["key"], row["label"], row["field_type"], bool(row.get("required")), tuple(row.get("choices") or ()))


def check_definition(entity_type: str, key: str, label: str, field_type: str, choices: list[str], *,
                     existing: int) -> tuple[str, ...]:
    if entity_type not in ENTITY_TYPES:
        raise DomainError(f"entity_type must be one of {', '.join(ENTITY_TYPES)}", field="entity_type")
    if not _KEY.match(key):
        raise DomainError("key is 1-40 lowercase letters, digits and underscores, starting with a letter, "
                          "e.g. 'industry'", field="key")
    if not label.strip():
        raise DomainError("a custom field needs a label", field="label")
    if field_type not in FIELD_TYPES:
        raise DomainError(f"type must be one of {', '.join(FIELD_TYPES)}", field="type")
    if existing >= MAX_FIELDS_PER_ENTITY:
        raise DomainError(f"a {entity_type} has at most {MAX_FIELDS_PER_ENTITY} custom fields", field="entity_type")
    cleaned = tuple(" ".join(c.split()) for c in choices)
    if field_type in ("single_choice", "multiple_choice"):
        if not cleaned:
            raise DomainError(f"a {field_type.replace('_', ' ')} field needs its choices", field="choices")
        if len(cleaned) > MAX_CHOICES:
            raise DomainError(f"at most {MAX_CHOICES} choices", field="choices")
        if any(not c for c in cleaned):
            raise DomainError("choices cannot be empty", field="choices")
        if len({c.lower() for c in cleaned}) != len(cleaned):
            raise DomainError("choices must be different from each other", field="choices")
    elif cleaned:
        raise DomainError(f"choices are only for single_choice and multiple_choice fields, not {field_type}",
                          field="choices")
    return cleaned


class CustomField(TenantAggregate):
    entity_name = "custom field"

    @staticmethod
    def create_id(org_id: UUID, entity_type: str, key: str) -> UUID:
        return field_id(org_id, entity_type, key)

    @event("Created")
    def __init__(self, org_id: UUID, entity_type: str, key: str, label: str, field_type: str, required: bool,
                 choices: list[str], description: str | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.entity_type = entity_type
        self.key = key
        self.label = label
        self.field_type = field_type
        self.required = required
        self.choices = list(choices)
        self.description = description
        self.created_by = created_by
        self.deleted = False

    class Deleted(TenantAggregate.Deleted):
        """Carries what the entities' read models need to hide the field's values."""

        org_id: UUID
        entity_type: str
        key: str

    def delete(self) -> None:
        self.trigger_event(CustomField.Deleted, org_id=self.org_id, entity_type=self.entity_type, key=self.key)


class HasCustomFields(TenantAggregate):
    """Custom field values on an entity. `CustomFieldsChanged` carries the keys that changed (None: cleared)."""

    class CustomFieldsChanged(Aggregate.Event):
        values: dict[str, Any]

        def apply(self, aggregate: HasCustomFields) -> None:
            current = dict(aggregate.custom_values())
            for key, value in self.values.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
            aggregate.custom_fields = current

    def custom_values(self) -> dict[str, Any]:
        return getattr(self, "custom_fields", None) or {}

    def set_custom_fields(self, values: Mapping[str, Any]) -> None:
        """Record the values that differ from the current ones (checked with `check_values` first)."""
        current = self.custom_values()
        changed: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                if key in current:
                    changed[key] = None
            elif current.get(key) != value:
                changed[key] = value
        if changed:
            self.trigger_event(type(self).CustomFieldsChanged, values=changed)


# -- values --------------------------------------------------------------------------------------------------
def _where(key: str) -> str:
    return f"custom_fields.{key}"


def _number(d: Definition, raw: Any) -> int | float:
    if isinstance(raw, bool):
        raise DomainError(f"custom field {d.key!r} ({d.label}) is a number, not true/false", field=_where(d.key))
    try:
        value = Decimal(str(raw).strip()) if isinstance(raw, (str, int, float)) else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise DomainError(f"custom field {d.key!r} ({d.label}) is a number, e.g. 12 or 12.5", field=_where(d.key))
    if abs(value) >= MAX_NUMBER or len(value.normalize().as_tuple().digits) > MAX_SIGNIFICANT_DIGITS:
        raise DomainError(f"custom field {d.key!r} ({d.label}) takes numbers below 10^15 with at most "
                          f"{MAX_SIGNIFICANT_DIGITS} significant digits", field=_where(d.key))
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _date(d: Definition, raw: Any) -> str:
    try:
        day = date.fromisoformat(raw) if isinstance(raw, str) and len(raw) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise DomainError(f"custom field {d.key!r} ({d.label}) is a date, YYYY-MM-DD", field=_where(d.key))
    if (problem := date_problem(day)) is not None:
        raise DomainError(f"custom field {d.key!r} ({d.label}): {problem}", field=_where(d.key))
    return day.isoformat()


def _choice(d: Definition, raw: Any) -> str:
    if isinstance(raw, str):
        for choice in d.choices:
            if choice.lower() == " ".join(raw.split()).lower():
                return choice
    raise DomainError(f"custom field {d.key!r} ({d.label}) is one of: {', '.join(d.choices)}", field=_where(d.key))


def coerce(d: Definition, raw: Any) -> Any:
    """The stored form of one value, or an error naming the custom field and what it takes."""
    kind = d.field_type
    if kind == "number":
        return _number(d, raw)
    if kind == "date":
        return _date(d, raw)
    if kind == "boolean":
        if not isinstance(raw, bool):
            raise DomainError(f"custom field {d.key!r} ({d.label}) is true or false", field=_where(d.key))
        return raw
    if kind == "single_choice":
        return _choice(d, raw)
    if kind == "multiple_choice":
        items = raw if isinstance(raw, list) else None
        if items is None:
            raise DomainError(f"custom field {d.key!r} ({d.label}) is a list of choices: {', '.join(d.choices)}",
                              field=_where(d.key))
        chosen = {_choice(d, item) for item in items}
        return [c for c in d.choices if c in chosen]
    if not isinstance(raw, str):
        raise DomainError(f"custom field {d.key!r} ({d.label}) is {'an' if kind in ('url', 'email') else 'a'} "
                          f"{kind}, given as text", field=_where(d.key))
    text = raw.strip()
    if not text:
        raise DomainError(f"custom field {d.key!r} ({d.label}) cannot be empty; send null to clear it",
                          field=_where(d.key))
    if len(text) > MAX_TEXT:
        raise DomainError(f"custom field {d.key!r} ({d.label}) has at most {MAX_TEXT} characters", field=_where(d.key))
    if kind == "url" and not _URL.match(text):
        raise DomainError(f"custom field {d.key!r} ({d.label}) is an http(s) URL", field=_where(d.key))
    if kind == "email" and not _EMAIL.match(text):
        raise DomainError(f"custom field {d.key!r} ({d.label}) is an e-mail address", field=_where(d.key))
    return text


def check_values(entity_type: str, definitions: Mapping[str, Definition], values: Mapping[str, Any], *,
                 creating: bool, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate the custom field values a create or update sends; returns what to record (None clears a key).

    Unknown keys, wrong types and missing required fields (on create; an update cannot clear one) are refused,
    each naming the custom field."""
    out: dict[str, Any] = {}
    for key, raw in values.items():
        d = definitions.get(key)
        if d is None:
            known = ", ".join(sorted(definitions)) or "none"
            raise DomainError(f"unknown custom field {key!r} for {entity_type}s (defined: {known}; see "
                              "crm_settings_list_custom_fields)", field=_where(key))
        if raw is None:
            if d.required:
                raise DomainError(f"custom field {key!r} ({d.label}) is required and cannot be cleared",
                                  field=_where(key))
            out[key] = None
        else:
            out[key] = coerce(d, raw)
    if creating:
        for key, d in definitions.items():
            if d.required and out.get(key) is None:
                raise DomainError(f"custom field {key!r} ({d.label}) is required for every {entity_type}",
                                  field=_where(key))
    return out


def filter_value(d: Definition, raw: str) -> Any:
    """The stored form a list filter compares with (`custom_value` is text; a multiple choice matches any entity
    having that choice among its values)."""
    try:
        if d.field_type == "number":
            return _number(d, raw)
        if d.field_type == "boolean":
            lowered = raw.strip().lower()
            if lowered not in ("true", "false"):
                raise DomainError(f"custom field {d.key!r} ({d.label}) is true or false", field="custom_value")
            return lowered == "true"
        if d.field_type == "multiple_choice":
            return [_choice(d, raw)]
        return coerce(d, raw)
    except DomainError as e:
        e.field = "custom_value"
        raise
