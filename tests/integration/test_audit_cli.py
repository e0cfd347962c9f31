"""Operators' audit and replay commands: `flusia audit history|changes`, `flusia replay --to N --schema NAME` (every
read model as of an event, beside the live ones) and `flusia projections rebuild NAME --online` (built beside the live
read model, switched when caught up: reads during a rebuild of 100,000 events always answer complete data)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from tests.conftest import flusia
from tests.inprocess import Caller


@pytest.fixture
def setup(iso_runtime, fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        org = identity.create_organization(conn, "Operators", "op@example.com", "Olga Operator")
        admin = identity.principal_for_token(conn, org.token)
    return {"rt": iso_runtime, "url": fresh_database_url, "org": str(org.organization_id),
            "A": Caller(iso_runtime, admin), "env": {"DATABASE_URL": fresh_database_url}}


def head(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT max(notification_id) FROM stored_events").fetchone()[0]


def test_audit_history_and_changes(setup):
    A, env, org = setup["A"], setup["env"], setup["org"]
    start = dt.datetime.now(dt.UTC).isoformat()
    client = A("crm_clients_create_lead", {"business_name": "Console Srl"})
    deal = A("crm_deals_create", {"title": "Prima", "client_id": client["id"]})
    for i in range(120):  # more than a page
        A("crm_deals_update", {"deal_id": deal["id"], "title": f"Titolo {i}"})
    A("crm_deals_delete", {"deal_id": deal["id"]})
    history = flusia("audit", "history", "--org", org, "--entity", deal["id"], env=env)
    assert history["entity_type"] == "deal" and history["deleted"] is True and len(history["items"]) == 122
    assert history["items"][1]["changes"] == [{"field": "title", "before": "Prima", "after": "Titolo 0"}]
    assert history["items"][-1]["event"] == "Deleted" and history["items"][-1]["by"]["user_name"] == "Olga Operator"
    changes = flusia("audit", "changes", "--org", org, "--since", start, "--type", "deal", "--limit", "5", env=env)
    assert [c["event"] for c in changes["changes"]] == ["Deleted", "Updated", "Updated", "Updated", "Updated"]
    everything = flusia("audit", "changes", "--org", org, "--since", start[:10], env=env)["changes"]
    assert len(everything) >= 124 and everything[-1]["entity_type"] in ("client", "pipeline")
    bad = flusia_error("audit", "changes", "--org", org, "--since", "yesterday", env=env)
    assert "ISO 8601" in bad
    missing = flusia_error("audit", "history", "--org", org, "--entity", str(uuid.uuid4()), env=env)
    assert "not_found" in missing


def flusia_error(*args: str, env: dict[str, str]) -> str:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])["error"]


def test_replay_into_a_schema_as_of_an_event_leaves_the_live_read_models_alone(setup):
    A, env, url = setup["A"], setup["env"], setup["url"]
    client = A("crm_clients_create_lead", {"business_name": "Com'era"})
    deal = A("crm_deals_create", {"title": "Sparito", "client_id": client["id"]})
    A("crm_tasks_create", {"title": "Seguire", "deal_id": deal["id"]})
    then = head(url)
    A("crm_deals_delete", {"deal_id": deal["id"]})
    A("crm_clients_update", {"client_id": client["id"], "business_name": "Com'è"})
    with psycopg.connect(url) as conn:
        positions = conn.execute("SELECT name, position FROM projection_tracking ORDER BY name").fetchall()
    out = flusia("replay", "--to", str(then), "--schema", "investigation_1", env=env)["replayed"]
    assert out["schema"] == "investigation_1" and out["to"] == then and out["parked"] == []
    assert out["events_applied"]["deals"] >= 1 and out["events_applied"]["tasks"] >= 1 and "workflow_triggers" not in out["events_applied"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT title FROM investigation_1.deals WHERE id = %s", (deal["id"],)).fetchone() == ("Sparito",)
        assert conn.execute("SELECT business_name FROM investigation_1.clients WHERE id = %s",
                            (client["id"],)).fetchone() == ("Com'era",)
        assert conn.execute("SELECT count(*) FROM investigation_1.tasks").fetchone() == (1,)
        assert conn.execute("SELECT 1 FROM public.deals WHERE id = %s", (deal["id"],)).fetchone() is None
        assert conn.execute("SELECT business_name FROM public.clients WHERE id = %s", (client["id"],)).fetchone() == ("Com'è",)
        assert conn.execute("SELECT name, position FROM projection_tracking ORDER BY name").fetchall() == positions
    assert "exists" in flusia_error("replay", "--to", str(then), "--schema", "investigation_1", env=env)
    assert "schema name" in flusia_error("replay", "--to", str(then), "--schema", "public", env=env)


def table_shape(url: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """Index and constraint names and definitions of public tables: what an online rebuild must keep."""
    with psycopg.connect(url) as conn:
        indexes = conn.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                               " AND tablename = ANY(%s) ORDER BY 1, 2", (list(tables),)).fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2", (list(tables),)).fetchall()
    return {"indexes": indexes, "constraints": constraints}


def test_online_rebuild_keeps_rows_names_and_foreign_keys(setup):
    A, env, url = setup["A"], setup["env"], setup["url"]
    clients = [A("crm_clients_create_lead", {"business_name": f"Online {i}"}) for i in range(3)]
    A("crm_clients_add_contact", {"client_id": clients[0]["id"], "name": "Paola"})
    tables = setup["rt"].projection("clients").tables
    shape = table_shape(url, tables)
    with psycopg.connect(url) as conn:
        rows = {t: sorted(map(str, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    out = flusia("projections", "rebuild", "clients", "--online", env=env)["rebuilt"]["clients"]
    assert out["online"] is True and out["events_applied"] >= 4 and out["parked"] == []
    assert table_shape(url, tables) == shape
    with psycopg.connect(url) as conn:
        assert {t: sorted(map(str, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables} == rows
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'flusia_re%%'").fetchone() == (0,)
    A("crm_clients_delete", {"client_id": clients[0]["id"]})  # the contacts go with it: the foreign key is there
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM client_contacts WHERE client_id = %s",
                            (clients[0]["id"],)).fetchone() == (0,)
    assert flusia("projections", "rebuild", "workflow_triggers", "--online", env=env)["rebuilt"]["workflow_triggers"][
        "events_applied"] == 0  # not rebuildable: kept, as offline


def test_reads_during_an_online_rebuild_of_100000_events_always_answer_complete_data(setup):
    rt, A, url = setup["rt"], setup["A"], setup["url"]
    from domain.notes import Note

    client = A("crm_clients_create_lead", {"business_name": "Molte note"})
    org = uuid.UUID(setup["org"])
    total = 100_000
    for start in range(0, total, 1000):
        rt.store.save(*(Note(org_id=org, subject_type="client", subject_id=uuid.UUID(client["id"]), body=f"nota {i}",
                             author_id=None) for i in range(start, start + 1000)), organization_id=org)
    notes = rt.projection("notes")
    rt.settle()  # every read model, the timeline's entries for the notes too
    first_page = A("crm_clients_list_notes", {"client_id": client["id"], "limit": 5})["items"]

    done: dict[str, Any] = {}

    def rebuild() -> None:
        try:
            done["report"] = rt.projector.rebuild_online(notes)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            done["error"] = e

    thread = threading.Thread(target=rebuild)
    thread.start()
    reads, written = 0, None
    with psycopg.connect(url, autocommit=True) as conn:
        while thread.is_alive() or reads == 0:
            expected = total + (1 if written else 0)
            count = conn.execute("SELECT count(*) FROM notes WHERE subject_id = %s", (client["id"],)).fetchone()[0]
            assert count == expected, f"a read saw {count} of {expected} notes"
            page = A("crm_clients_list_notes", {"client_id": client["id"], "limit": 5})["items"]
            assert page == ([written] + first_page[:4] if written else first_page)
            reads += 1
            if reads == 3 and written is None:  # a write while the rebuild runs: read at once (read-your-writes)
                written = A("crm_clients_add_note", {"client_id": client["id"], "body": "durante la ricostruzione"})
            time.sleep(0.01)
    thread.join()
    assert "error" not in done, done.get("error")
    assert done["report"]["online"] is True and done["report"]["events_applied"] >= total + 1
    assert reads > 10, reads
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE subject_id = %s", (client["id"],)).fetchone()[0] == total + 1
    after = A("crm_clients_add_note", {"client_id": client["id"], "body": "dopo"})
    assert A("crm_clients_list_notes", {"client_id": client["id"], "limit": 1})["items"] == [after]
