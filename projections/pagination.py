"""Keyset pagination shared by every list: an opaque cursor holds the last row's sort key and id."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError


@dataclass(frozen=True)
class Sort:
    expr: str          # SQL expression, never user input
    cast: str          # SQL type of the expression, for comparing with the cursor value
    descending: bool = False


def _encode(value: Any, row_id: Any) -> str:
    raw = json.dumps([value.isoformat() if hasattr(value, "isoformat") else value, str(row_id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[Any, str]:
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return value, str(row_id)
    except Exception:
        raise DomainError("cursor is not valid; pass next_cursor from the previous page unchanged", field="cursor") from None


def paginate(
    conn: Any, select: str, from_where: str, params: list[Any], sort: Sort, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `SELECT {select} {from_where}` one page at a time, ordered by `sort` then id."""
    direction = "DESC" if sort.descending else "ASC"
    where = from_where
    args = list(params)
    if cursor:
        value, row_id = _decode(cursor)
        cmp = "<" if sort.descending else ">"
        where += f" AND ({sort.expr}, id) {cmp} (%s::{sort.cast}, %s::uuid)"
        args += [value, row_id]
    sql = f"SELECT {select}, {sort.expr} AS _sort_key {where} ORDER BY {sort.expr} {direction}, id {direction} LIMIT %s"
    try:
        rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    except Exception as e:  # a cursor whose value does not cast (tampered) is the caller's error
        if cursor and e.__class__.__name__ in {"InvalidTextRepresentation", "InvalidDatetimeFormat", "DatetimeFieldOverflow"}:
            conn.rollback()
            raise DomainError("cursor is not valid; pass next_cursor from the previous page unchanged", field="cursor") from None
        raise
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode(rows[-1]["_sort_key"], rows[-1]["id"]) if more and rows else None
    for r in rows:
        r.pop("_sort_key", None)
    return rows, next_cursor
