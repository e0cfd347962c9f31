"""Workflows: the `crm_workflows_*` tools. Build an automation (create, set_trigger, add_step, ...), activate it,
dry-run it (`test`), and read its runs. The engine that runs them is application/workflow_engine.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic
from msgspec import Meta, Struct

from application.errors import InvalidArguments
from application.identity import ensure_user
from application.organization import org_settings
from application.registry import json_schema
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, sent
from application.toolset import Toolset
from application import workflow_engine as engine
from domain import workflows as wf
from domain.errors import Conflict, DomainError, NotFound
from domain.workflows import Workflow
from projections import settings as settings_q
from projections import workflows as workflows_q

WorkflowId = Annotated[UUID, Meta(description="The workflow id (from crm_workflows_list or crm_workflows_create).")]
StepId = Annotated[UUID, Meta(description="A step id (from crm_workflows_get: steps[].id, nested in then/else).")]
RunId = Annotated[UUID, Meta(description="A run id (from crm_workflows_list_runs).")]
Name = Annotated[str, Meta(min_length=1, max_length=200, description="e.g. 'Kickoff task when a deal is won'.")]
Description = Annotated[str, Meta(max_length=5000)]
Config = Annotated[dict[str, Any], Meta(description="The type's config object; its JSON Schema is in "
                                                    "crm_workflows_list_trigger_types / list_step_types.")]
TriggerName = Literal[tuple(wf.TRIGGER_TYPES)]  # type: ignore[valid-type]
StepName = Literal[tuple(wf.STEP_TYPES)]  # type: ignore[valid-type]
Status = Literal[wf.STATUSES]  # type: ignore[valid-type]
RunStatus = Literal[wf.RUN_STATUSES]  # type: ignore[valid-type]
Branch = Annotated[Literal["then", "else"], Meta(description="With parent_step_id: the condition's branch (default then).")]
ParentStep = Annotated[UUID, Meta(description="A condition step's id, to place the step in one of its branches.")]


# -- outputs ---------------------------------------------------------------------------------------------------
class TriggerOut(Struct, kw_only=True):
    type: str
    config: dict[str, Any]


class WorkflowSummary(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    description: str | None = None
    status: Status
    status_reason: Annotated[str | None, Meta(description="Why it is paused (deactivated by whom, or by the system).")] = None
    trigger_type: str | None = None
    steps_count: int = 0
    activated_by: UUID | None = None
    activated_by_name: str | None = None
    activated_at: datetime | None = None
    runs_count: int = 0
    last_run_id: UUID | None = None
    last_run_status: str | None = None
    last_run_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class WorkflowDetail(WorkflowSummary, kw_only=True, omit_defaults=True):
    trigger: TriggerOut | None = None
    steps: Annotated[list[dict[str, Any]], Meta(description=(
        "In order; each {id, type, config}, a condition also {then: [...], else: [...]}."))] = []
    has_webhook_secret: Annotated[bool, Meta(description="A signing secret exists (it was shown once).")] = False
    runs_cut_by_loop_limit: Annotated[int, Meta(description=(
        "Triggers not started because they came from a chain of runs deeper than 3 (a loop)."))] = 0
    created_by: UUID | None = None


class StepAdded(WorkflowDetail, kw_only=True, omit_defaults=True):
    step_id: str
    webhook_secret: Annotated[str | None, Meta(description=(
        "Only when this answer created it: the secret receivers verify X-Flusia-Signature with (HMAC-SHA256 of the "
        "body). Shown once; store it now."))] = None


class AddedStep(Struct, kw_only=True, omit_defaults=True):
    """What add_step returns before presenting: the sealed secret (never the secret itself) is what may be kept."""

    workflow_id: UUID
    step_id: str
    sealed_secret: str | None = None


class TypeOut(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str
    config_schema: dict[str, Any]
    placeholders: Annotated[list[str] | None, Meta(description="Placeholders its runs fill ({{name}} in step texts).")] = None
    timer: bool | None = None
    available: bool | None = None
    unavailable_reason: str | None = None
    open_world: bool | None = None


class TypeList(Struct):
    items: list[TypeOut]


class RunSummary(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    workflow_id: UUID
    workflow_name: str
    status: RunStatus
    trigger_type: str
    trigger_event_type: str | None = None
    trigger_notification_id: Annotated[int | None, Meta(description="The triggering event (crm_workflows_test can replay it).")] = None
    trigger_entity_type: str | None = None
    trigger_entity_id: UUID | None = None
    triggered_at: datetime | None = None
    depth: Annotated[int, Meta(description="1 for a trigger a person caused; n+1 for one a run of depth n caused.")]
    waiting_until: datetime | None = None
    error: str | None = None
    stop_reason: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    duration_ms: int | None = None


class RunStep(Struct, kw_only=True, omit_defaults=True):
    seq: int
    step_id: str | None = None
    step_type: str | None = None
    status: Literal["sending", "done", "failed", "waiting"]
    attempt: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    waiting_until: datetime | None = None
    at: datetime


class RunDetail(RunSummary, kw_only=True, omit_defaults=True):
    workflow_version: int
    steps: list[RunStep] = []


class DryRunEvent(Struct, kw_only=True, omit_defaults=True):
    notification_id: int | None = None
    event_type: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    occurred_at: str | None = None


class DryRunStep(Struct, kw_only=True, omit_defaults=True):
    step_id: str
    type: str
    would: str
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    branch: str | None = None


class DryRunResult(Struct, kw_only=True, omit_defaults=True):
    workflow_id: UUID
    source: Annotated[Literal["event", "sample", "latest_event", "timer"], Meta(description="What it ran against.")]
    event: DryRunEvent | None = None
    trigger_matches: bool
    trigger_reason: str
    steps: list[DryRunStep] = []
    changed_nothing: Annotated[bool, Meta(description="Always true: a dry run writes and sends nothing.")]


# -- presenting ----------------------------------------------------------------------------------------------
def _summary_fields(row: dict[str, Any]) -> dict[str, Any]:
    trigger = row.get("trigger")
    return {**row, "trigger_type": trigger["type"] if trigger else None}


def present_workflow(ctx: QueryContext, workflow_id: UUID) -> WorkflowDetail:
    row = workflows_q.get_workflow(ctx.conn, ctx.org_id, workflow_id)
    if row is None:
        raise NotFound("workflow", workflow_id, field="workflow_id")
    return msgspec.convert({**_summary_fields(row), "has_webhook_secret": row["has_secret"]}, WorkflowDetail)


def present_added(ctx: QueryContext, added: AddedStep) -> StepAdded:
    detail = msgspec.to_builtins(present_workflow(ctx, added.workflow_id))
    secret = engine.reveal(ctx.conn, ctx.org_id, added.workflow_id, added.sealed_secret) if added.sealed_secret else None
    return msgspec.convert({**detail, "step_id": added.step_id, "webhook_secret": secret}, StepAdded)


def _run(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("finished_at") and row.get("started_at"):
        row["duration_ms"] = int((row["finished_at"] - row["started_at"]).total_seconds() * 1000)
    return row


workflows = Toolset(
    "workflows", title="Workflows",
    description="Automations: a trigger (deal/lead/task events, any event with conditions, schedules, due dates) and "
                "steps (tasks, notes, field changes, assignment, waits, conditions, webhooks); dry runs and run history",
    aggregate=Workflow, id_field="workflow_id", id_type=WorkflowId, output=WorkflowDetail, present=present_workflow,
    exists=workflows_q.workflow_exists, subject="a workflow",
)


# -- reading ---------------------------------------------------------------------------------------------------
class ListWorkflows(ListQuery, kw_only=True):
    """List the organization's automations with their status (draft, active, paused) and last run, newest first.
    Pages with `cursor`/`next_cursor`."""

    status: Annotated[Status | None, Meta(description="Only draft, active or paused ones.")] = None


@workflows.query("list", output=Page[WorkflowSummary])
def list_workflows(q: ListWorkflows, ctx: QueryContext) -> Page[WorkflowSummary]:
    rows, cursor = workflows_q.list_workflows(ctx.conn, ctx.org_id, status=q.status, limit=q.limit, cursor=q.cursor)
    return Page(items=[msgspec.convert(_summary_fields(r), WorkflowSummary) for r in rows], next_cursor=cursor)


class GetWorkflow(Query, kw_only=True):
    """One automation with its trigger, its steps in order (ids for update_step/remove_step/reorder_steps;
    a condition's nested then/else steps), status and last run."""

    workflow_id: WorkflowId


workflows.get(GetWorkflow)


class ListTriggerTypes(Query, kw_only=True):
    """The trigger types a workflow can have, each with its description, the JSON Schema of its `config` (for
    crm_workflows_set_trigger) and the placeholders its runs fill. Call it before building a workflow."""


@workflows.query("list_trigger_types", output=TypeList)
def list_trigger_types(q: ListTriggerTypes, ctx: QueryContext) -> TypeList:
    items = []
    for t in wf.TRIGGER_TYPES.values():
        sample = {"event_type": "Deal.Updated"} if t.name == "event" else {}
        names = wf.available_placeholders({"type": t.name, "config": sample}) or set()
        if t.name == "event":
            names = {n for n in names if not n.startswith(("deal.", "client.", "event."))} | {"event.<field>",
                                                                                             "<entity>.<field>"}
        items.append(TypeOut(name=t.name, description=t.description, config_schema=json_schema(t.config),
                             placeholders=sorted(names), timer=t.timer))
    return TypeList(items=items)


class ListStepTypes(Query, kw_only=True):
    """The step types a workflow can run, each with its description, the JSON Schema of its `config` (for
    crm_workflows_add_step) and whether this installation can run it (and why not)."""


@workflows.query("list_step_types", output=TypeList)
def list_step_types(q: ListStepTypes, ctx: QueryContext) -> TypeList:
    unavailable = engine.unavailable_steps(workflows.registry)
    return TypeList(items=[
        TypeOut(name=s.name, description=s.description, config_schema=json_schema(s.config),
                available=s.name not in unavailable, unavailable_reason=unavailable.get(s.name), open_world=s.open_world)
        for s in wf.STEP_TYPES.values()])


class ListRuns(ListQuery, kw_only=True):
    """Runs of one automation, newest first: triggering event, status (running, waiting, succeeded, failed,
    stopped), duration and error. Pages with `cursor`/`next_cursor`; details with crm_workflows_get_run."""

    workflow_id: WorkflowId
    status: Annotated[RunStatus | None, Meta(description="Only runs in this status.")] = None


@workflows.query("list_runs", output=Page[RunSummary])
def list_runs(q: ListRuns, ctx: QueryContext) -> Page[RunSummary]:
    workflows.require(ctx, q.workflow_id)
    rows, cursor = workflows_q.list_runs(ctx.conn, ctx.org_id, q.workflow_id, status=q.status, limit=q.limit,
                                         cursor=q.cursor)
    return Page(items=[msgspec.convert(_run(r), RunSummary) for r in rows], next_cursor=cursor)


class GetRun(Query, kw_only=True):
    """One run with each step's record in order: sending (before an outside call), done (its result, e.g. the id
    of the task it created), failed (the error), waiting (until when)."""

    run_id: RunId


@workflows.query("get_run", output=RunDetail)
def get_run(q: GetRun, ctx: QueryContext) -> RunDetail:
    row = workflows_q.get_run(ctx.conn, ctx.org_id, q.run_id)
    if row is None:
        raise NotFound("workflow run", q.run_id, field="run_id")
    return msgspec.convert(_run(row), RunDetail)


# -- building ------------------------------------------------------------------------------------------------
class CreateWorkflow(Command, kw_only=True):
    """Create an automation, as a draft: nothing runs until crm_workflows_activate. Then set its trigger
    (crm_workflows_set_trigger) and add steps (crm_workflows_add_step)."""

    name: Name
    description: Description | None = None


@workflows.command("create", output=WorkflowDetail, returns=UUID, present=present_workflow)
def create_workflow(cmd: CreateWorkflow, uow: UnitOfWork) -> UUID:
    workflow = Workflow(org_id=uow.org_id, name=cmd.name, description=cmd.description, created_by=uow.principal.user_id)
    uow.add(workflow)
    return workflow.id


class UpdateWorkflow(Command, kw_only=True):
    """Rename an automation or change its description (trigger and steps have their own tools)."""

    workflow_id: WorkflowId
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | None | msgspec.UnsetType = msgspec.UNSET


workflows.update(UpdateWorkflow, lambda w, cmd, uow: sent(cmd, ("name", "description")))


class DeleteWorkflow(Command, kw_only=True):
    """Delete an automation: it stops reacting at once and its waiting runs stop; its history stays in the audit
    trail. To only stop it for a while, use crm_workflows_deactivate."""

    workflow_id: WorkflowId


workflows.delete(DeleteWorkflow)


class SetTrigger(Command, kw_only=True):
    """Set what starts the automation: a trigger type and its config, e.g. type='deal_status_changed',
    config={'to_status': 'accepted'}. Types and config schemas: crm_workflows_list_trigger_types. Placeholders in
    steps must be ones the trigger provides."""

    workflow_id: WorkflowId
    type: TriggerName
    config: Config = {}


workflows.act("set_trigger", SetTrigger, lambda w, cmd, uow: w.set_trigger(cmd.type, cmd.config), presents_entity=True)


def _check_refs(uow: UnitOfWork, step: dict[str, Any], workflow: Workflow) -> None:
    """What the step names outside the workflow: a fixed user must be an active user; a webhook URL must be
    https (http only to loopback where FLUSIA_WEBHOOK_ALLOW_LOOPBACK allows it); an e-mail template must be an
    e-mail template for one of the trigger's entities."""
    config = step["config"]
    if step["type"] == "send_email":
        try:
            template = settings_q.get_template(uow.conn, uow.org_id, UUID(str(config["template_id"])))
        except NotFound:
            raise NotFound("template", config["template_id"], field="config.template_id") from None
        if template["kind"] != "email":
            raise DomainError(f"template {config['template_id']} is a {template['kind']} template, not an e-mail one",
                              field="config.template_id")
        subjects = (wf.trigger_subjects(workflow.trigger["type"], workflow.trigger["config"])
                    if workflow.trigger else None)
        if subjects is not None and template["entity"] not in subjects:
            raise DomainError(f"the template is for a {template['entity']}, which this trigger does not provide",
                              field="config.template_id")
    for name in ("assignee_id", "user_id"):
        ref = config.get(name)
        if ref and not ref.startswith("{{"):
            ensure_user(uow.conn, uow.org_id, UUID(ref), field=f"config.{name}")
    if step["type"] == "webhook":
        engine.check_webhook_url(config["url"], engine.EngineSettings.from_env().allow_loopback)


class AddStep(Command, kw_only=True):
    """Add a step (default: last), e.g. type='create_task', config={'title': 'Kickoff {{deal.title}}',
    'due_in_days': 2, 'assignee_id': '{{deal.owner_id}}'}; types and config schemas: crm_workflows_list_step_types.
    Nest it in a condition with parent_step_id and branch. The first webhook step returns the workflow's signing
    secret once (webhook_secret)."""

    workflow_id: WorkflowId
    type: StepName
    config: Config = {}
    position: Annotated[int, Meta(ge=1, le=wf.MAX_STEPS, description="1-based place among its level's steps.")] | None = None
    parent_step_id: ParentStep | None = None
    branch: Branch | None = None


@workflows.command("add_step", output=StepAdded, returns=AddedStep, present=present_added, reads=("settings",))
def add_step(cmd: AddStep, uow: UnitOfWork) -> AddedStep:
    workflow: Workflow = uow.get(Workflow, cmd.workflow_id, field="workflow_id")
    step_id = workflow.add_step(cmd.type, cmd.config, position=cmd.position,
                                parent_step_id=None if cmd.parent_step_id is None else str(cmd.parent_step_id),
                                branch=cmd.branch, unavailable=engine.unavailable_steps(workflows.registry))
    _check_refs(uow, wf.find_step(workflow.steps, step_id), workflow)
    sealed = None
    if cmd.type == "webhook" and not workflow.has_secret:
        sealed, write = engine.new_webhook_secret(uow.conn, uow.org_id, workflow.id)
        uow.side_writes.append(write)
        workflow.issue_secret()
    return AddedStep(workflow_id=workflow.id, step_id=step_id, sealed_secret=sealed)


class UpdateStep(Command, kw_only=True):
    """Replace a step's config (its type stays; to change the type remove it and add another). The whole config
    is given, as in crm_workflows_add_step."""

    workflow_id: WorkflowId
    step_id: StepId
    config: Config


def _update_step(w: Workflow, cmd: UpdateStep, uow: UnitOfWork) -> None:
    w.update_step(str(cmd.step_id), cmd.config, unavailable=engine.unavailable_steps(workflows.registry))
    _check_refs(uow, wf.find_step(w.steps, str(cmd.step_id)), w)


workflows.act("update_step", UpdateStep, _update_step, presents_entity=True, reads=("settings",))


class RemoveStep(Command, kw_only=True):
    """Remove a step (a condition goes with its nested steps). Runs already started keep the version they
    started with."""

    workflow_id: WorkflowId
    step_id: StepId


workflows.act("remove_step", RemoveStep, lambda w, cmd, uow: w.remove_step(str(cmd.step_id)), destructive=True,
              presents_entity=True)


class ReorderSteps(Command, kw_only=True):
    """Set the order of the steps of one level: every step id of that level once, in the new order (top level, or
    a condition's branch with parent_step_id and branch)."""

    workflow_id: WorkflowId
    step_ids: Annotated[list[UUID], Meta(min_length=1, max_length=wf.MAX_STEPS)]
    parent_step_id: ParentStep | None = None
    branch: Branch | None = None


workflows.act("reorder_steps", ReorderSteps, lambda w, cmd, uow: w.reorder_steps(
    [str(i) for i in cmd.step_ids], parent_step_id=None if cmd.parent_step_id is None else str(cmd.parent_step_id),
    branch=cmd.branch), presents_entity=True)


# -- status --------------------------------------------------------------------------------------------------
class ActivateWorkflow(Command, kw_only=True):
    """Activate an automation: from now on its trigger starts runs, acting as you with the permissions you have
    now (if your user is deactivated, it pauses). Refused, naming the step, when a step needs a permission you lack
    or a placeholder the trigger does not provide."""

    workflow_id: WorkflowId


def _activate(w: Workflow, cmd: ActivateWorkflow, uow: UnitOfWork) -> None:
    if uow.principal.workflow_run_id is not None:
        raise DomainError("a workflow cannot activate workflows", field="workflow_id")
    w.activate(uow.principal.user_id, uow.principal.grants)
    problem = engine.missing_permissions(workflows.registry, w, uow.principal.grants)
    if problem:
        raise wf.NotActivatable(problem, field="workflow_id")


workflows.act("activate", ActivateWorkflow, _activate, presents_entity=True)


class DeactivateWorkflow(Command, kw_only=True):
    """Deactivate (pause) an automation: it stops reacting, and runs waiting in it stop at their next step.
    crm_workflows_activate turns it on again."""

    workflow_id: WorkflowId


def _deactivate(w: Workflow, cmd: DeactivateWorkflow, uow: UnitOfWork) -> None:
    if w.status != "active":
        raise Conflict(f"the workflow is {w.status}, not active", field="workflow_id")
    row = uow.conn.execute("SELECT name FROM users WHERE organization_id = %s AND id = %s",
                           (uow.org_id, uow.principal.user_id)).fetchone()
    w.pause(f"deactivated by {row['name'] if row else 'a user'}", by=uow.principal.user_id)


workflows.act("deactivate", DeactivateWorkflow, _deactivate, destructive=True, presents_entity=True)


# -- dry run -------------------------------------------------------------------------------------------------
class SampleEvent(Struct, kw_only=True, forbid_unknown_fields=True):
    """A made-up trigger: the entity it is about and the event's own fields."""

    deal_id: Annotated[UUID | None, Meta(description="A deal to take deal.* and client.* values from.")] = None
    client_id: Annotated[UUID | None, Meta(description="A lead/client to take client.* values from.")] = None
    task_id: Annotated[UUID | None, Meta(description="A task to take task.* values from.")] = None
    fields: Annotated[dict[Annotated[str, Meta(max_length=100)], str | int | float | bool | None], Meta(
        description="The event's fields, e.g. {'status': 'accepted'} (they fill event.<field>).")] = {}


class DryRunWorkflow(Query, kw_only=True):
    """Dry-run an automation: against a real past event (notification_id, e.g. a run's trigger_notification_id),
    a sample, or by default the organization's latest event of the trigger's type. Shows whether the trigger
    matches and what each step would do (the tool call and its arguments). Changes and sends nothing."""

    workflow_id: WorkflowId
    notification_id: Annotated[int, Meta(ge=1, description="A stored event of this organization.")] | None = None
    sample: SampleEvent | None = None


TEST_READS = ("clients", "deals", "tasks", "activities", "projects")


@workflows.query("test", output=DryRunResult, reads=TEST_READS)
def dry_run_workflow(q: DryRunWorkflow, ctx: QueryContext) -> DryRunResult:
    row = workflows_q.get_workflow(ctx.conn, ctx.org_id, q.workflow_id)
    if row is None:
        raise NotFound("workflow", q.workflow_id, field="workflow_id")
    if row["trigger"] is None:
        raise DomainError("set a trigger first (crm_workflows_set_trigger)", field="workflow_id")
    if q.notification_id is not None and q.sample is not None:
        raise InvalidArguments("give notification_id or sample, not both", field="sample")
    return msgspec.convert(dry_run(ctx.conn, ctx.org_id, row, q.notification_id, q.sample), DryRunResult)


def dry_run(conn: Any, org_id: UUID, workflow: dict[str, Any], notification_id: int | None,
            sample: SampleEvent | None) -> dict[str, Any]:
    trigger = workflow["trigger"]
    now = datetime.now(UTC)
    event = aggregate = upto = user = None
    source = "sample"
    if notification_id is not None or (sample is None and not wf.TRIGGER_TYPES[trigger["type"]].timer):
        if notification_id is not None:
            stored, source = workflows_q.find_event(conn, org_id, notification_id), "event"
            if stored is None:
                raise NotFound("event", notification_id, field="notification_id")
        else:
            topic = get_topic(wf.trigger_events(trigger["type"], trigger["config"])[0])
            stored, source = workflows_q.latest_event(conn, org_id, topic), "latest_event"
            if stored is None:
                raise DomainError("no past event of this trigger's type in the organization yet; give a sample",
                                  field="sample")
        t, event, aggregate, upto, user = engine.event_trigger(conn, org_id, stored)
        t.type = trigger["type"]
    else:
        sample = sample or SampleEvent()
        ids = [i for i in (sample.task_id, sample.deal_id, sample.client_id) if i is not None]
        if ids:
            aggregate = engine.load_at(conn, org_id, ids[0])
            if aggregate is None:
                field = ("task_id", "deal_id", "client_id")[[sample.task_id, sample.deal_id, sample.client_id].index(ids[0])]
                raise NotFound("entity", ids[0], field=f"sample.{field}")
        source = "sample" if sample.fields or ids or not wf.TRIGGER_TYPES[trigger["type"]].timer else "timer"
        t = wf.Trigger(type=trigger["type"], key="dry-run", occurred_at=now,
                       entity_type=type(aggregate).__name__.lower() if aggregate is not None else None,
                       entity_id=getattr(aggregate, "id", None))
    context = engine.build_context(conn, org_id, workflow["id"], workflow["name"], UUID(int=0), t, event, aggregate,
                                   upto, user)
    if event is None and sample is not None:
        context.update({f"event.{k}": v for k, v in sample.fields.items()})
    matches, reason = wf.trigger_holds(trigger, context)
    timezone = org_settings(conn, org_id)["timezone"]
    steps: list[dict[str, Any]] = []
    _walk(conn, workflow, workflow["steps"], context, t, now, timezone, steps)
    return {"workflow_id": workflow["id"], "source": source, "trigger_matches": matches, "trigger_reason": reason,
            "event": {"notification_id": t.notification_id, "event_type": t.event_type, "entity_type": t.entity_type,
                      "entity_id": None if t.entity_id is None else str(t.entity_id),
                      "occurred_at": t.occurred_at.isoformat()},
            "steps": steps, "changed_nothing": True}


def _walk(conn: Any, workflow: dict[str, Any], steps: list[dict[str, Any]], context: dict[str, Any], trigger: Any,
          since: datetime, timezone: str, out: list[dict[str, Any]]) -> bool:
    """Describe each step as a run would take it; False once a stop step ends the run."""
    from zoneinfo import ZoneInfo

    for step in steps:
        kind, config = step["type"], step["config"]
        item: dict[str, Any] = {"step_id": step["id"], "type": kind}
        out.append(item)
        if kind == "wait":
            until = wf.wait_until(config, context, since, timezone)
            if until is None:
                item["would"] = "go on at once (the date field is empty)"
            else:
                item["would"] = f"wait until {until.isoformat()}"
                since = max(since, until)
        elif kind == "condition":
            conditions = [msgspec.convert(c, wf.Condition) for c in config["conditions"]]
            branch = "then" if wf.all_hold(conditions, context, config.get("match", "all")) else "else"
            item.update(would=f"take the {branch} branch", branch=branch)
            if not _walk(conn, workflow, step.get(branch) or [], context, trigger, since, timezone, out):
                return False
        elif kind == "stop":
            item["would"] = "stop the run"
            return False
        elif kind == "webhook":
            body = engine.webhook_body(UUID(int=0), step, context, trigger.as_dict(), workflow["id"], workflow["name"])
            item.update(would=f"POST to {config['url']} (signed, with an Idempotency-Key; not sent now)",
                        arguments={"url": config["url"], "body": msgspec.json.decode(body)})
        elif kind == "send_email":
            to = wf.render(config.get("to") or "", context)
            item.update(would=f"send the e-mail template {config['template_id']} to {to or '(nobody: empty)'} "
                              "(not sent now)", arguments={"template_id": config["template_id"], "to": to})
        else:
            try:
                call = engine.plan_call(step, context, since.astimezone(ZoneInfo(timezone)))
            except engine.StepRefused as e:
                item["would"] = f"fail: {e.message}"
                continue
            item.update(would=f"call {call.tool}", tool=call.tool, arguments=call.arguments)
            op = workflows.registry.get(call.tool)
            if op is None:
                item["would"] = f"fail: {call.tool} is not available in this installation"
            else:
                try:
                    msgspec.convert(call.arguments, op.input)
                except msgspec.ValidationError as e:
                    item["would"] = f"fail: the arguments would be refused ({str(e).split(' - at ')[0]})"
    return True
