"""Keyset pagination shared by every list: an opaque cursor holds the last row's sort key and id."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from domain.errors import DomainError


@dataclass(frozen=True)
class Sort:
    expr: str          # SQL expression, never user input; never NULL nor infinite (a cursor holds its value)
    cast: str          # SQL type of the expression, for comparing with the cursor value: one of CURSOR_VALUES
    descending: bool = False
    row_id: str = "id"  # the unique id breaking ties; qualified (u.id) when the FROM joins tables with an id too


NEWEST = Sort("created_at", "timestamptz", descending=True)
OLDEST = Sort("created_at", "timestamptz")
RECENTLY_UPDATED = Sort("updated_at", "timestamptz", descending=True)
BY_CREATION = {"created_desc": NEWEST, "created_asc": OLDEST}
"""The sorts most lists offer, by name as the tools' `sort` arguments spell them."""


def by_name(expr: str) -> dict[str, Sort]:
    """`name_asc` / `name_desc` over a text expression, ignoring case."""
    return {"name_asc": Sort(f"lower({expr})", "text"), "name_desc": Sort(f"lower({expr})", "text", descending=True)}


def by_date(prefix: str, column: str) -> dict[str, Sort]:
    """`<prefix>_asc` / `<prefix>_desc` over a nullable date: rows without one come last either way (a cursor
    needs a finite value, so missing dates sort as the far future or the far past)."""
    return {f"{prefix}_asc": Sort(f"coalesce({column}, '9999-12-31'::date)", "date"),
            f"{prefix}_desc": Sort(f"coalesce({column}, '0001-01-01'::date)", "date", descending=True)}


INVALID_CURSOR = "cursor is not valid; pass next_cursor from the previous page unchanged"
BIGINT = 2**63


def _text(value: Any) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError
    value.encode()  # no lone surrogates
    return value


def _timestamptz(value: Any) -> datetime:
    parsed = datetime.fromisoformat(_text(value))
    if parsed.tzinfo is None:
        raise ValueError
    return parsed


def _int_in(bound: int) -> Any:
    def check(value: Any) -> int:
        if type(value) is not int or not -bound <= value < bound:
            raise ValueError
        return value

    return check


# How a cursor's sort value is checked and turned into the value compared in SQL, per Sort.cast.
CURSOR_VALUES = {
    "text": _text,
    "timestamptz": _timestamptz,
    "date": lambda value: date.fromisoformat(_text(value)),
    "bigint": _int_in(BIGINT),
    "integer": _int_in(2**31),
}


def _encode(value: Any, row_id: Any) -> str:
    raw = json.dumps([value.isoformat() if hasattr(value, "isoformat") else value, str(row_id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, sort: Sort) -> tuple[Any, UUID]:
    """The cursor's (sort value, row id), checked to be exactly what `_encode` writes for this sort before any SQL
    sees it: a tampered or foreign cursor is the caller's error, never a database error."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise ValueError
        value, row_id = decoded
        return CURSOR_VALUES[sort.cast](value), UUID(_text(row_id))
    except (ValueError, TypeError, UnicodeError, binascii.Error, RecursionError):
        raise DomainError(INVALID_CURSOR, field="cursor") from None


def paginate(
    conn: Any, select: str, from_where: str, params: list[Any], sort: Sort, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `SELECT {select} {from_where}` one page at a time, ordered by `sort` then the row id."""
    direction = "DESC" if sort.descending else "ASC"
    where = from_where
    args = list(params)
    if cursor:
        value, row_id = _decode(cursor, sort)
        cmp = "<" if sort.descending else ">"
        where += f" AND ({sort.expr}, {sort.row_id}) {cmp} (%s::{sort.cast}, %s::uuid)"
        args += [value, row_id]
    sql = (f"SELECT {select}, {sort.expr} AS _sort_key, {sort.row_id} AS _row_id {where}"
           f" ORDER BY {sort.expr} {direction}, {sort.row_id} {direction} LIMIT %s")
    rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode(rows[-1]["_sort_key"], rows[-1]["_row_id"]) if more and rows else None
    for r in rows:
        r.pop("_sort_key", None)
        r.pop("_row_id", None)
    return rows, next_cursor
