"""Workflows' domain without a database: given events, when a command, then events or an error."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import msgspec
import pytest

from domain import workflows as wf
from domain.deals import Deal
from domain.errors import DomainError
from domain.workflows import InvalidConfig, NotActivatable, Workflow, WorkflowRun

ORG = uuid4()
USER = uuid4()
WON = {"type": "deal_status_changed", "config": {"to_status": "accepted"}}


def events(aggregate) -> list[str]:
    return [type(e).__name__ for e in aggregate.collect_events()]


def new_workflow() -> Workflow:
    w = Workflow(org_id=ORG, name="Kickoff", description=None, created_by=USER)
    w.collect_events()
    return w


def won_workflow() -> Workflow:
    w = new_workflow()
    w.set_trigger("deal_status_changed", {"to_status": "accepted"})
    w.add_step("create_task", {"title": "Kickoff {{deal.title}}", "due_in_days": 2, "assignee_id": "{{deal.owner_id}}"})
    w.collect_events()
    return w


# -- building --------------------------------------------------------------------------------------------------
def test_a_workflow_starts_as_a_draft_and_records_its_trigger_and_steps():
    w = Workflow(org_id=ORG, name="Kickoff", description="when won", created_by=USER)
    w.set_trigger("deal_status_changed", {"to_status": "accepted"})
    step = w.add_step("create_task", {"title": "Kickoff {{deal.title}}"})
    assert events(w) == ["Created", "TriggerSet", "StepAdded"]
    assert w.status == "draft"
    assert w.trigger == {"type": "deal_status_changed", "config": {"to_status": "accepted", "pipeline_id": None}}
    assert [s["id"] for s in w.steps] == [step] and w.steps[0]["config"]["priority"] == "normal"


def test_setting_the_same_trigger_again_records_nothing():
    w = won_workflow()
    w.set_trigger("deal_status_changed", {"to_status": "accepted"})
    assert events(w) == []


@pytest.mark.parametrize("ttype, config, field", [
    ("deal_status_changed", {"to_status": "won"}, "config.to_status"),
    ("deal_status_changed", {}, "config.to_status"),
    ("deal_stage_changed", {"stage_id": "not-a-uuid"}, "config.stage_id"),
    ("schedule", {"cron": "every monday"}, "config.cron"),
    ("task_due", {"days_before": -1}, "config.days_before"),
    ("event", {"event_type": "Deal.Exploded"}, "config.event_type"),
    ("event", {"event_type": "Deal.Updated", "conditions": [{"field": "deal.colour", "op": "equals", "value": 1}]},
     "config.conditions[0].field"),
    ("deal_status_changed", {"to_status": "accepted", "extra": 1}, "config.extra"),
    ("nonsense", {}, "type"),
])
def test_a_bad_trigger_is_refused_naming_the_argument(ttype, config, field):
    w = new_workflow()
    with pytest.raises(InvalidConfig) as e:
        w.set_trigger(ttype, config)
    assert e.value.field == field and e.value.code == "invalid_arguments"
    assert events(w) == []


def test_an_unknown_placeholder_is_refused_naming_it():
    w = won_workflow()
    with pytest.raises(InvalidConfig) as e:
        w.add_step("create_task", {"title": "Call {{deal.titel}}"})
    assert e.value.field == "config.title" and "{{deal.titel}}" in e.value.message
    with pytest.raises(InvalidConfig) as e:
        w.add_step("add_note", {"body": "x {{deal.title"})
    assert "not closed" in e.value.message


def test_a_placeholder_the_trigger_does_not_provide_is_refused():
    w = new_workflow()
    w.set_trigger("client_created", {})
    with pytest.raises(InvalidConfig) as e:
        w.add_step("create_task", {"title": "Call about {{deal.title}}"})
    assert "not available for this trigger" in e.value.message and "client.business_name" in e.value.message
    w.add_step("create_task", {"title": "Call {{client.business_name}} ({{trigger.user.name}})"})


def test_without_a_trigger_only_known_placeholders_are_checked_and_activation_checks_the_rest():
    w = new_workflow()
    w.add_step("create_task", {"title": "Kickoff {{deal.title}}"})
    w.set_trigger("client_created", {})
    with pytest.raises(NotActivatable) as e:
        w.activate(USER, {"tasks": "rw"})
    assert "step 1 (create_task" in e.value.message and "deal.title" in e.value.message


def test_step_rules():
    w = won_workflow()
    with pytest.raises(InvalidConfig, match="exactly one of duration or until"):
        w.add_step("wait", {})
    with pytest.raises(InvalidConfig, match="at most a year"):
        w.add_step("wait", {"duration": "P13M"})
    with pytest.raises(InvalidConfig) as e:
        w.add_step("assign", {"entity": "task", "user_id": str(USER)})
    assert e.value.field == "config.entity"
    with pytest.raises(InvalidConfig) as e:
        w.add_step("create_task", {"title": "x", "assignee_id": "{{deal.title}}"})
    assert e.value.field == "config.assignee_id"
    with pytest.raises(InvalidConfig) as e:
        w.add_step("update_field", {"field": "deal.status", "value": "won"})
    assert e.value.field == "config.value"
    with pytest.raises(InvalidConfig):
        w.add_step("send_whatsapp_template", {"template_name": "hello"}, unavailable={"send_whatsapp_template": "no"})
    w.add_step("wait", {"until": "deal.expected_close_date", "offset_days": -1})
    w.add_step("update_field", {"field": "deal.status", "value": "open"})


def test_conditions_nest_and_the_tree_can_be_reordered_and_pruned():
    w = won_workflow()
    first = w.steps[0]["id"]
    cond = w.add_step("condition", {"conditions": [{"field": "deal.value", "op": "greater_than", "value": 10000}]})
    big = w.add_step("add_note", {"body": "Big one: {{deal.value}}"}, parent_step_id=cond, branch="then")
    small = w.add_step("stop", {}, parent_step_id=cond, branch="else")
    assert wf.count_steps(w.steps) == 4
    with pytest.raises(DomainError) as e:
        w.add_step("stop", {}, parent_step_id=first)
    assert e.value.field == "parent_step_id"
    w.collect_events()
    w.reorder_steps([cond, first])
    assert [s["id"] for s in w.steps] == [cond, first]
    with pytest.raises(DomainError) as e:
        w.reorder_steps([cond])
    assert e.value.field == "step_ids"
    w.remove_step(cond)
    assert [s["id"] for s in w.steps] == [first] and wf.find_step(w.steps, big) is None
    assert wf.find_step(w.steps, small) is None
    assert events(w) == ["StepsReordered", "StepRemoved"]


def test_every_step_event_carries_the_resulting_tree():
    w = won_workflow()
    w.add_step("stop", {}, position=1)
    (e,) = w.collect_events()
    assert e.steps == w.steps and [s["type"] for s in e.steps] == ["stop", "create_task"]


# -- activation ------------------------------------------------------------------------------------------------
def test_activation_needs_a_trigger_and_steps_and_records_the_activator_and_grants():
    w = new_workflow()
    with pytest.raises(NotActivatable, match="set a trigger"):
        w.activate(USER, {})
    w.set_trigger("deal_status_changed", {"to_status": "accepted"})
    with pytest.raises(NotActivatable, match="add at least one step"):
        w.activate(USER, {})
    w.add_step("create_task", {"title": "x"})
    w.collect_events()
    w.activate(USER, {"tasks": "rw", "clients": "r"})
    assert events(w) == ["Activated"] and w.status == "active" and w.grants == {"tasks": "rw", "clients": "r"}
    w.activate(USER, {"tasks": "rw", "clients": "r"})
    assert events(w) == []
    w.pause("deactivated by Mario", by=USER)
    assert events(w) == ["Paused"] and (w.status, w.status_reason) == ("paused", "deactivated by Mario")


# -- conditions and triggers -----------------------------------------------------------------------------------
CTX = {"deal.value": "12000.00", "deal.title": "Sito", "event.status": "accepted", "event.previous": "open",
       "event.changes.title": "Nuovo", "deal.expected_close_date": "2026-05-01", "client.email": None}


@pytest.mark.parametrize("field, op, value, expected", [
    ("deal.value", "greater_than", 10000, True), ("deal.value", "less_than", "9999.5", False),
    ("deal.title", "equals", "sito", True), ("deal.title", "not_equals", "Sito", False),
    ("event.status", "in", ["accepted", "rejected"], True), ("event.status", "not_in", ["open"], True),
    ("event.status", "changed_to", "accepted", True), ("event.changes.title", "changed_to", "Nuovo", True),
    ("deal.expected_close_date", "greater_than", "2026-04-30", True), ("client.email", "is_empty", None, True),
    ("deal.title", "is_not_empty", None, True), ("deal.title", "greater_than", 5, False),
])
def test_conditions(field, op, value, expected):
    assert wf.holds(wf.Condition(field=field, op=op, value=value), CTX) is expected


def test_the_whole_trigger_test_checks_what_the_consumer_could_not():
    with_pipeline = {"type": "deal_status_changed", "config": {"to_status": "accepted", "pipeline_id": str(USER)}}
    assert wf.trigger_holds(with_pipeline, {**CTX, "deal.pipeline_id": str(USER)})[0]
    assert not wf.trigger_holds(with_pipeline, {**CTX, "deal.pipeline_id": str(ORG)})[0]
    event = {"type": "event", "config": {"event_type": "Deal.Updated",
                                         "conditions": [{"field": "event.changes.title", "op": "is_not_empty"}]}}
    assert wf.trigger_holds(event, CTX)[0] and not wf.trigger_holds(event, {})[0]


def test_the_consumers_match_values_agree_with_the_trigger_config():
    deal = Deal.create(ORG, client_id=None, title="t", pipeline=_pipeline(), stage_id=None, currency="EUR")
    deal.set_status("accepted", today=date.today())
    changed = deal.collect_events()[-1]
    assert wf.TOPIC_MATCH[type(changed)](changed) == wf.match_value("deal_status_changed", {"to_status": "accepted"})
    assert wf.match_value("task_completed", {}) is None


def _pipeline():
    from domain.pipelines import Pipeline

    return Pipeline(org_id=ORG, name="P", stages=[{"id": str(uuid4()), "name": "A", "probability": 10}],
                    is_default=False)


def test_every_event_type_is_a_domain_event_with_its_fields():
    assert {"Deal.StatusChanged", "Client.Created", "Task.Completed", "Activity.Created"} <= set(wf.EVENT_TYPES)
    assert wf.event_fields(wf.EVENT_TYPES["Deal.StatusChanged"]) == ["status", "previous", "close_date", "reason"]
    names = wf.available_placeholders({"type": "event", "config": {"event_type": "Client.Updated"}})
    assert "event.changes.business_name" in names and "client.business_name" in names and "deal.title" not in names


# -- durations, dates and schedules ----------------------------------------------------------------------------
def test_durations_and_date_waits():
    since = datetime(2026, 1, 30, 10, 0, tzinfo=UTC)
    assert wf.wait_until({"duration": "P2D"}, {}, since, "Europe/Rome") == since + timedelta(days=2)
    assert wf.wait_until({"duration": "P1M"}, {}, since, "Europe/Rome").day == 28  # calendar-aware
    until = wf.wait_until({"until": "task.due_date", "offset_days": -1, "at_hour": 9}, {"task.due_date": "2026-03-10"},
                          since, "Europe/Rome")
    assert until.isoformat() == "2026-03-09T09:00:00+01:00"
    assert wf.wait_until({"until": "task.due_date"}, {"task.due_date": None}, since, "Europe/Rome") is None
    for bad in ("P", "PT", "P0D", "2D", "P1Y1D", "P400D"):
        with pytest.raises(InvalidConfig):
            wf.parse_duration(bad)


def test_cron_ticks_in_the_organizations_time_zone():
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # the night of the switch to summer time in Rome follows
    tick = wf.next_cron("0 9 * * *", after, "Europe/Rome")
    assert tick.isoformat() == "2026-03-29T09:00:00+02:00"
    with pytest.raises(InvalidConfig):
        wf.check_cron("61 * * * *")


# -- runs ------------------------------------------------------------------------------------------------------
def test_a_runs_id_is_the_same_for_the_same_workflow_and_trigger():
    w = uuid4()
    assert wf.run_id(w, "event:7") == wf.run_id(w, "event:7") != wf.run_id(w, "event:8")


def test_a_run_walks_into_the_branch_its_condition_chose_and_records_waits():
    w = won_workflow()
    cond = w.add_step("condition", {"conditions": [{"field": "deal.value", "op": "greater_than", "value": 1}]})
    then = w.add_step("wait", {"duration": "P2D"}, parent_step_id=cond)
    else_ = w.add_step("stop", {}, parent_step_id=cond, branch="else")
    last = w.add_step("add_note", {"body": "done"})
    started = datetime(2026, 1, 1, tzinfo=UTC)
    run = WorkflowRun.start(wf.run_id(w.id, "event:1"), org_id=ORG, workflow_id=w.id, workflow_version=w.version,
                      workflow_name=w.name, trigger={"type": "deal_status_changed", "occurred_at": started.isoformat()},
                      depth=1, context={})
    assert wf.next_step(w.steps, run.done)["type"] == "create_task"
    run.step_done(w.steps[0], {"tool": "crm_tasks_create"})
    run.step_done(wf.find_step(w.steps, cond), {"branch": "then"})
    assert wf.next_step(w.steps, run.done)["id"] == then
    run.wait(wf.find_step(w.steps, then), started + timedelta(days=2))
    assert run.status == "waiting" and run.since() == started
    run.step_done(wf.find_step(w.steps, then), {})
    assert run.since() == started + timedelta(days=2) and run.status == "running"
    assert wf.next_step(w.steps, run.done)["id"] == last
    run.step_done(wf.find_step(w.steps, last), {})
    assert wf.next_step(w.steps, run.done) is None
    assert else_ not in run.done
    run.finish()
    assert [type(e).__name__ for e in run.collect_events()] == [
        "Started", "StepDone", "StepDone", "WaitingUntil", "StepDone", "StepDone", "Finished"]


def test_a_failed_step_finishes_the_run_as_failed_and_a_finished_run_cannot_stop():
    w = won_workflow()
    run = WorkflowRun.start(uuid4(), org_id=ORG, workflow_id=w.id, workflow_version=1, workflow_name="x",
                      trigger={"occurred_at": datetime.now(UTC).isoformat()}, depth=1, context={})
    run.step_failed(w.steps[0], "crm_tasks_create: not allowed", "permission_denied")
    run.stop("late")
    assert run.status == "failed"
    assert [type(e).__name__ for e in run.collect_events()] == ["Started", "StepFailed", "Finished"]


def test_configs_have_json_schemas_for_the_catalogue():
    for t in [*wf.TRIGGER_TYPES.values(), *wf.STEP_TYPES.values()]:
        schema = msgspec.json.schema(t.config)
        assert "$ref" in schema or schema.get("type") == "object"
