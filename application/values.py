"""The storable-values guard every tool input passes, after msgspec has validated it against its schema.

Schemas say what a field means; this says what the database can keep, for every field of every tool,
present and future, without each declaration repeating it: text without NUL or unpaired surrogates,
integers inside bigint, finite decimals inside their range (a field narrows it with
`Meta(extra={"range": (low, high)})`, see `decimal_range`), dates inside domain.values' range.
A refusal is an `invalid_arguments` error naming the field path and what is allowed.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import cache
from typing import Any

import msgspec
from msgspec import UNSET, Struct

from application.errors import InvalidArguments
from domain import values

DEFAULT_RANGE = (-values.MAX_DECIMAL, values.MAX_DECIMAL)


def decimal_range(low: Decimal | int | str, high: Decimal | int | str) -> dict[str, Any]:
    """`Meta(**decimal_range(0, 100))`: the bounds the guard enforces for a Decimal field (say them in its description)."""
    return {"extra": {"range": (Decimal(low), Decimal(high))}}


def _ranges_in(node: Any) -> tuple[Decimal, Decimal] | None:
    if isinstance(node, msgspec.inspect.Metadata) and node.extra and "range" in node.extra:
        return node.extra["range"]
    for child in (getattr(node, "type", None), getattr(node, "item_type", None), *getattr(node, "types", ())):
        if child is not None and (found := _ranges_in(child)) is not None:
            return found
    return None


@cache
def _field_ranges(struct_type: type[Struct]) -> dict[str, tuple[Decimal, Decimal]]:
    info = msgspec.inspect.type_info(struct_type)
    return {f.name: r for f in info.fields if (r := _ranges_in(f.type)) is not None}


def _refuse(path: str, problem: str) -> None:
    where = f"`{path}`" if path else "arguments"
    raise InvalidArguments(f"Invalid {where}: {problem}", field=path or None)


def check_text(value: Any, path: str = "") -> None:
    """Before decoding: every string of the raw arguments (keys too) must be storable text. msgspec would
    otherwise fail on an unpaired surrogate while encoding it, outside its own validation."""
    if isinstance(value, str):
        if (problem := values.text_problem(value)) is not None:
            _refuse(path, problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, path)
            check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text(item, f"{path}[{i}]")


def check_storable(value: Any, path: str = "", decimal_bounds: tuple[Decimal, Decimal] = DEFAULT_RANGE) -> None:
    """Raise InvalidArguments for the first value (depth first) the database could not store."""
    if value is None or value is UNSET or isinstance(value, bool):
        return
    if isinstance(value, str):
        if (problem := values.text_problem(value)) is not None:
            _refuse(path, problem)
    elif isinstance(value, int):
        if (problem := values.int_problem(value)) is not None:
            _refuse(path, problem)
    elif isinstance(value, float):
        if (problem := values.float_problem(value)) is not None:
            _refuse(path, problem)
    elif isinstance(value, Decimal):
        if (problem := values.decimal_problem(value, low=decimal_bounds[0], high=decimal_bounds[1])) is not None:
            _refuse(path, problem)
    elif isinstance(value, date):
        if (problem := values.date_problem(value)) is not None:
            _refuse(path, problem)
    elif isinstance(value, Struct):
        ranges = _field_ranges(type(value))
        for name in value.__struct_fields__:
            check_storable(getattr(value, name), f"{path}.{name}" if path else name, ranges.get(name, DEFAULT_RANGE))
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            check_storable(item, f"{path}[{i}]", decimal_bounds)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, path, decimal_bounds)
            check_storable(item, f"{path}.{key}" if path else str(key), decimal_bounds)

