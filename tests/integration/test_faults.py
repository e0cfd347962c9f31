"""Faults survived (issue 16), the parts a test can produce deterministically: the server's database sessions
terminated (as a PostgreSQL restart does), an append whose connection breaks before or after it committed, the
database unreachable while a write is saved, and a consumer losing a connection while it applies events.

Whatever happens, a call answers the truth: it works on fresh connections, or says `unavailable` (retryable), and a
write whose outcome could not be learnt says so and is settled by repeating it with the same idempotency key.
`bench/bench_faults.py` does the same under load with real kills and restarts.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity, store
from application.errors import ToolError
from tests.inprocess import call


def org_principal(url: str, name: str = "Faults"):
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, name, f"admin@{name.lower()}.example", "Admin")
        return identity.principal_for_token(conn, created.token)


def terminate_others(url: str) -> int:
    """What a restart does to the server's sessions: every other session of this database ends."""
    with psycopg.connect(url, autocommit=True) as conn:
        n = len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND pid <> pg_backend_pid()").fetchall())
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()[0]:
            time.sleep(0.02)
    return n


def stored_leads(url: str, org_id, name: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM stored_events WHERE organization_id = %s AND originator_version = 1"
                            " AND position(convert_to(%s, 'UTF8') IN state) > 0", (org_id, name)).fetchone()[0]


def test_tool_calls_work_again_at_once_after_every_session_was_terminated(iso_runtime, fresh_database_url):
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)
    call(rt, p, "crm_clients_create_lead", {"business_name": "Before Srl"})
    assert call(rt, p, "crm_clients_list", {})["items"]
    assert terminate_others(url) > 0  # pooled, append and projector connections: all stale now

    assert [c["business_name"] for c in call(rt, p, "crm_clients_list", {})["items"]] == ["Before Srl"]
    created = call(rt, p, "crm_clients_create_lead", {"business_name": "After Srl", "idempotency_key": "after-1"})
    assert call(rt, p, "crm_clients_get", {"client_id": created["id"]})["business_name"] == "After Srl"
    assert stored_leads(url, p.organization_id, "After Srl") == 1


class BreakingConnection:
    """The append connection, with the network failing around one statement: before it reaches the server, or
    after the server ran it (committed, but the answer is lost)."""

    def __init__(self, conn: psycopg.Connection, *, after: bool) -> None:
        self.conn, self.after, self.tripped = conn, after, False

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def execute(self, sql, params=None, **kwargs):
        if not self.tripped and "stored_events" in sql:
            self.tripped = True
            if self.after:
                self.conn.execute(sql, params, **kwargs).fetchall()
            self.conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self.conn.execute(sql, params, **kwargs)


@pytest.mark.parametrize("after", [False, True], ids=["lost-before-commit", "lost-after-commit"])
def test_an_append_whose_connection_broke_is_stored_exactly_once_and_answered_truly(iso_runtime, fresh_database_url,
                                                                                    monkeypatch, after):
    """The database says whether the broken append committed: answered as stored if it did, done now if it did not;
    never twice, never 'nothing changed' for a stored change."""
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)
    recorder = rt.store.recorder
    real = recorder._connection
    wrapped: list[BreakingConnection] = []

    def breaking():
        conn = real()
        if not wrapped:
            wrapped.append(BreakingConnection(conn, after=after))
        return wrapped[0] if not wrapped[0].tripped else conn

    monkeypatch.setattr(recorder, "_connection", breaking)
    created = call(rt, p, "crm_clients_create_lead", {"business_name": f"Broken {after} Srl"})
    assert wrapped[0].tripped
    assert call(rt, p, "crm_clients_get", {"client_id": created["id"]})["business_name"] == f"Broken {after} Srl"
    assert stored_leads(url, p.organization_id, f"Broken {after} Srl") == 1


def test_an_append_blocked_when_its_session_is_killed_is_done_once_on_a_new_one(iso_runtime, fresh_database_url):
    """A real broken session: the append waits for the append lock (held here), its session is terminated, and the
    write is completed on a new connection, once."""
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)
    call(rt, p, "crm_clients_create_lead", {"business_name": "Warm-up"})  # the append connection is open
    answer: dict = {}
    with psycopg.connect(url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (store.APPEND_LOCK,))
        t = threading.Thread(target=lambda: answer.update(out=call(rt, p, "crm_clients_create_lead",
                                                                   {"business_name": "Killed Srl"})))
        t.start()
        with psycopg.connect(url, autocommit=True) as admin:
            for _ in range(500):
                pid = admin.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    " AND wait_event = 'advisory' AND datname = current_database()").fetchone()
                if pid:
                    break
                time.sleep(0.01)
            assert pid, "the append never waited for the lock"
            admin.execute("SELECT pg_terminate_backend(%s)", pid)
        holder.rollback()
    t.join(30)
    assert answer["out"]["business_name"] == "Killed Srl"
    assert stored_leads(url, p.organization_id, "Killed Srl") == 1


def test_a_write_whose_outcome_cannot_be_learnt_says_so_and_the_same_key_settles_it(iso_runtime, fresh_database_url,
                                                                                    monkeypatch):
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)
    recorder = rt.store.recorder
    real = recorder._connection
    monkeypatch.setattr(store, "RESOLVE_SECONDS", 0.5)
    conninfo = recorder._conninfo
    state = {"tripped": False}

    def breaking():
        conn = real()
        if state["tripped"]:
            return conn
        state["tripped"] = True
        recorder._conninfo = "postgresql://postgres@127.0.0.1:9/unreachable"  # and the database stays away
        return BreakingConnection(conn, after=False)

    monkeypatch.setattr(recorder, "_connection", breaking)
    args = {"business_name": "Unknown Srl", "idempotency_key": "unknown-1"}
    with pytest.raises(ToolError) as e:
        call(rt, p, "crm_clients_create_lead", args)
    err = e.value.as_dict()
    assert err["code"] == "unavailable" and err["stored"] == "unknown" and err["retryable"] is True
    assert "same idempotency_key" in err["message"]

    recorder._conninfo = conninfo  # the database is back
    first = call(rt, p, "crm_clients_create_lead", args)
    again = call(rt, p, "crm_clients_create_lead", args)
    assert first["id"] == again["id"]
    assert stored_leads(url, p.organization_id, "Unknown Srl") == 1


def test_a_lost_connection_while_projecting_parks_nothing(iso_runtime, fresh_database_url):
    """Decoding an event reads keys through another connection; losing that one is not the event's fault: the batch
    is abandoned and done again, and no event is parked."""
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)
    call(rt, p, "crm_clients_create_lead", {"business_name": "Projected Srl"})
    clients = rt.projection("clients")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE projection_tracking SET position = 0 WHERE name = 'clients'")
        conn.execute("DELETE FROM clients WHERE organization_id = %s", (p.organization_id,))
    decode, failures = rt.projector.decode, []

    def flaky(n):
        if not failures:
            failures.append(n.id)
            raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
        return decode(n)

    rt.projector.decode = flaky
    try:
        with pytest.raises(psycopg.OperationalError):
            rt.projector.run_batch(clients)
        rt.projector.catch_up(clients)
    finally:
        rt.projector.decode = decode
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert rt.projector.parked(conn, "clients") == []
        assert conn.execute("SELECT business_name FROM clients WHERE organization_id = %s",
                            (p.organization_id,)).fetchone()["business_name"] == "Projected Srl"


def test_a_read_answers_unavailable_not_internal_error_when_the_database_is_gone(iso_runtime, fresh_database_url,
                                                                                 monkeypatch):
    rt, url = iso_runtime, fresh_database_url
    p = org_principal(url)

    def gone(*args, **kwargs):
        raise psycopg.OperationalError("connection is bad: server closed the connection unexpectedly")

    monkeypatch.setattr(rt.runner, "run_query", gone)
    with pytest.raises(ToolError) as e:
        call(rt, p, "crm_clients_list", {})
    assert e.value.code == "unavailable" and e.value.as_dict()["retryable"] is True
