"""The tool inventory against the catalogue (names, kinds -> annotations and permission) and a schema snapshot.

A changed tool shows up as a diff of tests/snapshots/tools.json; regenerate with UPDATE_SNAPSHOTS=1.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from application.inventory import registry

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "spec" / "tools.tsv"
SNAPSHOT = ROOT / "tests" / "snapshots" / "tools.json"


def catalogue() -> dict[str, str]:
    if not SPEC.exists():
        pytest.skip(f"tool catalogue not found at {SPEC}")
    with SPEC.open() as f:
        return {row["name"]: row["kind"] for row in csv.DictReader(f, delimiter="\t")}


def test_every_tool_is_in_the_catalogue_with_its_kind():
    spec = catalogue()
    for op in registry:
        assert op.name in spec, f"{op.name} is not in tools.tsv"
        assert op.kind == spec[op.name], f"{op.name}: kind {op.kind}, catalogue says {spec[op.name]}"


@pytest.mark.parametrize("op", list(registry), ids=lambda op: op.name)
def test_kind_decides_annotations_and_permission(op):
    hints = op.annotations()
    spec_defaults = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}
    read = {**spec_defaults, **hints}  # what a client following the spec understands
    expected = {"query": (True, False, "read"), "command": (False, False, "write"), "destructive": (False, True, "delete")}
    read_only, destructive, action = expected[op.kind]
    assert read["readOnlyHint"] == read_only and read["openWorldHint"] == op.open_world and "openWorldHint" in hints
    assert read_only or (hints["destructiveHint"] == destructive and not read["idempotentHint"])
    assert op.permission == ("none" if op.meta or op.free else f"{op.resource}:{action}")  # discovery: the called tool's
    assert len(op.description) > 20
    schema = op.input_schema()
    assert schema["type"] == "object" and "properties" in schema
    assert op.input.__struct_config__.forbid_unknown_fields  # published lean, enforced in full
    assert op.output_schema()["type"] == "object"
    if op.kind != "query" and not op.meta:  # every write tool accepts it; those that would add twice show it
        assert "idempotency_key" in op.input.__struct_fields__
        assert ("idempotency_key" in schema["properties"]) == op.repeat_adds


def snapshot() -> dict:
    return {
        op.name: {
            "kind": op.kind, "permission": op.permission, "toolset": op.toolset, "annotations": op.annotations(),
            "description": op.description, "inputSchema": op.input_schema(), "outputSchema": op.output_schema(),
        }
        for op in sorted(registry, key=lambda o: o.name)
    }


def test_schema_snapshot():
    current = json.loads(json.dumps(snapshot(), sort_keys=True))
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    assert sorted(recorded) == sorted(current), "tools added or removed: review and run with UPDATE_SNAPSHOTS=1"
    for name in current:
        assert recorded[name] == current[name], f"{name} changed: review the diff and run with UPDATE_SNAPSHOTS=1"
