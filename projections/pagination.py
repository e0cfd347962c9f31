"""Keyset pagination shared by every list: an opaque cursor holds the last row's sort key and id."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHECK_BYTES = 4


def _text_bytes(raw: bytes) -> str:
    text = raw.decode()  # strict: no invalid UTF-8, no encoded lone surrogates
    if "\x00" in text:
        raise ValueError
    return text


def _signed(size: int) -> tuple[Callable[[Any], bytes], Callable[[bytes], int]]:
    def pack(value: Any) -> bytes:
        return int(value).to_bytes(size, "big", signed=True)

    def unpack(raw: bytes) -> int:
        if len(raw) != size:
            raise ValueError
        return int.from_bytes(raw, "big", signed=True)

    return pack, unpack


pack8, unpack8 = _signed(8)
pack4, unpack4 = _signed(4)


def pack_instant(value: datetime) -> bytes:
    return pack8((value - EPOCH) // timedelta(microseconds=1))


def unpack_instant(raw: bytes) -> datetime:
    return EPOCH + timedelta(microseconds=unpack8(raw))


# How a cursor's sort value is written as bytes and read back (checked) into the value compared in SQL, per Sort.cast.
CURSOR_VALUES: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "text": (lambda value: value.encode(), _text_bytes),
    "timestamptz": (pack_instant, unpack_instant),
    "date": (lambda value: pack4(value.toordinal()), lambda raw: date.fromordinal(unpack4(raw))),
    "bigint": (pack8, unpack8),
    "integer": (pack4, unpack4),
}


def _check(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=CHECK_BYTES, person=b"flusia-cursor").digest()


def seal(body: bytes) -> str:
    """A cursor's text: its bytes and a short checksum (so a cut or altered cursor is refused, not misread)."""
    return base64.urlsafe_b64encode(body + _check(body)).decode().rstrip("=")


def _encode(value: Any, row_id: Any, sort: Sort) -> str:
    """The row id's 16 bytes, then the sort value packed for its type: ~40 characters where JSON made ~120 (a
    cursor is in every page a model reads)."""
    return seal(UUID(str(row_id)).bytes + CURSOR_VALUES[sort.cast][0](value))


def unseal(cursor: str, read: Callable[[bytes], Any]) -> Any:
    """`read(bytes)` of a cursor `seal` wrote, with this exact spelling; a cut, altered or foreign cursor, or bytes
    `read` refuses (ValueError), is the caller's clear error, never anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        body, check = raw[:-CHECK_BYTES], raw[-CHECK_BYTES:]
        if len(raw) <= CHECK_BYTES or not hmac.compare_digest(check, _check(body)) or seal(body) != cursor:
            raise ValueError
        return read(body)
    except (ValueError, TypeError, UnicodeError, OverflowError, binascii.Error):
        raise DomainError(INVALID_CURSOR, field="cursor") from None


def _decode(cursor: str, sort: Sort) -> tuple[Any, UUID]:
    """The cursor's (sort value, row id), checked to be exactly what `_encode` writes for this sort before any SQL
    sees it."""

    def read(body: bytes) -> tuple[Any, UUID]:
        if len(body) < 16:
            raise ValueError
        return CURSOR_VALUES[sort.cast][1](body[16:]), UUID(bytes=body[:16])

    return unseal(cursor, read)


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
    next_cursor = _encode(rows[-1]["_sort_key"], rows[-1]["_row_id"], sort) if more and rows else None
    for r in rows:
        r.pop("_sort_key", None)
        r.pop("_row_id", None)
    return rows, next_cursor
