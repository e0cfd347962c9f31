"""A projection turns events into rows of its own read tables; it never writes another projection's tables.

Handlers are declared with `@handles(EventClass, ...)`; the projection subscribes to exactly those topics.
Row contents come from events only (timestamps included), so a rebuild gives identical tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

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
    _handlers: ClassVar[dict[type, str]]
    _topics: ClassVar[list[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        for attr, fn in vars(cls).items():
            for event_class in getattr(fn, "__handles__", ()):
                cls._handlers[event_class] = attr
        cls._topics = [get_topic(c) for c in cls._handlers]

    @classmethod
    def topics(cls) -> list[str]:
        return cls._topics

    def apply(self, cur: Any, event: Any) -> None:
        getattr(self, self._handlers[type(event)])(cur, event)

    def clear(self, cur: Any) -> None:
        """Empty the read tables before a rebuild (children first)."""
        for table in reversed(self.tables):
            cur.execute(f"DELETE FROM {table}")  # noqa: S608 - table names are class constants
