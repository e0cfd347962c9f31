"""A cursor is ~40 characters of packed bytes with a checksum; what it holds is checked per sort type before SQL
sees it, so a crafted cursor (the checksum is no secret) is still only ever the clear cursor error."""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import uuid4

import pytest

from domain.errors import DomainError
from projections.pagination import INVALID_CURSOR, Sort, _decode, _encode, seal

ROW = uuid4()
ROUND_TRIPS = [
    ("timestamptz", datetime(2026, 11, 27, 23, 59, 59, 999999, tzinfo=UTC)),
    ("timestamptz", datetime(1, 1, 1, tzinfo=UTC)),
    ("date", date(9999, 12, 31)),
    ("date", date(1, 1, 1)),
    ("bigint", -(2**63)),
    ("bigint", 2**63 - 1),
    ("integer", 7),
    ("text", "caffè ☕ 'quoted'"),
    ("text", ""),
]


@pytest.mark.parametrize(("cast", "value"), ROUND_TRIPS)
def test_a_cursor_gives_back_its_value_and_row(cast, value):
    cursor = _encode(value, ROW, Sort("x", cast))
    assert _decode(cursor, Sort("x", cast)) == (value, ROW)
    assert len(cursor) <= 48 or cast == "text"


def test_a_timestamp_cursor_is_short():
    assert len(_encode(datetime.now(UTC), ROW, Sort("created_at", "timestamptz"))) == 38


BAD = {
    "timestamptz": [b"\x7f" + b"\xff" * 7, b"\x80" + b"\x00" * 7, b"\x00" * 4, b"\x00" * 9],
    "date": [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00" * 8],
    "bigint": [b"", b"\x00" * 4, b"\x00" * 9],
    "integer": [b"", b"\x00" * 8, b"\x00" * 3],
    "text": [b"a\x00b", b"\xff", b"\xed\xa0\x80", b"\xc0\x80"],
}


@pytest.mark.parametrize(("cast", "value"), [(c, v) for c, values in BAD.items() for v in values])
def test_a_sealed_cursor_with_a_value_its_type_never_holds_is_refused(cast, value):
    with pytest.raises(DomainError) as e:
        _decode(seal(ROW.bytes + value), Sort("x", cast))
    assert (e.value.field, str(e.value)) == ("cursor", INVALID_CURSOR)


def test_a_changed_byte_anywhere_is_refused():
    cursor = _encode(date(2026, 11, 27), ROW, Sort("x", "date"))
    for i in range(len(cursor)):
        changed = cursor[:i] + ("B" if cursor[i] != "B" else "C") + cursor[i + 1:]
        with pytest.raises(DomainError):
            _decode(changed, Sort("x", "date"))
