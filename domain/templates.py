"""Templates: e-mails, WhatsApp messages, quotes and task checklists, with placeholders checked on save.

A placeholder is `{{root.field}}` (spaces allowed inside the braces), e.g. `{{client.business_name}}`. Each
template is *for* one entity (client, deal, task or project), which decides the roots it may use (a deal's
template may use the deal, its client, the organization and the user sending it). Custom fields are
`{{client.custom.<key>}}` and must be defined for that entity type. An unknown placeholder is refused on save,
naming it, so a template never renders a hole.

WhatsApp templates follow the WhatsApp Cloud API: a name of lowercase letters, digits and underscores, a language
code (`it`, `en_US`), a category, and a body (at most 1,024 characters) whose variables are numbered `{{1}}`,
`{{2}}`... in order, neither first nor last; `parameters[i]` names the placeholder that fills `{{i+1}}` when sending.

The vocabulary and `check`/`render` are used by every feature that fills templates (newsletter, workflows).
"""

from __future__ import annotations

import html as html_escape
import re
from collections.abc import Collection, Mapping
from typing import Any

from eventsourcing.domain import event

from domain.errors import DomainError
from domain.shared import Editable

KINDS = ("email", "whatsapp", "quote", "task_checklist")
ENTITIES = ("client", "deal", "task", "project")
WHATSAPP_CATEGORIES = ("UTILITY", "MARKETING", "AUTHENTICATION")
TEMPLATE_FIELDS = ("name", "entity", "description", "subject", "html_body", "text_body", "language", "category", "body",
                   "parameters", "items")
"""What a template records besides its kind, in display order."""
COMMON_FIELDS = frozenset({"name", "entity", "description"})
KIND_FIELDS: dict[str, frozenset[str]] = {
    "email": frozenset({"subject", "html_body", "text_body"}),
    "whatsapp": frozenset({"language", "category", "body", "parameters"}),
    "quote": frozenset({"subject", "body"}),
    "task_checklist": frozenset({"items"}),
}
KIND_ENTITIES: dict[str, tuple[str, ...]] = {
    "email": ENTITIES, "whatsapp": ENTITIES, "quote": ("deal", "client"), "task_checklist": ("task", "project"),
}
MAX_WHATSAPP_BODY = 1024
MAX_CHECKLIST_ITEMS = 100

VOCABULARY: dict[str, tuple[str, ...]] = {
    "client": ("business_name", "contact_name", "vat_number", "tax_code", "email", "phone", "website", "address",
               "source", "kind", "status"),
    "deal": ("title", "description", "value", "currency", "status", "stage", "pipeline", "expected_close_date",
             "close_date", "owner_name"),
    "task": ("title", "description", "due_date", "priority", "status", "assignee_name"),
    "project": ("name", "description", "status", "start_date", "end_date", "budget"),
    "organization": ("name", "vat_number", "address", "logo_url", "currency"),
    "user": ("name", "email"),
}
"""Every placeholder root and its fields: `{{client.business_name}}`, `{{organization.name}}`, `{{user.name}}`."""
ROOTS: dict[str, tuple[str, ...]] = {
    "client": ("client", "organization", "user"),
    "deal": ("deal", "client", "organization", "user"),
    "task": ("task", "client", "deal", "project", "organization", "user"),
    "project": ("project", "client", "deal", "organization", "user"),
}
"""The roots a template for each entity may use."""
CUSTOM_ROOTS = frozenset(ENTITIES)

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_NUMBERED = re.compile(r"^[1-9][0-9]{0,2}$")
WHATSAPP_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
WHATSAPP_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


def placeholders_in(text: str, *, field: str) -> list[str]:
    """The placeholders of a text, in order of appearance; an unclosed `{{` is an error naming the field."""
    found = [m.group(1) for m in _PLACEHOLDER.finditer(text)]
    if text.count("{{") != len(found) or text.count("}}") != len(found):
        raise DomainError("a placeholder is not closed: write it as {{root.field}}", field=field)
    return found


def allowed_placeholders(entity: str, custom_keys: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Every placeholder a template for `entity` may use, custom fields included."""
    names = [f"{root}.{f}" for root in ROOTS[entity] for f in VOCABULARY[root]]
    for root in ROOTS[entity]:
        if root in CUSTOM_ROOTS:
            names += [f"{root}.custom.{k}" for k in sorted((custom_keys or {}).get(root, ()))]
    return names


def check_placeholder(name: str, entity: str, custom_keys: Mapping[str, Collection[str]] | None, *, field: str) -> None:
    root, _, rest = name.partition(".")
    roots = ROOTS[entity]
    if root not in VOCABULARY or not rest:
        raise DomainError(f"unknown placeholder {{{{{name}}}}}: placeholders are root.field with root one of "
                          f"{', '.join(roots)}", field=field)
    if root not in roots:
        raise DomainError(f"placeholder {{{{{name}}}}} is not available in a template for a {entity}; roots: "
                          f"{', '.join(roots)}", field=field)
    if rest.startswith("custom."):
        key = rest.removeprefix("custom.")
        if root not in CUSTOM_ROOTS or key not in (custom_keys or {}).get(root, ()):
            raise DomainError(f"unknown placeholder {{{{{name}}}}}: no custom field {key!r} is defined for "
                              f"{root}s (crm_settings_list_custom_fields)", field=field)
        return
    if rest not in VOCABULARY[root]:
        raise DomainError(f"unknown placeholder {{{{{name}}}}}: {root} fields are {', '.join(VOCABULARY[root])}",
                          field=field)


def _check_whatsapp(state: Mapping[str, Any], entity: str, custom_keys: Mapping[str, Collection[str]] | None) -> list[str]:
    if not WHATSAPP_NAME.match(state.get("name") or ""):
        raise DomainError("a WhatsApp template name has only lowercase letters, digits and underscores, "
                          "e.g. 'appointment_reminder'", field="name")
    if not WHATSAPP_LANGUAGE.match(state.get("language") or ""):
        raise DomainError("language must be a WhatsApp language code, e.g. 'it' or 'en_US'", field="language")
    if state.get("category") not in WHATSAPP_CATEGORIES:
        raise DomainError(f"category must be one of {', '.join(WHATSAPP_CATEGORIES)}", field="category")
    body = state.get("body") or ""
    if not body.strip():
        raise DomainError("a WhatsApp template needs a body", field="body")
    if len(body) > MAX_WHATSAPP_BODY:
        raise DomainError(f"a WhatsApp body has at most {MAX_WHATSAPP_BODY} characters", field="body")
    used = placeholders_in(body, field="body")
    for name in used:
        if not _NUMBERED.match(name):
            raise DomainError(f"WhatsApp bodies use numbered variables {{{{1}}}}, {{{{2}}}}...; map {{{{{name}}}}} "
                              "to a number and list it in parameters", field="body")
    numbers = [int(n) for n in used]
    distinct = sorted(set(numbers))
    if distinct != list(range(1, len(distinct) + 1)):
        raise DomainError("WhatsApp variables are numbered from {{1}} without gaps", field="body")
    if [n for i, n in enumerate(numbers) if n not in numbers[:i]] != distinct:
        raise DomainError("WhatsApp variables first appear in order: {{1}}, then {{2}}, ...", field="body")
    stripped = body.strip()
    if distinct and (_PLACEHOLDER.match(stripped) or re.search(r"\{\{\s*\d+\s*\}\}$", stripped)):
        raise DomainError("a WhatsApp body cannot start or end with a variable (Meta refuses such templates)",
                          field="body")
    parameters = list(state.get("parameters") or [])
    if len(parameters) != len(distinct):
        raise DomainError(f"the body has {len(distinct)} variable(s) and parameters names {len(parameters)}: give one "
                          "placeholder per variable, in order (parameters[0] fills {{1}})", field="parameters")
    for i, name in enumerate(parameters):
        check_placeholder(name.strip().strip("{}").strip(), entity, custom_keys, field=f"parameters[{i}]")
    return [p.strip().strip("{}").strip() for p in parameters]


def check(kind: str, state: Mapping[str, Any], custom_keys: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Check a template's whole state for its kind; returns its placeholders (sorted, unique). Errors name the
    field and, for placeholders, the placeholder."""
    if kind not in KINDS:
        raise DomainError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    entity = state.get("entity")
    if entity not in KIND_ENTITIES[kind]:
        raise DomainError(f"a {kind} template is for a {' or a '.join(KIND_ENTITIES[kind])}", field="entity")
    if not (state.get("name") or "").strip():
        raise DomainError("a template needs a name", field="name")
    foreign = sorted(f for f in TEMPLATE_FIELDS if f not in COMMON_FIELDS | KIND_FIELDS[kind]
                     and state.get(f) not in (None, [], ""))
    if foreign:
        raise DomainError(f"{foreign[0]} does not apply to {kind} templates (they have "
                          f"{', '.join(sorted(KIND_FIELDS[kind]))})", field=foreign[0])
    if kind == "whatsapp":
        return sorted(set(_check_whatsapp(state, entity, custom_keys)))
    texts: list[tuple[str, str]] = []
    if kind == "email":
        if not (state.get("subject") or "").strip():
            raise DomainError("an e-mail template needs a subject", field="subject")
        if not (state.get("html_body") or state.get("text_body")):
            raise DomainError("an e-mail template needs html_body, text_body or both", field="text_body")
        texts = [(f, state[f]) for f in ("subject", "html_body", "text_body") if state.get(f)]
    elif kind == "quote":
        if not (state.get("body") or "").strip():
            raise DomainError("a quote template needs a body", field="body")
        texts = [(f, state[f]) for f in ("subject", "body") if state.get(f)]
    elif kind == "task_checklist":
        items = list(state.get("items") or [])
        if not items:
            raise DomainError("a checklist template needs at least one item", field="items")
        if len(items) > MAX_CHECKLIST_ITEMS:
            raise DomainError(f"a checklist template has at most {MAX_CHECKLIST_ITEMS} items", field="items")
        for i, item in enumerate(items):
            if not item.strip():
                raise DomainError("checklist items cannot be empty", field=f"items[{i}]")
        texts = [(f"items[{i}]", item) for i, item in enumerate(items)]
    found: set[str] = set()
    for field, text in texts:
        for name in placeholders_in(text, field=field):
            check_placeholder(name, entity, custom_keys, field=field)
            found.add(name)
    return sorted(found)


def render(text: str, values: Mapping[str, Any], *, escape_html: bool = False) -> str:
    """Fill a text's placeholders from `values` ({"client.business_name": "Rossi Srl", ...}); a missing or empty
    value renders as nothing. With `escape_html`, values are HTML-escaped (for html_body)."""

    def fill(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        text_value = "" if value is None else str(value)
        return html_escape.escape(text_value) if escape_html else text_value

    return _PLACEHOLDER.sub(fill, text)


def whatsapp_parameters(parameters: list[str], values: Mapping[str, Any]) -> list[str]:
    """The values for {{1}}, {{2}}... in order, as the Cloud API's body parameters expect them."""
    return ["" if values.get(p) is None else str(values.get(p)) for p in parameters]


class Template(Editable):
    entity_name = "template"
    editable_fields = (frozenset(TEMPLATE_FIELDS) - {"entity"}) | {"placeholders"}

    @event("Created")
    def __init__(self, org_id: Any, kind: str, fields: dict[str, Any], placeholders: list[str],
                 created_by: Any) -> None:
        self.org_id = org_id
        self.kind = kind
        for f in TEMPLATE_FIELDS:
            setattr(self, f, fields.get(f))
        self.placeholders = placeholders
        self.created_by = created_by
        self.deleted = False

    @classmethod
    def create(cls, org_id: Any, kind: str, fields: dict[str, Any], created_by: Any,
               custom_keys: Mapping[str, Collection[str]] | None = None) -> Template:
        fields = _defaults(kind, fields)
        placeholders = check(kind, fields, custom_keys)
        return cls(org_id=org_id, kind=kind, fields=fields, placeholders=placeholders, created_by=created_by)

    def state(self) -> dict[str, Any]:
        return {f: getattr(self, f, None) for f in TEMPLATE_FIELDS}

    def change(self, changes: dict[str, Any], custom_keys: Mapping[str, Collection[str]] | None = None) -> None:
        """A partial update, checked as a whole (the kind's rules and every placeholder) before it is recorded."""
        if "entity" in changes and changes["entity"] != self.entity:
            raise DomainError("a template's entity cannot change; create a new template", field="entity")
        changes = {k: v for k, v in changes.items() if k != "entity"}
        merged = {**self.state(), **changes}
        placeholders = check(self.kind, merged, custom_keys)
        self.update({**changes, "placeholders": placeholders})


def _defaults(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if kind == "whatsapp" and not out.get("category"):
        out["category"] = "UTILITY"
    if kind == "task_checklist" and not out.get("entity"):
        out["entity"] = "task"
    return out
