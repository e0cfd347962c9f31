"""A projection turns events into rows of its own read tables; it never writes another projection's tables.

Handlers are declared with `@handles(EventClass, ...)`; the projection subscribes to exactly those topics.
Row contents come from events only (timestamps included), so a rebuild gives identical tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import CanInitAggregate
from eventsourcing.utils import get_topic


def handles(*event_classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__handles__ = event_classes  # type: ignore[attr-defined]
        return fn

    return mark


class Projection:
    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    resources: ClassVar[tuple[str, ...]] = ()
    """Whose data its tables hold (permission resources): reads of those answer `read_model_degraded` while one
    of an organization's events is parked here."""
    rebuildable: ClassVar[bool] = True
    """False for a consumer whose rows record side effects that must never happen again (the workflow trigger
    consumer: each row started a run). Rebuilding it would replay them, so a rebuild keeps its rows and position
    and says so; and it is not a read model, so writers do not wait for it (read-your-writes)."""
    restore_by_replay: ClassVar[bool | tuple[type, ...]] = True
    """How an entity brought back by the audit tools (`<Aggregate>.Reinstated`) reaches this read model: its rows
    are cleared with this projection's own `Deleted` handler and its events replayed up to the restored version
    (projections.projector.reinstate_entity). False for a read model whose rows are one per event (a history):
    a restore takes nothing back there and adds nothing, unless it handles `<Aggregate>.Reinstated` itself; a
    tuple of aggregate classes: only those have rows of their own here (the others' rows are history)."""
    _handlers: ClassVar[dict[type, str]]
    _topics: ClassVar[list[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        for attr, fn in vars(cls).items():
            for event_class in getattr(fn, "__handles__", ()):
                cls._handlers[event_class] = attr
        if cls.rebuildable and cls.restore_by_replay:  # a consumer with side effects never replays anything
            only = cls.restore_by_replay if isinstance(cls.restore_by_replay, tuple) else None
            for reinstated in _reinstated_events(cls._handlers):
                if only is None or aggregate_of(reinstated) in only:
                    cls._handlers.setdefault(reinstated, "_reinstate")
        cls._topics = [get_topic(c) for c in cls._handlers]

    @classmethod
    def topics(cls) -> list[str]:
        return cls._topics

    notification_id: int | None = None
    """The position of the event being applied (set by the projector): a handler that records it can join the
    event's cause (who did it) at query time."""

    def apply(self, cur: Any, event: Any, notification_id: int | None = None) -> None:
        self.notification_id = notification_id
        getattr(self, self._handlers[type(event)])(cur, event)

    reinstater: Callable[[Projection, Any, Any], None] | None = None
    """Set by the projector: replays an entity brought back (see `restore_by_replay`)."""

    def _reinstate(self, cur: Any, event: Any) -> None:
        if self.reinstater is None:
            raise RuntimeError("a restored entity is replayed by the projector (Projector.reinstate)")
        self.reinstater(self, cur, event)

    def clear(self, cur: Any) -> None:
        """Empty the read tables before a rebuild (children first)."""
        for table in reversed(self.tables):
            cur.execute(f"DELETE FROM {table}")  # noqa: S608 - table names are class constants


def aggregate_of(event_class: type) -> type | None:
    """The aggregate class an event class belongs to (`Deal.Created` -> `Deal`), or None."""
    owner_name = event_class.__qualname__.split(".")[0]
    owner = getattr(sys.modules.get(event_class.__module__), owner_name, None)
    return owner if isinstance(owner, type) else None


def _reinstated_events(handlers: Mapping[type, str]) -> list[type]:
    """`<Aggregate>.Reinstated` of every aggregate whose creation or deletion a projection handles: the rows it
    keeps for that aggregate (or removes with it, such as a client's notes) come back with a restore."""
    out: list[type] = []
    for event_class in handlers:
        owner = aggregate_of(event_class)
        reinstated = getattr(owner, "Reinstated", None)
        if reinstated is None or reinstated in out:
            continue
        if issubclass(event_class, CanInitAggregate) or event_class is getattr(owner, "Deleted", None):
            out.append(reinstated)
    return out


# -- the read side's shared statements ----------------------------------------------------------------------
def touch(cur: Any, table: str, event: Any, sets: str = "", params: tuple[Any, ...] = ()) -> None:
    """The event's row changed at the event's time; `sets` (SQL with positional parameters `params`) says what
    else changed. Row times come from events, so a rebuild writes the same rows."""
    cur.execute(f"UPDATE {table} SET {sets + ', ' if sets else ''}updated_at = %s WHERE id = %s",  # noqa: S608
                (*params, event.timestamp, event.originator_id))


def set_columns(cur: Any, table: str, event: Any, values: Mapping[str, Any], sets: str = "",
                params: tuple[Any, ...] = ()) -> None:
    """`touch` with columns given as a mapping (keys are column names the projection chose, never input)."""
    assignments = ", ".join([*(f"{column} = %s" for column in values), *([sets] if sets else [])])
    touch(cur, table, event, assignments, (*values.values(), *params))


def exists(conn: Any, table: str, org_id: UUID | None, row_id: UUID) -> bool:
    """Whether the organization's read model has the row (tables are class constants, never input)."""
    return conn.execute(f"SELECT 1 FROM {table} WHERE organization_id = %s AND id = %s",  # noqa: S608
                        (org_id, row_id)).fetchone() is not None
