"""Hostile arguments for EVERY tool, generated from its inputSchema (hypothesis): NUL bytes, lone surrogates,
100,000-character strings, huge and tiny numbers, infinities, extreme dates and time zones, long lists.

Given a world with one entity of every kind (ids are offered to every id argument, so calls reach the
handlers and projections, not only validation), when each tool is called with generated arguments, then no
call ends in `internal_error`, every projection is at the event store's head with nothing parked, and the
canary string inside the arguments never reaches a log line (tracebacks included).
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import date, datetime, timezone
from typing import Any

import anyio
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from application import identity
from application.inventory import registry
from application.errors import ToolError
from tests.conftest import settle
from tests.tool_args import SAMPLES, filler
from tests.world import seed

CANARY = "canary-q8z3vX"
EXAMPLES = int(os.environ.get("FLUSIA_HOSTILE_EXAMPLES", "25"))
CALLS: dict[str, int] = {"total": 0, "refused": 0, "succeeded": 0}
REFUSALS: dict[str, int] = {}
ORDER = {"query": 0, "command": 1, "destructive": 2}
OPS = sorted(registry, key=lambda op: (ORDER[op.kind], op.name))  # destroy the world last

HOSTILE_TEXT = [
    f"{CANARY}\x00nul", f"\ud800{CANARY}", f"{CANARY}\udfff", CANARY * (100_000 // len(CANARY) + 1), "", " ",
    f"'; DROP TABLE clients; -- {CANARY}", "%_\\", f"{CANARY} \u202e\u200b\ufeff 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0001f600",
    f"<script>{CANARY}</script>", "\n\t\r", "a" * 70_000,
]
HOSTILE_INTEGERS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 1e30, float("inf"), float("nan"), "12", True]
HOSTILE_NUMBERS = [1e999, -1e999, float("nan"), 1e30, 1e-300, -0.0, "1e999", "NaN", "Infinity", "1e-999",
                   "99999999999999999999", "0.0000001", "-5", "12.5", "1,5", "€4,800"]
HOSTILE_DATES = ["0001-01-01", "9999-12-31", "1899-12-31", "2201-01-01", "2026-02-30", "tomorrow", "27/11/2026",
                 "2026-11-27T10:00:00", date.today().isoformat()]
HOSTILE_TIMESTAMPS = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1900-01-01T00:00:00+14:00",
                      "2200-12-31T23:00:00-14:00", "2026-11-27T10:00:00", "2026-11-27T10:00:00+25:00",
                      datetime.now(timezone.utc).isoformat(), f"{CANARY}T10:00"]


def good(node: dict[str, Any], field: str, op: Any, ids: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the tool should accept: the world's entity for an id, a sample, or a filler of the right type."""
    for key in (f"{op.name}.{field}", f"{op.resource}.{field}", field):
        if key in ids:
            return st.just(ids[key])
    if field in SAMPLES:
        return st.just(SAMPLES[field])
    return st.just(filler(node.get("anyOf", [node])))


def strategy(node: dict[str, Any], field: str, op: Any, ids: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A hostile value for one argument, of its type and beyond it."""
    options: list[st.SearchStrategy[Any]] = []
    if "anyOf" in node:
        return st.one_of(*options, *(strategy(v, field, op, ids) for v in node["anyOf"]))
    if "enum" in node:
        return st.one_of(*options, st.sampled_from(node["enum"]), st.sampled_from([f"won{CANARY}", "", None]))
    kind, fmt = node.get("type"), node.get("format")
    if isinstance(kind, list):  # ["string", "null"], or a decimal's ["string", "number"]
        if "number" in kind and "string" in kind:
            fmt = "decimal"
        kind = next(k for k in kind if k != "null")
    if kind == "string":
        if fmt == "uuid":
            options += [st.uuids().map(str), st.sampled_from([f"{CANARY}-not-a-uuid", str(uuid.UUID(int=0))])]
        elif fmt == "date":
            options.append(st.sampled_from(HOSTILE_DATES))
        elif fmt == "date-time":
            options.append(st.sampled_from(HOSTILE_TIMESTAMPS))
        elif fmt == "decimal":
            options.append(st.sampled_from(HOSTILE_NUMBERS))
        options += [st.sampled_from(HOSTILE_TEXT), st.text(max_size=30).map(lambda t: CANARY + t)]
    elif kind == "integer":
        options += [st.sampled_from(HOSTILE_INTEGERS), st.integers()]
    elif kind == "number":
        options += [st.sampled_from(HOSTILE_NUMBERS), st.floats()]
    elif kind == "boolean":
        options += [st.booleans(), st.just("yes")]
    elif kind == "array":
        item = strategy(node.get("items", {}), field, op, ids)
        options += [st.lists(item, max_size=4), st.lists(st.just(CANARY), min_size=200, max_size=200)]
    elif kind == "object" and "properties" in node:
        options.append(arguments(node, op, ids))
    elif kind == "null":
        options.append(st.none())
    return st.one_of(*options) if options else st.just(CANARY)


def arguments(schema: dict[str, Any], op: Any, ids: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Good values everywhere but one or two arguments, which get hostile ones: the call gets past the other
    arguments' validation, so hostile values reach handlers, events and projections."""
    props = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        hostile = set(draw(st.lists(st.sampled_from(sorted(props)), max_size=2))) if props else set()
        out = {}
        for f, p in props.items():
            if f in hostile:
                out[f] = draw(strategy(p, f, op, ids))
            elif f in required or draw(st.booleans()):
                out[f] = draw(good(p, f, op, ids))
        return out

    return build()


class Captured(logging.Handler):
    """Every log record of the run, formatted as the server would write it (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def hostile_world(admin_url):
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from interfaces.runtime import Runtime

    name = f"flusia_hostile_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    migrate(url)
    rt = Runtime(url, pool_size=6, consistency="settle")
    captured = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(captured)
    root.setLevel(logging.INFO)
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            created = identity.create_organization(conn, "Hostile", "admin@hostile.example", "Admin")
            principal = identity.principal_for_token(conn, created.token)
        ids = seed(rt, principal)
        yield {"rt": rt, "url": url, "principal": principal, "ids": ids, "logs": captured}
    finally:
        root.removeHandler(captured)
        root.setLevel(level)
        rt.close()
        drop_database(admin_url, name)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_arguments_never_cause_an_internal_error(hostile_world, op, data):
    args = data.draw(arguments(op.input_schema(), op, hostile_world["ids"]), label="arguments")
    CALLS["total"] += 1
    try:
        anyio.run(hostile_world["rt"].runner.call, hostile_world["principal"], op.name, args)
        CALLS["succeeded"] += 1
    except ToolError as e:
        CALLS["refused"] += 1
        REFUSALS[e.code] = REFUSALS.get(e.code, 0) + 1
        assert e.code not in {"internal_error", "read_model_degraded", "read_model_behind"}, (op.name, e.code, e.message)


def test_after_the_hostile_run_every_projection_is_at_the_head_and_nothing_leaked_into_logs(hostile_world):
    rt = hostile_world["rt"]
    settle(rt)
    with psycopg.connect(hostile_world["url"], row_factory=dict_row) as conn:
        head = conn.execute("SELECT coalesce(max(notification_id), 0) AS head FROM stored_events").fetchone()["head"]
        positions = {r["name"]: r["position"] for r in conn.execute("SELECT name, position FROM projection_tracking")}
        parked = rt.projector.parked(conn)
    print(f"hostile calls: {CALLS['total']} ({CALLS['succeeded']} succeeded, {CALLS['refused']} refused), "
          f"events appended: {head}; refusals by code: {dict(sorted(REFUSALS.items(), key=lambda kv: -kv[1]))}")
    assert CALLS["total"] >= len(OPS) * min(EXAMPLES, 5)
    assert parked == []
    assert positions and all(pos == head for pos in positions.values()), (head, positions)
    logs = "\n".join(hostile_world["logs"].lines)
    assert "tool_call org=" in logs
    assert CANARY not in logs, [line for line in hostile_world["logs"].lines if CANARY in line][:3]
