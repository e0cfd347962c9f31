"""What the CRM can store, declared once: text, numbers, money and dates every read model can hold.

Every tool input is checked against these bounds before anything is recorded (application/values.py), and
the domain checks what it computes from inputs (a line total, a deal value) against the same bounds. An
event that passed them can always be projected: PostgreSQL text cannot hold NUL, bigint ends at 2^63 - 1,
and dates far outside human business (year 1, year 9999 with an offset) break date arithmetic.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from decimal import Decimal

from domain.errors import DomainError

MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(2200, 12, 31)
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
MAX_MINOR_UNITS = 10**13
"""Largest amount in minor units (cents): 100 billion in the currency, far below bigint even when summed."""
MAX_AMOUNT = Decimal(MAX_MINOR_UNITS) / 100
MAX_DECIMAL = Decimal(10**12)
"""Largest quantity, percentage or other plain decimal a tool accepts (each field may narrow it)."""
MAX_DECIMAL_PLACES = 6
MAX_FLOAT = 1e15
MAX_TEXT = 4 * 1024 * 1024
"""Characters in any text without a narrower limit of its own (a request body is at most 4 MiB anyway)."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why PostgreSQL (or UTF-8) cannot keep this text, or None."""
    if len(text) > MAX_TEXT:
        return f"text is longer than {MAX_TEXT:,} characters"
    if "\x00" in text or (not text.isascii() and _UNSTORABLE.search(text)):
        return "text must not contain NUL (\\u0000) characters or unpaired surrogates"
    return None


def date_problem(value: date) -> str | None:
    """Dates and timestamps between MIN_DATE and MAX_DATE, timestamps both as written and in UTC."""
    day = value.date() if isinstance(value, datetime) else value
    in_range = MIN_DATE <= day <= MAX_DATE
    if in_range and isinstance(value, datetime) and value.tzinfo is not None:
        in_range = MIN_DATE <= value.astimezone(timezone.utc).date() <= MAX_DATE
    if in_range:
        return None
    kind = "timestamps" if isinstance(value, datetime) else "dates"
    return f"{kind} must be between {MIN_DATE.isoformat()} and {MAX_DATE.isoformat()}"


def int_problem(value: int) -> str | None:
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        return f"integers must be between {BIGINT_MIN} and {BIGINT_MAX}"
    return None


def decimal_problem(value: Decimal, *, low: Decimal, high: Decimal) -> str | None:
    if not value.is_finite() or not low <= value <= high:
        return f"must be a number between {low} and {high}"
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        return f"at most {MAX_DECIMAL_PLACES} decimal places"
    return None


def float_problem(value: float) -> str | None:
    if not -MAX_FLOAT <= value <= MAX_FLOAT:  # also false for nan and infinities
        return f"must be a finite number between {-MAX_FLOAT:g} and {MAX_FLOAT:g}"
    return None


def check_minor_units(cents: int, *, field: str) -> int:
    """An amount computed by the domain (line total, deal value) must stay storable and summable."""
    if not 0 <= cents <= MAX_MINOR_UNITS:
        raise DomainError(f"the amount would be {'negative' if cents < 0 else 'larger than the maximum'}"
                          f" (allowed 0 to {MAX_AMOUNT:,.2f})", field=field)
    return cents


