"""Arguments for any tool, built from its inputSchema: tests that call every tool of the registry share this.

`ids` maps an argument name to the value to pass (an entity id, a list of ids); a `"<resource>.<name>"` key
wins for that resource's tools, because the same name means different things (a wiki category_id is not a
services category_id), and a `"<tool>.<name>"` key wins for that one tool. Required arguments always get a value; optional ones only when `ids` has one, so a
call points at the entities a test prepared.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

SAMPLES: dict[str, Any] = {
    "email": "x@example.com", "phone": "+39 02 1234", "media_url": "https://example.com/a.mp3",
    "website": "https://example.com", "tag": "vip", "body": "text", "q": "Segreto", "business_name": "Rubato",
    "name": "Nome", "title": "Titolo", "duration_seconds": 10, "text": "testo", "mime_type": "application/pdf",
    "unit_price": "100", "revision": 1, "stages": [{"name": "Uno", "probability": 10}],
    "start_date": (date.today() - timedelta(days=400)).isoformat(), "end_date": (date.today() + timedelta(days=30)).isoformat(),
    "addresses": ["x@example.com"], "consent_source": "form", "target_url": "https://example.com/t",
    "domain": "example.org", "value": "spam.example", "subscribers": [{"email": "y@example.com"}], "subject": "Oggetto",
    "from_name": "Negozio", "from_email": "news@example.com",
    "scheduled_at": (datetime.now(timezone.utc) + timedelta(days=3)).isoformat(),
    "settings.role": "viewer", "settings.permissions": {"settings": ["read"]}, "settings.key": "sample_key",
    "settings.label": "Etichetta",
}


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return prop.get("anyOf", [prop])


def filler(variants: list[dict[str, Any]]) -> Any:
    """A valid-looking value for an argument nothing more specific is known about."""
    if any("enum" in v for v in variants):
        return next(v["enum"][0] for v in variants if "enum" in v)
    formats = {v.get("format") for v in variants}
    types = {t for v in variants for t in (v.get("type") if isinstance(v.get("type"), list) else [v.get("type")])}
    if "uuid" in formats:
        return str(uuid.uuid4())
    if "date" in formats:
        return date.today().isoformat()
    if "date-time" in formats:
        return datetime.now(timezone.utc).isoformat()
    if "decimal" in formats or {"string", "number"} <= types:
        return "10"
    if "integer" in types:
        return 1
    if "boolean" in types:
        return False
    return "x"


def sample_args(op: Any, ids: dict[str, Any], samples: dict[str, Any] | None = None) -> dict[str, Any]:
    """Arguments for `op`: every argument `ids` names, and the required ones from `samples` or a filler."""
    samples = SAMPLES if samples is None else samples
    schema = op.input_schema()
    required = set(schema.get("required", []))
    args: dict[str, Any] = {}
    for field, prop in schema["properties"].items():
        known = _lookup(op, field, ids)
        if known is not _MISSING:
            args[field] = known
        elif field in required:
            sample = _lookup(op, field, samples)
            args[field] = filler(_variants(prop)) if sample is _MISSING else sample
    return args


_MISSING = object()


def _lookup(op: Any, field: str, source: dict[str, Any]) -> Any:
    for key in (f"{op.name}.{field}", f"{op.resource}.{field}", field):
        if key in source:
            return source[key]
    return _MISSING
