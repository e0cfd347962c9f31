"""Shapes shared by many tools: base inputs, pagination, ids, deletions. Written once, reused by resources."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct


class Query(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of read-tool inputs."""


class Command(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of write-tool inputs: every write tool takes an optional idempotency key."""

    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """Optional: a retried call with the same key returns the first result and does nothing twice (explained once
    in the server's instructions rather than in every write tool's schema)."""


Limit = Annotated[int, Meta(ge=1, le=100)]
CursorArg = Annotated[str, Meta(max_length=500)] | None
"""The previous page's next_cursor (the name says it; 16 tools would repeat the sentence)."""
ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
Tag = Annotated[str, Meta(min_length=1, max_length=60, pattern=r"^\S(.*\S)?$")]
Email = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Phone = Annotated[str, Meta(max_length=40, pattern=r"^\+?[0-9 ().\-/]{3,40}$")]
NoteBody = Annotated[str, Meta(min_length=1, max_length=20000)]
SearchText = Annotated[str, Meta(min_length=1, max_length=200)]

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


class Page(Struct, Generic[T], kw_only=True, omit_defaults=True):
    items: list[T]
    next_cursor: str | None = None


class Matches(Struct, kw_only=True, omit_defaults=True):
    """Base of search results: `match` is 'any' when nothing matched every word of the query and the items
    match some of them, most matching first (absent means every word matched)."""

    match: Literal["all", "any"] = "all"


class ListQuery(Query):
    limit: Limit = 25
    cursor: CursorArg = None


class Removed(Struct, kw_only=True):
    """What a destructive tool returns: which entity went away (`removed` is always there, and true)."""

    id: UUID
    entity: str
    removed: bool = True


FOREIGN_LABELS = {"client_name": "clients", "deal_title": "deals", "project_name": "projects",
                  "pipeline_name": "pipelines", "stage_name": "pipelines", "previous_stage_name": "pipelines"}
"""Names of other resources' entities shown beside their ids (a task's client_name). They appear only for a caller
who may read that resource; the id stays, so the caller knows a link exists (see `without_unreadable_labels`)."""


def without_unreadable_labels(result: Any, can_read: Callable[[str], bool]) -> Any:
    """The result with every FOREIGN_LABELS field the caller may not read left out (results are plain JSON)."""
    hidden = {key for key, resource in FOREIGN_LABELS.items() if not can_read(resource)}
    if not hidden:
        return result

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in hidden}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(result)