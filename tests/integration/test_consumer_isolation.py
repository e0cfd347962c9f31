"""One organization's event that a projection cannot apply never stops anyone else (issue: spine safety).

Given an event the clients projection refuses (a rule the read table enforces, standing in for any bug, or a
NUL byte appended behind the tools' back), when organizations write and read, then: the event is parked for
its organization only, that organization's reads say `read_model_degraded` (never a false not found) and its
writes say they WERE stored, the other organization is untouched, the failure is reported, and after a fix
`retry` applies the organization's waiting events exactly once.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from application.errors import ToolError
from tests.conftest import flusia
from tests.inprocess import call

POISON = "ALTER TABLE clients ADD CONSTRAINT test_poison CHECK (business_name NOT LIKE 'POISON%')"
CURE = "ALTER TABLE clients DROP CONSTRAINT test_poison"


def org_principal(url: str, name: str):
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, name, f"admin@{name.lower()}.example", "Admin")
        return identity.principal_for_token(conn, created.token)


def execute(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def client_rows(url: str, org_id) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT business_name FROM clients WHERE organization_id = %s"
                                           " ORDER BY business_name", (org_id,)).fetchall()]


def test_a_parked_event_isolates_its_organization_and_is_applied_once_after_a_fix(iso_runtime, fresh_database_url):
    rt, url = iso_runtime, fresh_database_url
    a, b = org_principal(url, "Alfa"), org_principal(url, "Beta")
    kept = call(rt, a, "crm_clients_create_lead", {"business_name": "Before the failure"})
    execute(url, POISON)

    # The write is stored, and says so: not "nothing changed", not a false not-found.
    with pytest.raises(ToolError) as stored:
        call(rt, a, "crm_clients_create_lead", {"business_name": "POISON Srl"})
    err = stored.value.as_dict()
    assert err["code"] == "read_model_degraded" and err["stored"] is True and "WAS stored" in err["message"]
    poisoned_id = err["result"]
    assert poisoned_id in err["ids"] and err["behind"] == ["clients"]

    # Organization B goes on as if nothing happened.
    other = call(rt, b, "crm_clients_create_lead", {"business_name": "Beta Consulting"})
    assert call(rt, b, "crm_clients_get", {"client_id": other["id"]})["business_name"] == "Beta Consulting"
    assert [c["id"] for c in call(rt, b, "crm_clients_list")["items"]] == [other["id"]]

    # A's later events wait behind the parked one; A's reads are explicit about it.
    with pytest.raises(ToolError) as later:
        call(rt, a, "crm_clients_create_lead", {"business_name": "After the failure"})
    assert later.value.code == "read_model_degraded" and later.value.details["stored"] is True
    for tool, args in (("crm_clients_get", {"client_id": poisoned_id}), ("crm_clients_list", {}),
                       ("crm_clients_get", {"client_id": kept["id"]})):
        with pytest.raises(ToolError) as read:
            call(rt, a, tool, args)
        assert read.value.code == "read_model_degraded" and "clients" in read.value.message, tool
    assert call(rt, a, "crm_tasks_list")["items"] == []  # other read models of A are not affected

    env = {"DATABASE_URL": url}
    status = flusia("projections", "status", env=env)
    assert status["projections"]["clients"]["parked"] == 1 and status["projections"]["clients"]["lag"] == 0
    failures = flusia("projections", "failures", env=env)["parked"]
    assert len(failures) == 1
    parked = failures[0]
    assert parked["consumer"] == "clients" and parked["organization_id"] == str(a.organization_id)
    assert parked["error_class"] == "CheckViolation" and parked["error_code"] == "23514"
    assert parked["waiting_behind"] >= 1 and parked["attempts"] >= 1
    assert "POISON" not in str(failures)  # no tenant value is kept with the failure

    # Still failing: retry leaves it parked, with one more attempt.
    retried = flusia("projections", "retry", "clients", env=env)["retried"]["clients"]
    assert retried[0]["resolved"] is False
    assert flusia("projections", "failures", env=env)["parked"][0]["attempts"] == parked["attempts"] + 1

    execute(url, CURE)
    retried = flusia("projections", "retry", env=env)["retried"]["clients"]
    assert retried == [{"organization_id": str(a.organization_id), "resolved": True, "applied": 2}]
    assert client_rows(url, a.organization_id) == ["After the failure", "Before the failure", "POISON Srl"]
    assert flusia("projections", "failures", env=env)["parked"] == []
    assert call(rt, a, "crm_clients_get", {"client_id": poisoned_id})["business_name"] == "POISON Srl"
    assert flusia("projections", "retry", env=env)["retried"] == {}  # nothing left: nothing applied twice
    assert client_rows(url, b.organization_id) == ["Beta Consulting"]


def test_rebuild_completes_past_a_parked_event_and_reports_it(iso_runtime, fresh_database_url):
    rt, url = iso_runtime, fresh_database_url
    a, b = org_principal(url, "Alfa"), org_principal(url, "Beta")
    call(rt, a, "crm_clients_create_lead", {"business_name": "POISON later"})
    call(rt, a, "crm_clients_create_lead", {"business_name": "Alfa two"})
    call(rt, b, "crm_clients_create_lead", {"business_name": "Beta one"})
    execute(url, "DELETE FROM clients WHERE business_name LIKE 'POISON%'")
    execute(url, POISON)
    report = flusia("projections", "rebuild", "clients", env={"DATABASE_URL": url})["rebuilt"]["clients"]
    assert [p["organization_id"] for p in report["parked"]] == [str(a.organization_id)]
    assert report["parked"][0]["error_class"] == "CheckViolation"
    assert client_rows(url, b.organization_id) == ["Beta one"]
    assert client_rows(url, a.organization_id) == []  # A's events wait behind the parked one, in order
    execute(url, CURE)
    rt.projector.retry_parked(rt.projection("clients"), due_only=False)
    assert client_rows(url, a.organization_id) == ["Alfa two", "POISON later"]


def test_an_unstorable_event_appended_behind_the_tools_back_is_parked(iso_runtime, fresh_database_url):
    """The value guard stops NUL at the door; an event that got in anyway (another writer, an old bug) is parked
    and every other organization's projection goes on."""
    from domain.clients import Client

    rt, url = iso_runtime, fresh_database_url
    a, b = org_principal(url, "Alfa"), org_principal(url, "Beta")
    bad = Client.create_lead(a.organization_id, {"business_name": "nul\x00byte"}, None, a.user_id)
    rt.store.save(bad, organization_id=a.organization_id)
    other = call(rt, b, "crm_clients_create_lead", {"business_name": "Beta Srl"})
    assert call(rt, b, "crm_clients_get", {"client_id": other["id"]})["id"] == other["id"]
    with psycopg.connect(url, row_factory=dict_row) as conn:
        parked = rt.projector.parked(conn)
        head = conn.execute("SELECT max(notification_id) AS head FROM stored_events").fetchone()["head"]
        positions = {r["name"]: r["position"] for r in conn.execute("SELECT name, position FROM projection_tracking")}
    assert [(p["consumer"], p["organization_id"]) for p in parked] == [("clients", a.organization_id)]
    assert all(pos == head for pos in positions.values())
    with pytest.raises(ToolError) as e:
        call(rt, a, "crm_clients_search", {"q": "nul"})
    assert e.value.code == "read_model_degraded"


def test_a_stored_write_whose_result_cannot_be_read_back_says_it_was_stored(runtime, make_org, database_url, monkeypatch):
    """Seen: a write committed its events, then failed while presenting its result, and answered
    internal_error 'nothing was changed'. Whatever fails after the commit, the answer says it WAS stored."""
    import dataclasses

    org = make_org()
    principal = org.principal(database_url)
    op = runtime.registry.get("crm_clients_create_lead")

    def broken_present(ctx, client_id):
        raise RuntimeError("reading back failed")

    monkeypatch.setitem(runtime.registry._ops, op.name, dataclasses.replace(op, present=broken_present))
    with pytest.raises(ToolError) as e:
        call(runtime, principal, op.name, {"business_name": "Stored anyway"})
    err = e.value.as_dict()
    assert err["code"] == "read_model_behind" and err["stored"] is True and "WAS stored" in err["message"]
    assert "nothing was changed" not in err["message"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM clients WHERE id = %s", (err["result"],)).fetchone()[0] == 1


def test_a_timestamp_before_year_1900_is_refused_and_the_timeline_keeps_working(runtime, make_org, database_url):
    """Seen: `0001-01-01T00:00:00+14:00` was stored as a BC date, answered internal_error, and the organization's
    activity list, timeline and recordings failed from then on."""
    org = make_org()
    principal = org.principal(database_url)
    lead = call(runtime, principal, "crm_clients_create_lead", {"business_name": "Timely"})
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT count(*) FROM stored_events").fetchone()[0]
    for tool, args, field in (
        ("crm_activities_log_call", {"client_id": lead["id"], "subject": "x", "occurred_at": "0001-01-01T00:00:00+14:00"},
         "occurred_at"),
        ("crm_clients_add_recording", {"client_id": lead["id"], "media_url": "https://e.it/a.mp3", "duration_seconds": 1,
                                       "recorded_at": "9999-12-31T23:59:59-14:00"}, "recorded_at"),
    ):
        with pytest.raises(ToolError) as e:
            call(runtime, principal, tool, args)
        assert e.value.code == "invalid_arguments" and e.value.field == field
        assert "1900-01-01" in e.value.message and "2200-12-31" in e.value.message
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM stored_events").fetchone()[0] == before
    call(runtime, principal, "crm_activities_log_call", {"client_id": lead["id"], "subject": "ok",
                                                         "occurred_at": "1900-01-02T12:00:00+14:00"})
    assert len(call(runtime, principal, "crm_activities_list", {"client_id": lead["id"]})["items"]) == 1
    assert call(runtime, principal, "crm_activities_timeline", {"client_id": lead["id"]})["items"]
    assert call(runtime, principal, "crm_clients_list_recordings", {"client_id": lead["id"]})["items"] == []
