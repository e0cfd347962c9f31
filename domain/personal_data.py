"""Which values are a person's personal data (GDPR), and how an erased value reads. Pure data, no I/O.

application/personal_data.py encrypts these values inside events with a key per subject (the lead/client they are
about) and destroys the key on erasure; the aggregates, read models, history and search then show `ERASED`.
Business identifiers (a lead/client's business name, VAT number, website, source) are not personal data of a
natural person and stay readable.
"""

from __future__ import annotations

from typing import Any

ERASED = "[erased]"
CLIENT_PERSONAL_FIELDS = ("contact_name", "tax_code", "email", "phone", "address")
"""A lead/client's own fields that describe the person (address: every part of it)."""
CONTACT_PERSONAL_FIELDS = ("name", "role", "email", "phone")
"""A contact person's fields."""


def erased(value: Any) -> Any:
    """`value` with every text in it replaced by ERASED; empty values stay empty (there was nothing to erase)."""
    if isinstance(value, str):
        return ERASED if value else value
    if isinstance(value, dict):
        return {k: erased(v) for k, v in value.items()}
    if isinstance(value, list):
        return [erased(v) for v in value]
    return value


def is_erased(value: Any) -> bool:
    """Whether `value` is an erased value (every text in it reads ERASED)."""
    if isinstance(value, str):
        return value == ERASED
    if isinstance(value, dict):
        return bool(value) and all(is_erased(v) or v is None for v in value.values())
    return False
