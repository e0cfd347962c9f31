"""The spine on real PostgreSQL: commands append events, the projector builds read tables exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from application.principal import Principal
from tests.conftest import settle

ROOT = Path(__file__).resolve().parents[2]
def read_tables() -> list[str]:
    from projections.inventory import all_projections

    return [t for p in all_projections() for t in p.tables]


def dump(url: str) -> dict[str, list]:
    """Every read table of every projection, in a stable order."""
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {t}::text").fetchall() for t in read_tables()}


def admin(url: str):
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, "Org", "admin@example.com", "Admin")
        return identity.principal_for_token(conn, created.token)


def run(service, principal: Principal, tool: str, args: dict) -> dict:
    return asyncio.run(service.call(principal, tool, args))


def scripted_history(rt, principal: Principal, leads: int = 30) -> None:
    """A varied history: creates, updates, tags, contacts, notes, tasks, a merge and a delete."""
    ids = []
    for i in range(leads):
        lead = run(rt.runner, principal, "crm_clients_create_lead",
                   {"business_name": f"Azienda {i}", "vat_number": f"IT{i:011d}", "email": f"info{i}@azienda.it"})
        ids.append(lead["id"])
        run(rt.runner, principal, "crm_clients_add_tag", {"client_id": lead["id"], "tag": f"t{i % 3}"})
        run(rt.runner, principal, "crm_clients_add_contact", {"client_id": lead["id"], "name": f"Persona {i}"})
        run(rt.runner, principal, "crm_clients_add_note", {"client_id": lead["id"], "body": f"nota {i}"})
        run(rt.runner, principal, "crm_tasks_create", {"title": f"Chiama {i}", "client_id": lead["id"]})
    run(rt.runner, principal, "crm_clients_update_status", {"client_id": ids[0], "status": "qualified"})
    run(rt.runner, principal, "crm_clients_merge", {"survivor_id": ids[1], "duplicate_ids": [ids[2], ids[3]]})
    run(rt.runner, principal, "crm_clients_delete", {"client_id": ids[4]})


def test_rebuild_gives_the_same_tables_as_incremental_projection(iso_runtime, fresh_database_url):
    principal = admin(fresh_database_url)
    scripted_history(iso_runtime, principal)
    settle(iso_runtime)
    incremental = dump(fresh_database_url)
    assert len(incremental["clients"]) == 30 - 3 and len(incremental["notes"]) == 30 - 1  # merged notes move, deleted go
    for p in iso_runtime.projections:
        iso_runtime.projector.rebuild(p)
    assert dump(fresh_database_url) == incremental


def test_where_batches_begin_and_end_changes_no_read_model(iso_runtime, fresh_database_url):
    """Batched projection (set-based handlers, gathered inserts) gives the same tables whatever the batch size: a
    catch-up killed after any batch resumes from another boundary. (A contact-name order that depended on the
    rows' physical order once made the clients' search text differ.)"""
    principal = admin(fresh_database_url)
    scripted_history(iso_runtime, principal, leads=60)
    settle(iso_runtime)
    for p in iso_runtime.projections:
        iso_runtime.projector.rebuild(p)
    reference = dump(fresh_database_url)
    for size in (1, 3, 7):
        with psycopg.connect(fresh_database_url) as conn, conn.cursor() as cur:
            for p in iso_runtime.projections:
                p.clear(cur)
            cur.execute("UPDATE projection_tracking SET position = 0")
        iso_runtime.projector.batch_size = size
        for p in iso_runtime.projections:
            iso_runtime.projector.catch_up(p)
        assert dump(fresh_database_url) == reference, size


def test_projector_killed_mid_catch_up_loses_nothing_and_applies_nothing_twice(iso_runtime, fresh_database_url):
    principal = admin(fresh_database_url)
    scripted_history(iso_runtime, principal, leads=60)
    with psycopg.connect(fresh_database_url) as conn, conn.cursor() as cur:  # forget the read models: from 0 again
        for p in iso_runtime.projections:
            p.clear(cur)
        cur.execute("UPDATE projection_tracking SET position = 0")
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "PYTHONPATH": str(ROOT)}
    code = ("import sys; from interfaces.runtime import Runtime; rt = Runtime(sys.argv[1], pool_size=2);"
            "rt.projector.batch_size = 7; rt.projector.run_forever(sys.argv[1])")
    for _ in range(3):  # start, let it apply some batches, kill -9
        proc = subprocess.Popen([sys.executable, "-c", code, fresh_database_url], cwd=ROOT, env=env)
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    settle(iso_runtime)
    after_kills = dump(fresh_database_url)
    for p in iso_runtime.projections:
        iso_runtime.projector.rebuild(p)
    assert dump(fresh_database_url) == after_kills
    with psycopg.connect(fresh_database_url) as conn:
        head = conn.execute("SELECT max(notification_id) FROM stored_events").fetchone()[0]
        positions = dict(conn.execute("SELECT name, position FROM projection_tracking").fetchall())
    assert max(positions.values()) == head


def test_concurrent_writers_to_one_aggregate_are_retried_not_lost(runtime, make_org):
    org = make_org()
    principal = org.principal(runtime.database_url)
    client = run(runtime.runner, principal, "crm_clients_create_lead", {"business_name": "Concorrenza"})
    errors: list[BaseException] = []

    def tag(i: int) -> None:
        try:
            run(runtime.runner, principal, "crm_clients_add_tag", {"client_id": client["id"], "tag": f"tag{i}"})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=tag, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    aggregate = runtime.store.repository.get(client["id"] if not isinstance(client["id"], str) else __import__("uuid").UUID(client["id"]))
    assert sorted(aggregate.tags) == sorted(f"tag{i}" for i in range(8))


def test_idempotency_key_returns_the_first_result_and_appends_nothing(runtime, make_org, db):
    org = make_org()
    principal = org.principal(runtime.database_url)
    args = {"business_name": "Una Volta Sola", "idempotency_key": "create-once-1"}
    first = run(runtime.runner, principal, "crm_clients_create_lead", args)
    head = db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"]
    again = run(runtime.runner, principal, "crm_clients_create_lead", args)
    assert again["id"] == first["id"]
    assert db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"] == head
    from application.errors import InvalidArguments

    with pytest.raises(InvalidArguments) as err:
        run(runtime.runner, principal, "crm_clients_create_lead", {**args, "business_name": "Altro"})
    assert err.value.field == "idempotency_key"
    # the same key in another organization is another key
    other = make_org().principal(runtime.database_url)
    assert run(runtime.runner, other, "crm_clients_create_lead", args)["id"] != first["id"]


def test_every_event_records_its_cause(runtime, make_org, db):
    org = make_org()
    principal = org.principal(runtime.database_url)
    lead = run(runtime.runner, principal, "crm_clients_create_lead", {"business_name": "Causa", "tags": ["a", "b"]})
    rows = db.execute(
        "SELECT e.topic, c.organization_id, c.user_id, c.token_id, c.tool FROM stored_events e"
        " JOIN event_causes c ON e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id"
        " WHERE e.originator_id = %s ORDER BY e.originator_version", (lead["id"],),
    ).fetchall()
    assert [r["topic"].rsplit(".", 1)[-1] for r in rows] == ["Created", "Tagged", "Tagged"]
    assert {(r["organization_id"], r["user_id"], r["token_id"], r["tool"]) for r in rows} == {
        (org.organization_id, org.user_id, principal.token_id, "crm_clients_create_lead")}


def test_a_failing_command_writes_nothing(runtime, make_org, db):
    org = make_org()
    principal = org.principal(runtime.database_url)
    head = db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"]
    from application.errors import ToolError

    with pytest.raises(ToolError):  # the second duplicate does not exist: the whole merge is refused
        lead = run(runtime.runner, principal, "crm_clients_create_lead", {"business_name": "Resta"})
        head = db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"]
        other = run(runtime.runner, principal, "crm_clients_create_lead", {"business_name": "Va"})
        head = db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"]
        run(runtime.runner, principal, "crm_clients_merge",
            {"survivor_id": lead["id"], "duplicate_ids": [other["id"], "00000000-0000-0000-0000-000000000000"]})
    assert db.execute("SELECT max(notification_id) AS n FROM stored_events").fetchone()["n"] == head
