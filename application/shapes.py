"""Shapes shared by many tools: base inputs, pagination, ids, deletions. Written once, reused by resources."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct


class Query(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of read-tool inputs."""


class Command(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of write-tool inputs: every write tool takes an optional idempotency key."""

    idempotency_key: Annotated[str, Meta(
            min_length=1,
            max_length=200,
            description="Optional. Repeat a call with the same key to get the first result back without doing it twice.",
        )] | None = None


Limit = Annotated[int, Meta(ge=1, le=100, description="Page size, 1-100 (default 25).")]
CursorArg = Annotated[str, Meta(max_length=500, description="Opaque cursor from a previous page's next_cursor; omit for the first page.")] | None
ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
Tag = Annotated[str, Meta(min_length=1, max_length=60, pattern=r"^\S(.*\S)?$", description="A tag, 1-60 characters.")]
Email = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", description="An e-mail address.")]
Phone = Annotated[str, Meta(max_length=40, pattern=r"^\+?[0-9 ().\-/]{3,40}$", description="A phone number.")]
NoteBody = Annotated[str, Meta(min_length=1, max_length=20000, description="The note text (markdown allowed).")]
SearchText = Annotated[str, Meta(min_length=1, max_length=200, description="What to look for.")]

T = TypeVar("T")


def sent(struct: Struct, names: Iterable[str]) -> dict[str, Any]:
    """The fields among `names` that the caller sent (UNSET means 'leave as is'): what a partial update changes.
    Nested Structs (an address) become plain dicts, as events store them; other values stay as typed (dates,
    ids), as the aggregates compare them."""
    out = {}
    for name in names:
        value = getattr(struct, name, UNSET)
        if value is not UNSET:
            out[name] = msgspec.to_builtins(value) if isinstance(value, Struct) else value
    return out


class Page(Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class ListQuery(Query):
    limit: Limit = 25
    cursor: CursorArg = None


class Removed(Struct):
    """What a destructive tool returns: which entity went away."""

    id: UUID
    entity: str
    removed: bool = True
