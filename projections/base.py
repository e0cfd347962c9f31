"""A projection turns events into rows of its own read tables; it never writes another projection's tables.

Handlers are declared with `@handles(EventClass, ...)`; the projection subscribes to exactly those topics.
Row contents come from events only (timestamps included), so a rebuild gives identical tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

import re
from datetime import datetime
from enum import Enum

import msgspec
from eventsourcing.domain import CanInitAggregate
from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb


def local_date(timestamp: str, organization: str = "organization_id") -> str:
    """SQL for the calendar day of a timestamp column in its organization's time zone: what lists show (a model
    converting UTC timestamps itself misdates everything done late in the evening)."""
    return f"({timestamp} AT TIME ZONE (SELECT o.timezone FROM organizations o WHERE o.id = {organization}))::date"


def handles(*event_classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__handles__ = event_classes  # type: ignore[attr-defined]
        return fn

    return mark


def handles_many(*event_classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A set-based handler: `fn(cur, items)` applies a list of (event, notification id) of these classes, at most
    one per aggregate, with the same resulting rows as applying them one by one with the `@handles` handler in any
    order. So it may only write rows of the events' own aggregates, and shared rows only by commutative writes
    (inserts that skip existing rows). The class must still have a `@handles` handler (the careful path, restores)."""
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__handles_many__ = event_classes  # type: ignore[attr-defined]
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
    _many: ClassVar[dict[type, str]]
    _topics: ClassVar[list[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        cls._many = {}
        for attr, fn in vars(cls).items():
            for event_class in getattr(fn, "__handles__", ()):
                cls._handlers[event_class] = attr
            for event_class in getattr(fn, "__handles_many__", ()):
                cls._many[event_class] = attr
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

    def apply_batch(self, cur: Any, items: Sequence[tuple[Any, int | None]]) -> None:
        """Apply events in order, with the same rows as `apply` one by one. Events with a set-based handler
        (`@handles_many`) are gathered between the others: a run of them is applied in waves (each aggregate's first
        event of the run, then its second, ...), each wave one statement per event class. Events of different
        aggregates commute there (see `handles_many`); every other event is applied alone, in its place."""
        if self.gather_inserts:
            cur = GatheredInserts(cur)
            try:
                self._apply_batch(cur, items)
            finally:
                cur.flush()
            return
        self._apply_batch(cur, items)

    gather_inserts: ClassVar[bool] = True
    """Whether `apply_batch` gathers plain inserts (see GatheredInserts)."""

    def _apply_batch(self, cur: Any, items: Sequence[tuple[Any, int | None]]) -> None:
        run: list[tuple[Any, int | None]] = []
        for item in items:
            if type(item[0]) in self._many:
                run.append(item)
                continue
            self._apply_run(cur, run)
            run = []
            self.apply(cur, item[0], item[1])
        self._apply_run(cur, run)

    def _apply_run(self, cur: Any, run: list[tuple[Any, int | None]]) -> None:
        if len(run) == 1:
            self.apply(cur, run[0][0], run[0][1])
            return
        waves: list[dict[type, list[tuple[Any, int | None]]]] = []
        depth: dict[Any, int] = {}
        for item in run:
            k = depth.get(item[0].originator_id, 0)
            depth[item[0].originator_id] = k + 1
            if k == len(waves):
                waves.append({})
            waves[k].setdefault(type(item[0]), []).append(item)
        for wave in waves:
            for event_class, group in wave.items():
                self.notification_id = group[-1][1]
                if len(group) == 1:
                    self.apply(cur, group[0][0], group[0][1])
                else:
                    getattr(self, self._many[event_class])(cur, group)

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


# -- set-based writes (`handles_many`) -----------------------------------------------------------------------------
def rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows for `jsonb_populate_recordset(null::<table>, %s::jsonb)`: each value read back as its column's type
    (ids, times with their microseconds, decimals as text, jsonb values as they are)."""
    return msgspec.json.encode(rows).decode()


def set_columns_many(cur: Any, table: str, rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """`set_columns` for many events of distinct rows: (event, {column: value}) each; one UPDATE per set of columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for event, values in rows:
        groups.setdefault(tuple(values), []).append(
            {**values, "id": event.originator_id, "updated_at": event.timestamp})
    for columns, group in groups.items():
        sets = ", ".join(f"{c} = r.{c}" for c in (*columns, "updated_at"))
        cur.execute(f"UPDATE {table} t SET {sets} FROM jsonb_populate_recordset(null::{table}, %s::jsonb) r"  # noqa: S608
                    " WHERE t.id = r.id", (rows_json(group),))


PLAIN_INSERT = re.compile(r"^\s*INSERT INTO (\w+) \(([\w\s,]+)\)\s+VALUES \(((?:%s\s*,\s*)*%s)\)"
                          r"(\s+ON CONFLICT \(\w+\) DO UPDATE SET [\w\s,.=]+)?\s*$", re.I)
"""A plain insert, or one that makes its row again as given when the key exists (timeline entries replayed)."""
_column_types: dict[str, dict[str, str]] = {}


class GatheredInserts:
    """A cursor for `apply_batch`: consecutive executions of one plain `INSERT INTO t (columns) VALUES (%s, ...)`
    (positional parameters only, no RETURNING; an `ON CONFLICT (key) DO UPDATE SET col = EXCLUDED.col` suffix is
    kept) are sent as one multi-row insert when another
    statement comes (or at the end), so every statement still sees the rows inserted before it. Values a JSON row
    might not give back exactly as psycopg would send them (bytes, floats, enums, tuples, anything but a Jsonb for a
    json column, a datetime for a column other than timestamptz) make that insert go alone, in its place. A failing
    row fails the batch, which the projector then applies event by event (parking what fails)."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur
        self.connection = cur.connection
        self._sql: str | None = None
        self._table = ""
        self._conflict = ""
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._params: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if isinstance(query, str) and isinstance(params, (tuple, list)) and not kwargs:
            if query == self._sql:
                row = self._row(params)
                if row is not None:
                    self._rows.append(row)
                    return self
            else:
                match = PLAIN_INSERT.match(query)
                if match and len(params) == match.group(3).count("%s"):
                    self.flush()
                    self._sql, self._table, self._conflict = query, match.group(1), match.group(4) or ""
                    self._columns = [c.strip() for c in match.group(2).split(",")]
                    row = self._row(params) if len(self._columns) == len(params) else None
                    if row is not None:
                        self._rows.append(row)
                        return self
                    self._sql = None
                    self._params = []
        self.flush()
        return self.cur.execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        self.flush()
        return self.cur.executemany(query, params_seq, **kwargs)

    def _row(self, params: Sequence[Any]) -> dict[str, Any] | None:
        types = self._types()
        row = {}
        for column, value in zip(self._columns, params):
            kind = types.get(column)
            if isinstance(value, Jsonb) and kind == "jsonb":
                value = value.obj
            elif value is not None and (isinstance(value, (bytes, bytearray, memoryview, float, Jsonb, tuple, Enum))
                                        or kind in ("json", "jsonb", "bytea")
                                        or (isinstance(value, datetime) and kind != "timestamptz")):
                return None
            row[column] = value
        self._params.append(params)
        return row

    def _types(self) -> dict[str, str]:
        types = _column_types.get(self._table)
        if types is None:
            rows = self.cur.connection.cursor(row_factory=tuple_row).execute(
                "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0", (self._table,)).fetchall()
            types = _column_types[self._table] = dict(rows)
        return types

    def flush(self) -> None:
        rows, self._rows, sql, self._sql = self._rows, [], self._sql, None
        if not rows or sql is None:
            return
        params, self._params = self._params, []
        if len(rows) == 1:
            self.cur.execute(sql, params[0])
            return
        columns = ", ".join(self._columns)
        self.cur.execute(f"INSERT INTO {self._table} ({columns}) SELECT {columns}"  # noqa: S608 - the handler's names
                         f" FROM jsonb_populate_recordset(null::{self._table}, %s::jsonb){self._conflict}",
                         (rows_json(rows),))
