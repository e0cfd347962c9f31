"""Workflows through the real server and the `mcp` SDK client: an assistant builds "when a deal is accepted, create a
kickoff task for its owner due in 2 days", a deal is accepted, and the task and the run can be read back. The
server runs the workflow engine itself (started with the projector)."""

from __future__ import annotations

import time
from datetime import date, timedelta

import anyio
import pytest

from tests.mcp_helpers import call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_build_a_kickoff_workflow_accept_a_deal_and_read_the_task_and_the_run(server, make_org):
    org = make_org("Workflows")
    async with mcp_client(server.mcp_url, org.token) as client:
        triggers = {t["name"]: t for t in (await call(client, "crm_workflows_list_trigger_types"))["items"]}
        assert "to_status" in triggers["deal_status_changed"]["config_schema"]["properties"]
        steps = {s["name"]: s for s in (await call(client, "crm_workflows_list_step_types"))["items"]}
        assert steps["create_task"]["available"] and "due_in_days" in steps["create_task"]["config_schema"]["properties"]

        workflow = await call(client, "crm_workflows_create", {"name": "Kickoff when won"})
        assert workflow["status"] == "draft"
        await call(client, "crm_workflows_set_trigger", {"workflow_id": workflow["id"], "type": "deal_status_changed",
                                                         "config": {"to_status": "accepted"}})
        bad = await call_error(client, "crm_workflows_add_step", {
            "workflow_id": workflow["id"], "type": "create_task", "config": {"title": "Kickoff {{deal.name}}"}})
        assert bad["code"] == "invalid_arguments" and bad["field"] == "config.title" and "{{deal.name}}" in bad["message"]
        added = await call(client, "crm_workflows_add_step", {
            "workflow_id": workflow["id"], "type": "create_task",
            "config": {"title": "Kickoff {{deal.title}}", "due_in_days": 2, "assignee_id": "{{deal.owner_id}}"}})
        active = await call(client, "crm_workflows_activate", {"workflow_id": workflow["id"]})
        assert active["status"] == "active" and active["activated_by"] == str(org.user_id)

        lead = await call(client, "crm_clients_create_lead", {"business_name": "Verdi Costruzioni"})
        deal = await call(client, "crm_deals_create", {"title": "Nuovo sito", "client_id": lead["id"]})
        won = await call(client, "crm_deals_set_status", {"deal_id": deal["id"], "status": "accepted"})

        deadline = time.monotonic() + 60
        while True:  # the engine runs in the server; wait for it (polling, no timing assertion)
            runs = (await call(client, "crm_workflows_list_runs", {"workflow_id": workflow["id"]}))["items"]
            if runs and runs[0]["status"] not in ("running", "waiting"):
                break
            assert time.monotonic() < deadline, runs
            await anyio.sleep(0.2)
        (run,) = runs
        assert run["status"] == "succeeded" and run["trigger_entity_id"] == deal["id"]
        detail = await call(client, "crm_workflows_get_run", {"run_id": run["id"]})
        (step,) = detail["steps"]
        assert step["step_id"] == added["step_id"] and step["status"] == "done"
        assert step["result"]["tool"] == "crm_tasks_create"

        task = await call(client, "crm_tasks_get", {"task_id": step["result"]["id"]})
        assert task["title"] == "Kickoff Nuovo sito" and task["deal_id"] == deal["id"]
        assert task["client_id"] == lead["id"] and task["assignee_id"] == str(org.user_id)  # the deal's owner
        assert task["due_date"] == (date.fromisoformat(won["close_date"]) + timedelta(days=2)).isoformat()

        listed = (await call(client, "crm_workflows_list"))["items"]
        assert [(w["id"], w["last_run_status"], w["runs_count"]) for w in listed] == [
            (workflow["id"], "succeeded", 1)]
        dry = await call(client, "crm_workflows_test", {"workflow_id": workflow["id"],
                                                        "notification_id": run["trigger_notification_id"]})
        assert dry["trigger_matches"] and dry["steps"][0]["arguments"]["title"] == "Kickoff Nuovo sito"
        tasks = (await call(client, "crm_tasks_list", {"deal_id": deal["id"]}))["items"]
        assert len(tasks) == 1  # the dry run created nothing
