"""Workflows on PostgreSQL through the real tool runner: triggers, runs exactly once, durable waits, loops, timers.

Each test has a database of its own (no other process's engine shares it) and drives the engine's clock:
nothing sleeps for days. Runs that must survive crashes run the engine in subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from application.workflow_engine import EngineSettings, WorkflowEngine
from domain.workflows import run_id
from tests.inprocess import Caller

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PROCESS = (
    "import sys, anyio; from interfaces.runtime import Runtime; rt = Runtime(sys.argv[1], pool_size=4, "
    "consistency='settle'); rt.projector.start(sys.argv[1]); print('ready', flush=True); "
    "anyio.run(rt.workflow_engine.run_forever)"
)


class Clock:
    def __init__(self) -> None:
        self.t = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


class Receiver:
    """A webhook receiver on loopback that checks each request's signature and acts once per Idempotency-Key."""

    def __init__(self, *, delay: float = 0.0, statuses: list[int] | None = None) -> None:
        self.secret: str | None = None
        self.delay = delay
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        self.effects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(receiver.delay)
                expected = "sha256=" + hmac.new((receiver.secret or "").encode(), body, hashlib.sha256).hexdigest()
                key = self.headers.get("Idempotency-Key")
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append({"key": key, "signed": hmac.compare_digest(
                        expected, self.headers.get("X-Flusia-Signature", "")), "status": status})
                    if status < 300 and key not in receiver.effects:
                        receiver.effects[key] = json.loads(body)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def loopback(monkeypatch):
    monkeypatch.setenv("FLUSIA_WEBHOOK_ALLOW_LOOPBACK", "1")


class World:
    def __init__(self, rt: Any, url: str) -> None:
        self.rt, self.url = rt, url
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            created = identity.create_organization(conn, "Rossi", "anna@rossi.example", "Anna Admin")
            self.org_id, self.user_id = created.organization_id, created.user_id
            self.admin = identity.principal_for_token(conn, created.token)
        self.call = Caller(rt, self.admin)
        self.clock = Clock()
        self.engines: list[WorkflowEngine] = []

    def engine(self, **settings: Any) -> WorkflowEngine:
        e = WorkflowEngine(self.rt, now=self.clock, settings=EngineSettings(
            allow_loopback=True, webhook_backoff_seconds=0.01, **settings))
        self.engines.append(e)
        return e

    def drain(self, **settings: Any) -> int:
        return self.engine(**settings).drain_sync()

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(query, params).fetchall()

    def workflow(self, trigger: dict[str, Any], *steps: tuple[str, dict[str, Any]], activate: bool = True,
                 caller: Any = None) -> dict[str, Any]:
        call = caller or self.call
        w = call("crm_workflows_create", {"name": "Kickoff"})
        call("crm_workflows_set_trigger", {"workflow_id": w["id"], **trigger})
        added = [call("crm_workflows_add_step", {"workflow_id": w["id"], "type": t, "config": c}) for t, c in steps]
        if activate:
            call("crm_workflows_activate", {"workflow_id": w["id"]})
        w["added"] = added
        return w

    def won_deal(self, title: str = "Sito web") -> dict[str, Any]:
        client = self.call("crm_clients_create_lead", {"business_name": f"Cliente {title}"})
        deal = self.call("crm_deals_create", {"title": title, "client_id": client["id"], "value": "4800"})
        self.call("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
        return deal

    def runs(self, workflow_id: str) -> list[dict[str, Any]]:
        return self.call("crm_workflows_list_runs", {"workflow_id": workflow_id, "limit": 100})["items"]

    def tasks(self, **filters: Any) -> list[dict[str, Any]]:
        return self.call("crm_tasks_list", {"limit": 100, **filters})["items"]

    def head(self) -> int:
        return self.sql("SELECT coalesce(max(notification_id), 0) AS n FROM stored_events")[0]["n"]

    def close(self) -> None:
        for e in self.engines:
            e.close()


@pytest.fixture
def world(iso_runtime, fresh_database_url):
    w = World(iso_runtime, fresh_database_url)
    yield w
    w.close()


WON = {"type": "deal_status_changed", "config": {"to_status": "accepted"}}
KICKOFF = ("create_task", {"title": "Kickoff {{deal.title}}", "due_in_days": 2, "assignee_id": "{{deal.owner_id}}"})


def engine_process(url: str, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_PROCESS, url], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "FLUSIA_WEBHOOK_ALLOW_LOOPBACK": "1",
                                 "FLUSIA_WEBHOOK_BACKOFF_SECONDS": "0.05", **env})
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# -- the main scenario, through crashes ----------------------------------------------------------------------------
def test_a_won_deal_creates_a_task_and_calls_the_webhook_exactly_once_through_kill_9_restarts(world, loopback):
    receiver = Receiver(delay=0.05)
    try:
        w = world.workflow(WON, KICKOFF, ("webhook", {"url": receiver.url}),
                           ("add_note", {"body": "Kickoff planned for {{deal.title}}"}))
        receiver.secret = w["added"][1]["webhook_secret"]
        deals = [world.won_deal(f"Sito {i}") for i in range(6)]
        world.rt.settle()  # the trigger consumer has recorded the six pending runs
        rng = random.Random(12)
        for _ in range(6):  # start the engine, let it work a random while, kill -9
            proc = engine_process(world.url)
            time.sleep(rng.uniform(0.0, 0.6))
            kill(proc)
        world.drain()  # a last restart finishes whatever is left
    finally:
        receiver.close()
    runs = world.runs(w["id"])
    assert sorted(r["status"] for r in runs) == ["succeeded"] * 6
    for deal in deals:
        tasks = world.tasks(deal_id=deal["id"])
        assert [t["title"] for t in tasks] == [f"Kickoff {deal['title']}"]
        assert world.call("crm_tasks_get", {"task_id": tasks[0]["id"]})["assignee_id"] == str(world.user_id)
        notes = world.call("crm_deals_list_notes", {"deal_id": deal["id"]})["items"]
        assert [n["body"] for n in notes] == [f"Kickoff planned for {deal['title']}"]
    assert all(r["signed"] for r in receiver.requests)
    assert sorted(receiver.effects) == sorted(f"wf:{r['id']}:{w['added'][1]['step_id']}" for r in runs)
    assert {e["data"]["deal"]["title"] for e in receiver.effects.values()} == {d["title"] for d in deals}
    ledger = world.sql("SELECT status, count(*) AS n FROM workflow_pending GROUP BY status")
    assert ledger == [{"status": "done", "n": 6}]


def test_two_engines_at_once_still_start_one_run_per_event(world):
    w = world.workflow(WON, KICKOFF)
    deals = [world.won_deal(f"Deal {i}") for i in range(20)]
    world.rt.settle()
    procs = [engine_process(world.url), engine_process(world.url)]
    try:
        deadline = time.monotonic() + 120
        while world.sql("SELECT count(*) AS n FROM workflow_pending WHERE status = 'pending'")[0]["n"]:
            assert time.monotonic() < deadline, "the engines did not finish"
            time.sleep(0.2)
    finally:
        for p in procs:
            kill(p)
    runs = world.runs(w["id"])
    assert len(runs) == 20 and {r["status"] for r in runs} == {"succeeded"}
    assert sorted(r["trigger_entity_id"] for r in runs) == sorted(d["id"] for d in deals)
    for deal in deals:
        assert len(world.tasks(deal_id=deal["id"])) == 1
    started = world.sql("SELECT count(*) AS n FROM stored_events WHERE topic LIKE %s", "%WorkflowRun.Started")
    assert started[0]["n"] == 20


# -- durable waits ---------------------------------------------------------------------------------------------
def test_a_two_day_wait_resumes_after_a_restart_at_the_right_time(world):
    w = world.workflow(WON, ("wait", {"duration": "P2D"}), ("create_task", {"title": "Follow up {{deal.title}}",
                                                                             "due_in_days": 0}))
    deal = world.won_deal()
    world.drain()
    (run,) = world.runs(w["id"])
    assert run["status"] == "waiting" and world.tasks(deal_id=deal["id"]) == []
    resume_at = datetime.fromisoformat(run["waiting_until"].replace("Z", "+00:00"))
    assert resume_at == pytest.approx(world.clock.t + timedelta(days=2), abs=timedelta(seconds=5))
    world.engines[-1].close()  # the process stops; a new one starts a day later
    world.clock.advance(days=1)
    assert world.drain() == 0 and world.runs(w["id"])[0]["status"] == "waiting"
    world.clock.t = resume_at + timedelta(minutes=1)  # and another one after the two days
    assert world.drain() == 1
    (run,) = world.runs(w["id"])
    assert run["status"] == "succeeded"
    (task,) = world.tasks(deal_id=deal["id"])
    assert task["due_date"] == resume_at.astimezone(ZoneInfo("Europe/Rome")).date().isoformat()
    steps = world.call("crm_workflows_get_run", {"run_id": run["id"]})["steps"]
    assert [s["status"] for s in steps] == ["waiting", "done", "done"]


# -- loops, rate limits, activators -------------------------------------------------------------------------------
def test_a_loop_is_cut_at_the_depth_limit(world):
    loop = world.workflow({"type": "event", "config": {"event_type": "Task.Created"}},
                          ("create_task", {"title": "Again after {{event.fields.title}}"}))
    world.call("crm_tasks_create", {"title": "Start"})
    world.drain()
    titles = sorted(t["title"] for t in world.tasks())
    assert titles == ["Again after Again after Again after Start", "Again after Again after Start",
                      "Again after Start", "Start"]
    runs = world.runs(loop["id"])
    assert sorted(r["depth"] for r in runs) == [1, 2, 3] and {r["status"] for r in runs} == {"succeeded"}
    assert world.call("crm_workflows_get", {"workflow_id": loop["id"]})["runs_cut_by_loop_limit"] == 1
    assert world.sql("SELECT depth, status FROM workflow_pending WHERE status = 'cut'") == [{"depth": 4, "status": "cut"}]


def test_one_organizations_runs_are_rate_limited_and_wait_their_turn(world):
    w = world.workflow(WON, KICKOFF)
    for i in range(3):
        world.won_deal(f"D{i}")
    assert world.drain(runs_per_minute=2) == 2
    assert len(world.runs(w["id"])) == 2
    world.clock.advance(seconds=61)
    assert world.drain(runs_per_minute=2) == 1
    assert len(world.runs(w["id"])) == 3


def test_a_deactivated_activator_pauses_the_workflow_and_stops_its_runs(world):
    with psycopg.connect(world.url, autocommit=True, row_factory=dict_row) as conn:
        bruno = identity.create_user(conn, world.org_id, "bruno@rossi.example", "Bruno Bianchi", "admin")
        token, _ = identity.create_token(conn, world.org_id, bruno, None)
        principal = identity.principal_for_token(conn, token)
    w = world.workflow(WON, ("wait", {"duration": "P1D"}), KICKOFF, caller=Caller(world.rt, principal))
    deal = world.won_deal()
    world.drain()
    assert world.runs(w["id"])[0]["status"] == "waiting"
    with psycopg.connect(world.url, autocommit=True, row_factory=dict_row) as conn:
        identity.deactivate_user(conn, world.org_id, bruno)
    world.clock.advance(days=2)
    world.drain()
    got = world.call("crm_workflows_get", {"workflow_id": w["id"]})
    assert got["status"] == "paused" and "Bruno Bianchi" in got["status_reason"]
    (run,) = world.runs(w["id"])
    assert run["status"] == "stopped" and world.tasks(deal_id=deal["id"]) == []
    world.won_deal("After")  # a paused workflow does not react
    world.drain()
    assert len(world.runs(w["id"])) == 1


def test_every_event_a_step_causes_names_the_run_and_the_activator(world):
    w = world.workflow(WON, KICKOFF)
    world.won_deal()
    world.drain()
    (run,) = world.runs(w["id"])
    (task,) = world.tasks()
    causes = world.sql(
        "SELECT c.user_id, c.workflow_run_id, c.tool FROM stored_events e JOIN event_causes c"
        " ON e.notification_id BETWEEN c.first_notification_id AND c.last_notification_id WHERE e.originator_id = %s",
        UUID(task["id"]))
    assert causes == [{"user_id": world.user_id, "workflow_run_id": UUID(run["id"]), "tool": "crm_tasks_create"}]
    assert run["id"] == str(run_id(UUID(w["id"]), f"event:{run['trigger_notification_id']}"))


# -- replays never re-run side effects ----------------------------------------------------------------------------
def test_rebuilding_keeps_the_trigger_consumer_and_a_replay_starts_nothing_twice(world):
    w = world.workflow(WON, KICKOFF)
    world.won_deal()
    world.drain()
    consumer = world.rt.projection("workflow_triggers")
    before = world.sql("SELECT * FROM workflow_pending ORDER BY run_id")
    report = world.rt.projector.rebuild_report(consumer)
    assert report["events_applied"] == 0 and "not rebuildable" in report["kept"]
    for p in world.rt.projections:
        world.rt.projector.rebuild(p)
    world.sql("UPDATE projection_tracking SET position = 0 WHERE name = 'workflow_triggers' RETURNING name")
    world.rt.settle()  # replayed from 0 anyway: the ledger refuses every second start
    assert world.sql("SELECT * FROM workflow_pending ORDER BY run_id") == before
    world.drain()
    assert len(world.runs(w["id"])) == 1 and len(world.tasks()) == 1


# -- timers --------------------------------------------------------------------------------------------------------
def test_a_schedule_fires_in_the_organizations_time_zone_and_missed_ticks_fire_once(world):
    w = world.workflow({"type": "schedule", "config": {"cron": "0 9 * * *"}},
                       ("create_task", {"title": "Daily review {{trigger.date}}"}))
    world.rt.settle()
    (timer,) = world.sql("SELECT due_at FROM workflow_timers WHERE workflow_id = %s", UUID(w["id"]))
    local = timer["due_at"].astimezone(ZoneInfo("Europe/Rome"))
    assert (local.hour, local.minute) == (9, 0) and timer["due_at"] > world.clock.t
    assert world.drain() == 0
    world.clock.t = timer["due_at"] + timedelta(minutes=1)
    assert world.drain() == 1
    assert [t["title"] for t in world.tasks()] == [f"Daily review {local.date().isoformat()}"]
    world.clock.advance(days=3)  # three ticks missed while no engine ran: one run
    assert world.drain() == 1 and len(world.runs(w["id"])) == 2


def test_task_due_fires_days_before_the_due_date_once_per_due_date(world):
    w = world.workflow({"type": "task_due", "config": {"days_before": 1, "at_hour": 9}},
                       ("create_task", {"title": "Prepare {{task.title}}"}))
    rome = ZoneInfo("Europe/Rome")
    due = world.clock.t.astimezone(rome).date() + timedelta(days=5)
    task = world.call("crm_tasks_create", {"title": "Consegna", "due_date": due.isoformat()})
    world.clock.t = datetime.combine(due - timedelta(days=2), datetime.min.time(), rome)
    assert world.drain() == 0
    world.clock.t = datetime.combine(due - timedelta(days=1), datetime.min.time(), rome) + timedelta(hours=9, minutes=1)
    assert world.drain() == 1
    world.call("crm_tasks_complete", {"task_id": task["id"]})
    world.call("crm_tasks_reopen", {"task_id": task["id"]})  # the same due date: it already fired
    assert world.drain() == 0
    later = due + timedelta(days=7)
    world.call("crm_tasks_update", {"task_id": task["id"], "due_date": later.isoformat()})
    world.clock.t = datetime.combine(later - timedelta(days=1), datetime.min.time(), rome) + timedelta(hours=10)
    assert world.drain() == 1
    assert sorted(t["title"] for t in world.tasks()) == ["Consegna", "Prepare Consegna", "Prepare Consegna"]
    assert len(world.runs(w["id"])) == 2


# -- steps -----------------------------------------------------------------------------------------------------------
def test_conditions_choose_a_branch_and_field_updates_assignment_and_stop_act_on_the_trigger(world):
    with psycopg.connect(world.url, autocommit=True, row_factory=dict_row) as conn:
        carla = identity.create_user(conn, world.org_id, "carla@rossi.example", "Carla", "sales")
    w = world.workflow(WON, ("condition", {"conditions": [{"field": "deal.value", "op": "greater_than",
                                                           "value": 10000}]}))
    cond = w["added"][0]["step_id"]
    for step_type, config, branch in (
            ("assign", {"entity": "deal", "user_id": str(carla)}, "then"),
            ("update_field", {"field": "deal.title", "value": "{{deal.title}} (big)"}, "then"),
            ("stop", {"reason": "small deal"}, "else")):
        world.call("crm_workflows_add_step", {"workflow_id": w["id"], "type": step_type, "config": config,
                                              "parent_step_id": cond, "branch": branch})
    world.call("crm_workflows_add_step", {"workflow_id": w["id"], "type": "add_note", "config": {"body": "after"}})
    world.call("crm_workflows_activate", {"workflow_id": w["id"]})
    client = world.call("crm_clients_create_lead", {"business_name": "Grande"})
    big = world.call("crm_deals_create", {"title": "Grande", "client_id": client["id"], "value": "25000"})
    small = world.call("crm_deals_create", {"title": "Piccolo", "client_id": client["id"], "value": "100"})
    for deal in (big, small):
        world.call("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
    world.drain()
    got_big = world.call("crm_deals_get", {"deal_id": big["id"]})
    assert got_big["title"] == "Grande (big)" and got_big["owner_id"] == str(carla)
    assert len(world.call("crm_deals_list_notes", {"deal_id": big["id"]})["items"]) == 1
    got_small = world.call("crm_deals_get", {"deal_id": small["id"]})
    assert got_small["title"] == "Piccolo" and world.call("crm_deals_list_notes", {"deal_id": small["id"]})["items"] == []
    statuses = {r["trigger_entity_id"]: (r["status"], r.get("stop_reason")) for r in world.runs(w["id"])}
    assert statuses == {big["id"]: ("succeeded", None), small["id"]: ("stopped", "small deal")}


def test_a_failing_step_fails_the_run_with_the_tools_error(world):
    w = world.workflow(WON, ("update_field", {"field": "deal.expected_close_date", "value": "1850-01-01"}), KICKOFF)
    world.won_deal()
    world.drain()
    (run,) = world.runs(w["id"])
    assert run["status"] == "failed" and "expected_close_date" in run["error"]
    detail = world.call("crm_workflows_get_run", {"run_id": run["id"]})
    assert [(s["step_type"], s["status"]) for s in detail["steps"]] == [("update_field", "failed")]
    assert world.tasks() == []


def test_webhooks_retry_server_errors_with_back_off_and_fail_at_once_on_a_refusal(world, loopback):
    receiver = Receiver(statuses=[500, 503, 200, 400])
    try:
        w = world.workflow(WON, ("webhook", {"url": receiver.url, "fields": {"what": "{{deal.title}} won"}}))
        receiver.secret = w["added"][0]["webhook_secret"]
        world.won_deal("Uno")
        world.drain()
        world.won_deal("Due")
        world.drain()
    finally:
        receiver.close()
    runs = {r["trigger_entity_id"]: r for r in world.runs(w["id"])}
    assert sorted(r["status"] for r in runs.values()) == ["failed", "succeeded"]
    assert [r["status"] for r in receiver.requests] == [500, 503, 200, 400] and all(r["signed"] for r in receiver.requests)
    (effect,) = receiver.effects.values()
    assert effect["data"] == {"what": "Uno won"}
    ok = next(r for r in runs.values() if r["status"] == "succeeded")
    steps = world.call("crm_workflows_get_run", {"run_id": ok["id"]})["steps"]
    assert [s["status"] for s in steps] == ["sending", "sending", "sending", "done"]
    assert steps[-1]["result"] == {"status_code": 200, "attempts": 3}
    failed = next(r for r in runs.values() if r["status"] == "failed")
    assert "HTTP 400" in failed["error"]


def test_the_webhook_secret_is_shown_once_and_never_stored_in_clear(world, loopback):
    w = world.workflow(WON, ("webhook", {"url": "https://hooks.example.com/flusia"}), activate=False)
    secret = w["added"][0]["webhook_secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    again = world.call("crm_workflows_add_step", {"workflow_id": w["id"], "type": "webhook",
                                                  "config": {"url": "https://hooks.example.com/other"}})
    assert "webhook_secret" not in again and again["has_webhook_secret"] is True
    assert secret not in json.dumps(world.call("crm_workflows_get", {"workflow_id": w["id"]}))
    for table, column in (("stored_events", "state"), ("idempotency_keys", "result::text::bytea"),
                          ("workflow_secrets", "sealed")):
        found = world.sql(f"SELECT count(*) AS n FROM {table} WHERE position(convert_to(%s, 'UTF8') in {column}) > 0",
                          secret)
        assert found[0]["n"] == 0, table
    err = world.call.error("crm_workflows_add_step", {"workflow_id": w["id"], "type": "webhook",
                                                      "config": {"url": "http://hooks.example.com/x"}})
    assert err.field == "config.url" and "https" in err.message


# -- tools: building, refusing, dry runs ------------------------------------------------------------------------------
def test_building_refuses_unknown_placeholders_and_missing_permissions_naming_them(world):
    w = world.workflow(WON, KICKOFF, activate=False)
    err = world.call.error("crm_workflows_add_step", {"workflow_id": w["id"], "type": "create_task",
                                                      "config": {"title": "Hi {{deal.nmae}}"}})
    assert err.code == "invalid_arguments" and err.field == "config.title" and "{{deal.nmae}}" in err.message
    world.call("crm_workflows_set_trigger", {"workflow_id": w["id"], "type": "client_created"})  # a draft may
    err = world.call.error("crm_workflows_activate", {"workflow_id": w["id"]})  # but its steps no longer fit
    assert err.code == "not_activatable" and "step 1 (create_task" in err.message and "deal.title" in err.message
    world.call("crm_workflows_set_trigger", {"workflow_id": w["id"], **WON})
    # send_whatsapp_template is available: the WhatsApp toolset exists (tests/integration/test_whatsapp.py)
    with psycopg.connect(world.url, autocommit=True, row_factory=dict_row) as conn:
        token, _ = identity.create_token(conn, world.org_id, world.user_id, {"workflows": "rwd"})
        narrow = Caller(world.rt, identity.principal_for_token(conn, token))
    err = narrow.error("crm_workflows_activate", {"workflow_id": w["id"]})
    assert err.code == "not_activatable" and "tasks:write" in err.message and "step 1 (create_task)" in err.message
    types = world.call("crm_workflows_list_step_types")["items"]
    whatsapp = next(t for t in types if t["name"] == "send_whatsapp_template")
    assert whatsapp["available"] is True  # crm_whatsapp_send_template exists (tests/integration/test_whatsapp.py)
    triggers = {t["name"]: t for t in world.call("crm_workflows_list_trigger_types")["items"]}
    assert {"deal_status_changed", "deal_stage_changed", "client_created", "client_status_changed", "task_completed",
            "task_due", "schedule", "event"} <= set(triggers)
    assert sorted(triggers["deal_status_changed"]["config_schema"]["properties"]["to_status"]["enum"]) == sorted([
        "open", "accepted", "rejected"])
    assert "deal.title" in triggers["deal_status_changed"]["placeholders"]


def test_a_dry_run_shows_each_steps_effect_and_changes_and_sends_nothing(world, loopback, receiver):
    w = world.workflow(WON, KICKOFF, ("condition", {"conditions": [{"field": "deal.value", "op": "less_than",
                                                                    "value": 1000}]}),
                       ("webhook", {"url": receiver.url}), activate=False)
    deal = world.won_deal("Vetrina")
    world.rt.settle()
    event = world.sql("SELECT max(notification_id) AS n FROM stored_events WHERE topic LIKE %s", "%Deal.StatusChanged")
    head = world.head()
    result = world.call("crm_workflows_test", {"workflow_id": w["id"], "notification_id": event[0]["n"]})
    assert result["trigger_matches"] and result["source"] == "event" and result["changed_nothing"]
    create, condition, webhook = result["steps"]
    assert create["tool"] == "crm_tasks_create" and create["arguments"]["title"] == "Kickoff Vetrina"
    assert create["arguments"]["deal_id"] == deal["id"]
    occurred = datetime.fromisoformat(result["event"]["occurred_at"]).astimezone(ZoneInfo("Europe/Rome"))
    assert create["arguments"]["due_date"] == (occurred.date() + timedelta(days=2)).isoformat()
    assert condition["branch"] == "else"
    assert webhook["arguments"]["body"]["data"]["deal"]["title"] == "Vetrina" and "not sent" in webhook["would"]
    sample = world.call("crm_workflows_test", {"workflow_id": w["id"], "sample": {"deal_id": deal["id"],
                                                                                  "fields": {"status": "rejected"}}})
    assert sample["source"] == "sample" and not sample["trigger_matches"]
    assert world.head() == head and receiver.requests == [] and world.tasks() == []
    err = world.call.error("crm_workflows_test", {"workflow_id": w["id"], "notification_id": 10**12})
    assert err.code == "not_found" and err.field == "notification_id"


def test_another_organizations_events_never_start_a_workflow(world, iso_runtime, fresh_database_url):
    w = world.workflow(WON, KICKOFF)
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        other = identity.create_organization(conn, "Other", "o@other.example", "Olga")
        olga = Caller(iso_runtime, identity.principal_for_token(conn, other.token))
    client = olga("crm_clients_create_lead", {"business_name": "Altrove"})
    deal = olga("crm_deals_create", {"title": "Altrove", "client_id": client["id"]})
    olga("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
    world.drain()
    assert world.runs(w["id"]) == [] and world.sql("SELECT * FROM workflow_pending") == []
    err = olga.error("crm_workflows_get", {"workflow_id": w["id"]})
    assert err.code == "not_found"


# -- e-mail --------------------------------------------------------------------------------------------------------
class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch):
    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("FLUSIA_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("FLUSIA_SMTP_FROM", "CRM <crm@rossi.example>")
    yield inbox
    controller.stop()


def test_send_email_renders_a_settings_template_and_never_sends_twice_after_a_crash(world, smtp):
    template = world.call("crm_settings_create_template", {
        "kind": "email", "name": "Grazie", "entity": "deal", "subject": "Grazie {{client.business_name}}",
        "text_body": "{{deal.title}} confermato da {{user.name}} ({{organization.name}})"})
    w = world.workflow(WON, ("send_email", {"template_id": template["id"]}),
                       ("wait", {"duration": "P1D"}), ("send_email", {"template_id": template["id"]}))
    client = world.call("crm_clients_create_lead", {"business_name": "Bianchi", "email": "info@bianchi.example"})
    deal = world.call("crm_deals_create", {"title": "Portale", "client_id": client["id"]})
    world.call("crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})
    world.drain()
    (message,) = smtp.messages
    assert message.rcpt_tos == ["info@bianchi.example"]
    content = message.content.decode()
    assert "Subject: Grazie Bianchi" in content and "Portale confermato da Anna Admin (Rossi)" in content
    (run,) = world.runs(w["id"])
    assert run["status"] == "waiting"
    # The process dies right after recording that the second e-mail is being sent:
    aggregate = world.rt.store.repository.get(UUID(run["id"]))
    aggregate.sending_step(w["added"][2]["step_id"])
    world.rt.store.save(aggregate)
    world.clock.advance(days=2)
    world.drain()
    assert len(smtp.messages) == 1  # not sent again: SMTP has no idempotency key, so at most once
    (run,) = world.runs(w["id"])
    assert run["status"] == "failed" and "not sent again" in run["error"]
    err = world.call.error("crm_workflows_add_step", {"workflow_id": w["id"], "type": "send_email",
                                                      "config": {"template_id": w["id"]}})
    assert err.code == "not_found" and err.field == "config.template_id"


def test_the_cli_shows_the_trigger_consumer_and_a_rebuild_keeps_it(world):
    from tests.conftest import flusia

    world.workflow(WON, KICKOFF)
    world.won_deal()
    world.rt.settle()
    env = {"DATABASE_URL": world.url}
    status = flusia("projections", "status", env=env)
    assert status["projections"]["workflow_triggers"]["lag"] == 0
    rebuilt = flusia("projections", "rebuild", "workflow_triggers", env=env)["rebuilt"]["workflow_triggers"]
    assert rebuilt["events_applied"] == 0 and rebuilt["kept"].startswith("not rebuildable")
    assert world.sql("SELECT count(*) AS n FROM workflow_pending")[0]["n"] == 1
