"""Workflows: automations that react to the event stream. One trigger plus ordered steps; runs are recorded.

Two aggregates:
- `Workflow`: name, description, a trigger `{type, config}`, ordered steps `{id, type, config}` (a `condition`
  step holds nested `then` and `else` steps), and a status: `draft` (never activated), `active`, `paused` (with
  a reason: deactivated by a user, or by the system when the user who activated it was deactivated). Activation
  records who activated it and that user's effective permissions at that moment: runs act with exactly those.
- `WorkflowRun`: one run of one workflow version for one trigger (an event, a schedule tick, a task coming due).
  Its id is derived from the workflow and the trigger (see `run_id`), so creating it twice is an
  optimistic-concurrency conflict, never a second run. Events: Started (with the context snapshot the steps
  render from), StepSending (before an outside call), StepDone (with its result), StepFailed (with the error),
  WaitingUntil, Finished, Stopped.

The vocabulary is here, pure: trigger and step types with their config schemas (msgspec Structs, so the
catalogue tools can show each type's JSON Schema), placeholders (`{{deal.title}}`) and which triggers provide
them (an unknown or unavailable placeholder is refused when a step is saved, naming it), conditions and their
evaluation, ISO 8601 durations, cron schedules and the walk through a workflow's steps that tells a run what
comes next. Executing steps (tools, HTTP) is the application's (application/workflow_engine.py).

Placeholders here are the run's context (`trigger.*`, `event.*`, `workflow.*` besides the entities), a superset of
what settings templates fill (domain/templates.py, written at the same time): the `send_email` step renders a
template with domain.templates.render after mapping the context into that vocabulary (`deal.owner.name` ->
`deal.owner_name`, the organization, the acting user), so the two vocabularies can merge later without either
changing its users' texts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
from croniter import croniter
from dateutil.relativedelta import relativedelta
from eventsourcing.domain import Aggregate, event
from msgspec import Meta, Struct

from domain.activities import Activity
from domain.base import TenantAggregate
from domain.clients import CLIENT_FIELDS, LEAD_STATUSES, Client
from domain.deals import DEAL_FIELDS, Deal
from domain.deals import STATUSES as DEAL_STATUSES
from domain.errors import Conflict, DomainError, NotFound
from domain.projects import Project
from domain.shared import Editable
from domain.tasks import PRIORITIES, TASK_FIELDS, Task

STATUSES = ("draft", "active", "paused")
RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "stopped")
MAX_STEPS = 50
MAX_NESTING = 3
MAX_CONDITIONS = 20
MAX_DEPTH = 3
"""A run caused by an event that a run caused is one level deeper; runs deeper than this are not started."""
MAX_WAIT = timedelta(days=366)
RUN_NAMESPACE = UUID("6f1c2d4e-8b7a-4c1e-9a53-0d2f7e5b9c31")


class InvalidConfig(DomainError):
    """A trigger or step configuration the catalogue does not allow: the caller's argument, named by path."""

    code = "invalid_arguments"


class StepNotFound(NotFound):
    def __init__(self, step_id: object, field: str = "step_id") -> None:
        super().__init__("step", step_id, field=field)


class NotActivatable(Conflict):
    code = "not_activatable"


def run_id(workflow_id: UUID, trigger_key: str) -> UUID:
    """A run's id: the same workflow and trigger always give the same run (a name-based UUID, version 3, so
    that PostgreSQL can compute it with its built-in md5 — see migrations/0050_workflows.sql)."""
    return uuid.uuid3(RUN_NAMESPACE, f"{workflow_id}:{trigger_key}")


# -- placeholders ------------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
PLACEHOLDER_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")

SUBJECT_PLACEHOLDERS: dict[str, dict[str, str]] = {
    "deal": {
        "id": "the deal's id", "title": "title", "description": "description", "status": "open/accepted/rejected",
        "value": "value as a decimal number, e.g. 4800.00", "currency": "currency code", "owner_id": "owner's user id",
        "owner.name": "owner's name", "owner.email": "owner's e-mail", "client_id": "its lead/client id",
        "pipeline_id": "pipeline id", "stage_id": "stage id", "expected_close_date": "YYYY-MM-DD",
        "close_date": "YYYY-MM-DD", "lost_reason": "why it was lost",
    },
    "client": {
        "id": "the lead/client id", "business_name": "business name", "contact_name": "contact person",
        "email": "e-mail", "phone": "phone", "website": "website", "vat_number": "VAT number", "source": "lead source",
        "status": "funnel status (leads)", "kind": "lead or client", "assigned_to": "assigned user id",
        "assignee.name": "assigned user's name",
    },
    "task": {
        "id": "the task id", "title": "title", "description": "description", "status": "open/done",
        "priority": "priority", "due_date": "YYYY-MM-DD", "assignee_id": "assignee's user id",
        "assignee.name": "assignee's name", "client_id": "linked lead/client id", "deal_id": "linked deal id",
        "project_id": "linked project id",
    },
}
TRIGGER_PLACEHOLDERS = {
    "type": "the trigger type", "occurred_at": "when it happened (ISO timestamp)",
    "date": "the day it happened, YYYY-MM-DD in the organization's time zone",
}
TRIGGER_USER_PLACEHOLDERS = {"user.id": "who caused the event (user id)", "user.name": "their name",
                             "user.email": "their e-mail"}
ALWAYS = {"workflow.id": "this workflow's id", "workflow.name": "this workflow's name", "run.id": "this run's id"}
ID_PLACEHOLDERS = ("deal.owner_id", "client.assigned_to", "task.assignee_id", "trigger.user.id")
"""Placeholders that hold a user id: what `assignee_id`/`user_id` of a step may name instead of a fixed user."""
DATE_PLACEHOLDERS = ("deal.expected_close_date", "deal.close_date", "task.due_date")


def placeholders_in(text: str) -> list[str]:
    return PLACEHOLDER.findall(text)


def _unclosed(text: str) -> bool:
    return "{{" in PLACEHOLDER.sub("", text) or "}}" in PLACEHOLDER.sub("", text)


def known_placeholder(name: str) -> bool:
    """In the vocabulary at all (whatever the trigger)."""
    if name in ALWAYS or name.startswith("trigger.") and name[8:] in {**TRIGGER_PLACEHOLDERS, **TRIGGER_USER_PLACEHOLDERS}:
        return True
    subject, _, rest = name.partition(".")
    if subject in SUBJECT_PLACEHOLDERS:
        return rest in SUBJECT_PLACEHOLDERS[subject]
    return subject == "event" and bool(PLACEHOLDER_NAME.match(rest))


def render(text: str, context: Mapping[str, Any]) -> str:
    """Replace each placeholder by its value in the run's context (empty when the value is missing)."""
    def value(m: re.Match[str]) -> str:
        v = context.get(m.group(1))
        return "" if v is None else str(v)

    return PLACEHOLDER.sub(value, text)


# -- event types a workflow can react to ---------------------------------------------------------------------
EVENT_AGGREGATES: dict[str, tuple[type[TenantAggregate], tuple[str, ...], tuple[str, ...]]] = {
    # aggregate name -> (class, subjects its events provide, its field names for event.fields./event.changes.)
    "Client": (Client, ("client",), CLIENT_FIELDS),
    "Deal": (Deal, ("deal", "client"), DEAL_FIELDS),
    "Task": (Task, ("task", "client", "deal"), TASK_FIELDS),
    "Activity": (Activity, ("client", "deal"), ()),
    "Project": (Project, ("client", "deal"), ()),
}
BASE_EVENT_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic"}


def _event_classes() -> dict[str, type]:
    out: dict[str, type] = {}
    for name, (cls, _, _) in EVENT_AGGREGATES.items():
        for attr, value in sorted(vars(cls).items()):
            if isinstance(value, type) and issubclass(value, Aggregate.Event) and attr != "Event":
                out[f"{name}.{attr}"] = value
    return out


EVENT_TYPES = _event_classes()
"""`Deal.StatusChanged` -> its event class: every domain event of leads/clients, deals, tasks, activities and
projects (the `event` trigger's vocabulary)."""
EVENT_TYPE_NAMES = {cls: name for name, cls in EVENT_TYPES.items()}


def event_fields(event_class: type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(event_class) if f.name not in BASE_EVENT_FIELDS]


def event_values(e: Any) -> dict[str, Any]:
    """An event's own fields as flat context entries: `event.status`, `event.changes.title`, `event.fields.source`."""
    out: dict[str, Any] = {}
    for name in event_fields(type(e)):
        value = getattr(e, name, None)
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and not isinstance(v, (dict, list)):
                    out[f"event.{name}.{k}"] = _plain(v)
        elif not isinstance(value, list):
            out[f"event.{name}"] = _plain(value)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (UUID, date, datetime, Decimal)):
        return v.isoformat() if isinstance(v, (date, datetime)) else str(v)
    return v


# -- conditions -----------------------------------------------------------------------------------------------
Operator = Literal["equals", "not_equals", "in", "not_in", "changed_to", "greater_than", "less_than",
                   "is_empty", "is_not_empty"]
Scalar = str | int | float | bool | None
FieldPath = Annotated[str, Meta(min_length=1, max_length=120, pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+$",
                                description="A placeholder name without braces, e.g. 'deal.value', 'event.status', "
                                            "'event.changes.title' (see the trigger type's placeholders).")]


class Condition(Struct, kw_only=True, forbid_unknown_fields=True):
    """One test on a field of the run's context."""

    field: FieldPath
    op: Annotated[Operator, Meta(description="equals, not_equals, in / not_in (value is a list), changed_to (the "
                                             "event set the field to value), greater_than / less_than (numbers or "
                                             "dates), is_empty / is_not_empty (no value needed).")]
    value: Annotated[Scalar | list[Annotated[str, Meta(max_length=500)] | int | float], Meta(
        description="What to compare with; a list for in / not_in.")] = None


def _number(v: Any) -> Decimal | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        d = Decimal(str(v))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    return str(a).lower() == str(b).lower() if isinstance(a, str) or isinstance(b, str) else a == b


def _order(a: Any, b: Any) -> int | None:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)  # ISO dates and timestamps compare as text
    return None


def holds(c: Condition, context: Mapping[str, Any]) -> bool:
    value = context.get(c.field)
    if c.op == "is_empty":
        return value in (None, "")
    if c.op == "is_not_empty":
        return value not in (None, "")
    if c.op in ("equals", "not_equals"):
        return _same(value, c.value) == (c.op == "equals")
    if c.op in ("in", "not_in"):
        options = c.value if isinstance(c.value, list) else [c.value]
        return any(_same(value, o) for o in options) == (c.op == "in")
    if c.op == "changed_to":
        # `event.changes.X` (an update) or a status-like field of the event whose previous value differed.
        name = c.field.rsplit(".", 1)[-1]
        changed = context.get(f"event.changes.{name}", _MISSING)
        if changed is not _MISSING:
            return _same(changed, c.value)
        if c.field.startswith("event.") and "event.previous" in context:
            return _same(value, c.value) and not _same(context.get("event.previous"), c.value)
        return _same(value, c.value)
    order = _order(value, c.value)
    if order is None:
        return False
    return order > 0 if c.op == "greater_than" else order < 0


_MISSING = object()


def all_hold(conditions: list[Condition], context: Mapping[str, Any], match: str = "all") -> bool:
    results = (holds(c, context) for c in conditions)
    return any(results) if match == "any" else all(results)


# -- triggers -------------------------------------------------------------------------------------------------
class DealStatusChangedConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    to_status: Annotated[Literal[DEAL_STATUSES], Meta(description="The status the deal moved to, e.g. 'accepted' (won).")]  # type: ignore[valid-type]
    pipeline_id: Annotated[UUID | None, Meta(description="Only deals of this pipeline (crm_pipelines_list).")] = None


class DealStageChangedConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    stage_id: Annotated[UUID, Meta(description="The stage the deal moved into (crm_pipelines_get).")]


class ClientCreatedConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    source: Annotated[str, Meta(max_length=200, description="Only leads/clients with this source, e.g. 'website'.")] | None = None


class ClientStatusChangedConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    to_status: Annotated[Literal[LEAD_STATUSES], Meta(description="The funnel status the lead moved to.")]  # type: ignore[valid-type]


class TaskCompletedConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class TaskDueConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    days_before: Annotated[int, Meta(ge=0, le=365, description="Fire this many days before an open task's due date "
                                                                 "(0: on the due date).")]
    at_hour: Annotated[int, Meta(ge=0, le=23, description="Hour of that day, in the organization's time zone.")] = 9


class ScheduleConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    cron: Annotated[str, Meta(min_length=9, max_length=100, description=(
        "Five-field cron expression in the organization's time zone, e.g. '0 9 * * 1' (Mondays at 09:00)."))]


class EventConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    event_type: Annotated[str, Meta(max_length=80, description="A domain event type, e.g. 'Deal.Updated', "
                                                               "'Client.Tagged' (listed in this trigger type's description).")]
    conditions: Annotated[list[Condition], Meta(max_length=MAX_CONDITIONS, description=(
        "All must hold. Fields are placeholders, e.g. {'field': 'event.changes.title', 'op': 'is_not_empty'}."))] = []


@dataclass(frozen=True)
class TriggerType:
    name: str
    description: str
    config: type[Struct]
    subjects: tuple[str, ...]
    events: tuple[type, ...] = ()
    """Event classes that fire it (empty for timers: task_due and schedule)."""
    has_user: bool = True
    """Whether a user caused it (trigger.user.* placeholders)."""

    @property
    def timer(self) -> bool:
        return not self.events and self.name != "event"


TRIGGER_TYPES: dict[str, TriggerType] = {t.name: t for t in (
    TriggerType("deal_status_changed", "A deal's status changed to to_status (e.g. accepted = won), optionally only "
                "in one pipeline.", DealStatusChangedConfig, ("deal", "client"), (Deal.StatusChanged,)),
    TriggerType("deal_stage_changed", "A deal moved into stage_id.", DealStageChangedConfig, ("deal", "client"),
                (Deal.StageMoved,)),
    TriggerType("client_created", "A lead or client was created, optionally only with this source.",
                ClientCreatedConfig, ("client",), (Client.Created,)),
    TriggerType("client_status_changed", "A lead moved to to_status in the funnel.", ClientStatusChangedConfig,
                ("client",), (Client.StatusChanged,)),
    TriggerType("task_completed", "A task was marked done.", TaskCompletedConfig, ("task", "client", "deal"),
                (Task.Completed,)),
    TriggerType("task_due", "Each open task with a due date, days_before its due date at at_hour (organization time "
                "zone); again if the due date changes. Tasks already past due when it is activated do not fire.",
                TaskDueConfig, ("task", "client", "deal"), has_user=False),
    TriggerType("schedule", "On a cron schedule in the organization's time zone. Ticks missed while no server ran "
                "fire once.", ScheduleConfig, (), has_user=False),
    TriggerType("event", "Any domain event type with field conditions (equals, in, changed to, greater/less than). "
                "Event types: " + ", ".join(sorted(EVENT_TYPES)) + ".", EventConfig, ()),
)}

TOPIC_MATCH: dict[type, Callable[[Any], Any]] = {
    Deal.StatusChanged: lambda e: e.status,
    Deal.StageMoved: lambda e: str(e.stage_id),
    Client.Created: lambda e: (e.fields or {}).get("source"),
    Client.StatusChanged: lambda e: e.status,
}
"""For an event class a specialised trigger listens to: the event's value its config names (see `match_value`).
The trigger consumer compares the two before anything else is done, so most events cost nothing."""


def match_value(trigger_type: str, config: Mapping[str, Any]) -> str | None:
    """The value an event's `TOPIC_MATCH` must equal for this trigger to fire (None: any)."""
    key = {"deal_status_changed": "to_status", "deal_stage_changed": "stage_id", "client_created": "source",
           "client_status_changed": "to_status"}.get(trigger_type)
    value = config.get(key) if key else None
    return None if value is None else str(value)


def trigger_events(trigger_type: str, config: Mapping[str, Any]) -> tuple[type, ...]:
    t = TRIGGER_TYPES[trigger_type]
    if t.name == "event":
        return (EVENT_TYPES[config["event_type"]],)
    return t.events


def trigger_subjects(trigger_type: str, config: Mapping[str, Any]) -> tuple[str, ...]:
    t = TRIGGER_TYPES[trigger_type]
    if t.name == "event":
        return EVENT_AGGREGATES[config["event_type"].split(".")[0]][1]
    return t.subjects


def available_placeholders(trigger: Mapping[str, Any] | None) -> set[str] | None:
    """Every placeholder a run of this trigger can fill (None while no trigger is set: only known names are checked)."""
    if trigger is None:
        return None
    ttype, config = trigger["type"], trigger["config"]
    t = TRIGGER_TYPES[ttype]
    names = set(ALWAYS) | {f"trigger.{k}" for k in TRIGGER_PLACEHOLDERS}
    if t.has_user:
        names |= {f"trigger.{k}" for k in TRIGGER_USER_PLACEHOLDERS}
    for subject in trigger_subjects(ttype, config):
        names |= {f"{subject}.{k}" for k in SUBJECT_PLACEHOLDERS[subject]}
    for cls in trigger_events(ttype, config):
        aggregate = EVENT_TYPE_NAMES.get(cls, ".").split(".")[0]
        dict_fields = EVENT_AGGREGATES.get(aggregate, (None, (), ()))[2]
        for name in event_fields(cls):
            if name in ("fields", "changes"):
                names |= {f"event.{name}.{k}" for k in dict_fields}
            else:
                names.add(f"event.{name}")
    return names


def check_trigger(trigger_type: str, raw: Any) -> dict[str, Any]:
    """The trigger's config as stored (plain values), or InvalidConfig naming the argument."""
    if trigger_type not in TRIGGER_TYPES:
        raise InvalidConfig(f"unknown trigger type {trigger_type!r}; see crm_workflows_list_trigger_types "
                            f"({', '.join(TRIGGER_TYPES)})", field="type")
    config = convert(raw, TRIGGER_TYPES[trigger_type].config, "config")
    if isinstance(config, ScheduleConfig):
        check_cron(config.cron)
    if isinstance(config, EventConfig):
        if config.event_type not in EVENT_TYPES:
            raise InvalidConfig(f"unknown event type {config.event_type!r}; known: {', '.join(sorted(EVENT_TYPES))}",
                                field="config.event_type")
        names = available_placeholders({"type": trigger_type, "config": msgspec.to_builtins(config)})
        for i, c in enumerate(config.conditions):
            check_field(c, names, f"config.conditions[{i}].field")
    return msgspec.to_builtins(config)


def check_field(c: Condition, available: set[str] | None, where: str) -> None:
    if not known_placeholder(c.field) or (available is not None and c.field not in available):
        raise InvalidConfig(f"unknown field {c.field!r} for this trigger" + _offer(available), field=where)
    if c.op in ("in", "not_in") and not isinstance(c.value, list):
        raise InvalidConfig(f"{c.op} takes a list as value", field=where.rsplit(".", 1)[0] + ".value")


def _offer(available: set[str] | None) -> str:
    if not available:
        return ""
    return f"; available: {', '.join(sorted(available))}"


def convert(raw: Any, config_type: type[Struct], where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidConfig(f"`{where}` must be an object", field=where)
    try:
        return msgspec.convert(raw, config_type)
    except msgspec.ValidationError as e:
        text = str(e)
        path = where
        m = re.search(r" - at `\$(.*)`$", text)
        if m:
            path = where + m.group(1)
            text = text[: m.start()]
        m2 = re.match(r"Object (contains unknown|missing required) field `(.+)`", text)
        if m2:
            path = f"{path}.{m2.group(2)}"
            text = "unknown field" if m2.group(1) == "contains unknown" else "required field is missing"
        raise InvalidConfig(f"Invalid `{path}`: {text}", field=path) from None


def check_cron(expression: str) -> None:
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InvalidConfig("cron must be a valid five-field cron expression, e.g. '0 9 * * 1'", field="config.cron")


def next_cron(expression: str, after: datetime, timezone: str) -> datetime:
    """The first tick strictly after `after`, computed in the organization's time zone."""
    local = after.astimezone(ZoneInfo(timezone))
    return croniter(expression, local).get_next(datetime)


def local_moment(day: date, hour: int, timezone: str) -> datetime:
    return datetime.combine(day, time(hour=hour), tzinfo=ZoneInfo(timezone))


# -- steps ----------------------------------------------------------------------------------------------------
Template = Annotated[str, Meta(max_length=20000)]
UserRef = Annotated[str, Meta(max_length=60, pattern=r"^([0-9a-fA-F-]{36}|\{\{\s*[a-z_.]+\s*\}\})$", description=(
    "A user id (crm_users_list) or a placeholder holding one: {{deal.owner_id}}, {{client.assigned_to}}, "
    "{{task.assignee_id}}, {{trigger.user.id}}."))]


class CreateTaskStep(Struct, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, Meta(min_length=1, max_length=300, description="Task title; placeholders allowed, "
                                                                          "e.g. 'Kickoff {{deal.title}}'.")]
    description: Template | None = None
    due_in_days: Annotated[int, Meta(ge=0, le=3650, description=(
        "Due this many days after the trigger (or after the last wait), in the organization's time zone."))] | None = None
    assignee_id: UserRef | None = None
    priority: Literal[PRIORITIES] = "normal"  # type: ignore[valid-type]
    checklist: Annotated[list[Annotated[str, Meta(min_length=1, max_length=500)]], Meta(max_length=50)] = []


class AddNoteStep(Struct, kw_only=True, forbid_unknown_fields=True):
    body: Annotated[str, Meta(min_length=1, max_length=20000, description="The note; placeholders allowed.")]
    on: Annotated[Literal["deal", "client"] | None, Meta(description=(
        "Where the note goes; default the triggering deal, else its client."))] = None


UPDATABLE_FIELDS: dict[str, tuple[str, ...] | str] = {
    "deal.title": "text", "deal.description": "text", "deal.expected_close_date": "date", "deal.status": DEAL_STATUSES,
    "client.business_name": "text", "client.contact_name": "text", "client.email": "text", "client.phone": "text",
    "client.website": "text", "client.source": "text", "client.status": LEAD_STATUSES,
    "task.title": "text", "task.description": "text", "task.due_date": "date", "task.priority": PRIORITIES,
}
"""What `update_field` may change, and what it holds: text (placeholders allowed), a date, or one of the values."""


class UpdateFieldStep(Struct, kw_only=True, forbid_unknown_fields=True):
    field: Annotated[Literal[tuple(UPDATABLE_FIELDS)], Meta(  # type: ignore[valid-type]
        description="Which field of the triggering deal, lead/client or task.")]
    value: Annotated[str, Meta(max_length=20000, description=(
        "The new value: text with placeholders, a date YYYY-MM-DD (or a date placeholder), or one of the field's "
        "values; null clears a text field."))] | None


class AssignStep(Struct, kw_only=True, forbid_unknown_fields=True):
    entity: Annotated[Literal["deal", "client", "task"], Meta(description="Which triggering entity to assign.")]
    user_id: UserRef


class SendEmailStep(Struct, kw_only=True, forbid_unknown_fields=True):
    template_id: Annotated[UUID, Meta(description="An e-mail template (crm_settings_list_templates).")]
    to: Annotated[str, Meta(max_length=254, description="Recipient: an address or {{client.email}}.")] = "{{client.email}}"


class SendWhatsappTemplateStep(Struct, kw_only=True, forbid_unknown_fields=True):
    template_name: Annotated[str, Meta(min_length=1, max_length=200)]
    language: Annotated[str, Meta(min_length=2, max_length=10)] = "it"
    to: Annotated[str, Meta(max_length=60, description="Phone number or {{client.phone}}.")] = "{{client.phone}}"
    parameters: Annotated[list[Annotated[str, Meta(min_length=1, max_length=1024)]], Meta(max_length=20, description=(
        "Values for the template's {{1}}, {{2}}... (placeholders allowed); a settings template without them fills "
        "its own from the triggering client/deal."))] = []


class WaitStep(Struct, kw_only=True, forbid_unknown_fields=True):
    duration: Annotated[str, Meta(max_length=40, description=(
        "ISO 8601 duration up to a year, e.g. 'P2D', 'PT4H', 'P1W'."))] | None = None
    until: Annotated[Literal[DATE_PLACEHOLDERS] | None, Meta(  # type: ignore[valid-type]
        description="Or wait until this date field of the triggering entity (an empty field does not wait).")] = None
    offset_days: Annotated[int, Meta(ge=-365, le=365, description="With until: days before (<0) or after it.")] = 0
    at_hour: Annotated[int, Meta(ge=0, le=23, description="With until: hour of that day (organization time zone).")] = 9


class ConditionStep(Struct, kw_only=True, forbid_unknown_fields=True):
    conditions: Annotated[list[Condition], Meta(min_length=1, max_length=MAX_CONDITIONS)]
    match: Annotated[Literal["all", "any"], Meta(description="all conditions (default) or any one.")] = "all"


class WebhookStep(Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(max_length=2000, pattern=r"^https?://\S+$", description="HTTPS endpoint to POST to.")]
    fields: Annotated[dict[Annotated[str, Meta(min_length=1, max_length=100)], Annotated[str, Meta(max_length=5000)]],
                      Meta(description="Body 'data' entries (text with placeholders); default: the trigger's "
                                       "entity fields.")] = {}


class StopStep(Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(max_length=500)] | None = None


@dataclass(frozen=True)
class StepType:
    name: str
    description: str
    config: type[Struct]
    open_world: bool = False


STEP_TYPES: dict[str, StepType] = {s.name: s for s in (
    StepType("create_task", "Create a task linked to the triggering lead/client and deal (and its assignee).",
             CreateTaskStep),
    StepType("add_note", "Add a note to the triggering deal or lead/client.", AddNoteStep),
    StepType("update_field", "Change one whitelisted field of the triggering deal, lead/client or task.",
             UpdateFieldStep),
    StepType("assign", "Assign the triggering deal (owner), lead/client or task to a user.", AssignStep),
    StepType("send_email", "Send an e-mail from a template through the organization's SMTP settings.",
             SendEmailStep, open_world=True),
    StepType("send_whatsapp_template", "Send an approved WhatsApp template message.", SendWhatsappTemplateStep,
             open_world=True),
    StepType("wait", "Pause the run for a duration (ISO 8601, up to a year) or until a date field; durable across "
             "restarts.", WaitStep),
    StepType("condition", "If the conditions hold run its 'then' steps, else its 'else' steps (add them with "
             "parent_step_id and branch).", ConditionStep),
    StepType("webhook", "POST a JSON body to an HTTPS URL, signed with HMAC-SHA256 (header X-Flusia-Signature: "
             "sha256=<hex>) with the workflow's secret (shown once when the first webhook step is added), "
             "Idempotency-Key header, 10 s timeout, retried with back-off.", WebhookStep, open_world=True),
    StepType("stop", "End the run here (e.g. in a condition branch).", StopStep),
)}

_DURATION = re.compile(r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
                       r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_duration(text: str, field: str = "config.duration") -> relativedelta:
    """ISO 8601 duration (P1Y2M3W4DT5H6M7S, calendar-aware) of at most a year, more than zero."""
    m = _DURATION.match(text.strip().upper())
    if not m:
        raise InvalidConfig("duration must be ISO 8601, e.g. 'P2D' (2 days), 'PT4H' (4 hours), 'P1W'", field=field)
    y, mo, w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    if max(y, mo, w, d, h, mi, s) > 10**6:
        raise InvalidConfig("a wait lasts at most a year", field=field)
    delta = relativedelta(years=y, months=mo, weeks=w, days=d, hours=h, minutes=mi, seconds=s)
    base = datetime(2000, 1, 1)
    if base + delta <= base:
        raise InvalidConfig("a wait must last more than zero", field=field)
    if base + delta - base > MAX_WAIT:
        raise InvalidConfig("a wait lasts at most a year (P1Y)", field=field)
    return delta


def wait_until(config: Mapping[str, Any], context: Mapping[str, Any], since: datetime, timezone: str
               ) -> datetime | None:
    """When a wait step ends: `since` + duration, or the date field at at_hour (None: an empty date field)."""
    if config.get("duration"):
        return since + parse_duration(config["duration"])
    raw = context.get(config["until"])
    if raw in (None, ""):
        return None
    day = date.fromisoformat(str(raw)[:10]) + timedelta(days=config.get("offset_days", 0))
    return local_moment(day, config.get("at_hour", 9), timezone)


def _texts(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _texts(v, f"{path}[{i}]")


def check_placeholders(config: Mapping[str, Any], available: set[str] | None, where: str = "config") -> None:
    """Every `{{name}}` in the config's texts is known and, once a trigger is set, one the trigger provides."""
    for path, text in _texts(dict(config), where):
        if _unclosed(text):
            raise InvalidConfig("a placeholder is not closed: write {{name}}", field=path)
        for name in placeholders_in(text):
            if not known_placeholder(name):
                raise InvalidConfig(f"unknown placeholder {{{{{name}}}}}" + _offer(available), field=path)
            if available is not None and name not in available:
                raise InvalidConfig(f"placeholder {{{{{name}}}}} is not available for this trigger" + _offer(available),
                                    field=path)


def check_step(step_type: str, raw: Any, available: set[str] | None, unavailable: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
    """A step's config as stored, or InvalidConfig naming the argument (type, config.<path>)."""
    if step_type not in STEP_TYPES:
        raise InvalidConfig(f"unknown step type {step_type!r}; see crm_workflows_list_step_types "
                            f"({', '.join(STEP_TYPES)})", field="type")
    if unavailable and step_type in unavailable:
        raise InvalidConfig(f"step type {step_type} is not available: {unavailable[step_type]}", field="type")
    config = convert(raw, STEP_TYPES[step_type].config, "config")
    plain = msgspec.to_builtins(config)
    check_placeholders(plain, available)
    check_step_rules(step_type, config, available)
    return plain


def check_step_rules(step_type: str, config: Any, available: set[str] | None) -> None:
    subjects = None if available is None else {n.split(".")[0] for n in available}
    for name in ("assignee_id", "user_id"):
        ref = getattr(config, name, None)
        if isinstance(ref, str) and ref.startswith("{{"):
            inner = placeholders_in(ref)
            if not inner or inner[0] not in ID_PLACEHOLDERS:
                raise InvalidConfig(f"{name} takes a user id or one of {', '.join('{{' + p + '}}' for p in ID_PLACEHOLDERS)}",
                                    field=f"config.{name}")
        elif isinstance(ref, str):
            try:
                UUID(ref)
            except ValueError:
                raise InvalidConfig(f"{name} is not a user id", field=f"config.{name}") from None
    if isinstance(config, WaitStep):
        if (config.duration is None) == (config.until is None):
            raise InvalidConfig("give exactly one of duration or until", field="config.duration")
        if config.duration is not None:
            parse_duration(config.duration)
        elif available is not None and config.until not in available:
            raise InvalidConfig(f"{config.until} is not available for this trigger" + _offer(available),
                                field="config.until")
    elif isinstance(config, ConditionStep):
        for i, c in enumerate(config.conditions):
            check_field(c, available, f"config.conditions[{i}].field")
    elif isinstance(config, UpdateFieldStep):
        entity = config.field.split(".")[0]
        if subjects is not None and entity not in subjects:
            raise InvalidConfig(f"{config.field} is not a field of this trigger's entities", field="config.field")
        kind = UPDATABLE_FIELDS[config.field]
        if isinstance(kind, tuple) and config.value not in kind and not (config.value or "").startswith("{{"):
            raise InvalidConfig(f"{config.field} takes one of {', '.join(kind)}", field="config.value")
        if kind == "date" and config.value is not None and not config.value.startswith("{{"):
            try:
                date.fromisoformat(config.value)
            except ValueError:
                raise InvalidConfig("a date is YYYY-MM-DD or a date placeholder", field="config.value") from None
    elif isinstance(config, AssignStep):
        if subjects is not None and config.entity not in subjects:
            raise InvalidConfig(f"this trigger has no {config.entity} to assign", field="config.entity")
    elif isinstance(config, AddNoteStep):
        if subjects is not None and not subjects & {"deal", "client"}:
            raise InvalidConfig("this trigger has no deal or lead/client to add a note to", field="type")
        if config.on is not None and subjects is not None and config.on not in subjects:
            raise InvalidConfig(f"this trigger has no {config.on}", field="config.on")


# -- the steps tree -------------------------------------------------------------------------------------------
Branch = Literal["then", "else"]


def iter_steps(steps: list[dict[str, Any]], depth: int = 1) -> Iterator[tuple[dict[str, Any], int]]:
    for s in steps:
        yield s, depth
        for branch in ("then", "else"):
            yield from iter_steps(s.get(branch) or [], depth + 1)


def find_step(steps: list[dict[str, Any]], step_id: str) -> dict[str, Any] | None:
    return next((s for s, _ in iter_steps(steps) if s["id"] == step_id), None)


def _container(steps: list[dict[str, Any]], parent_id: str | None, branch: str | None) -> list[dict[str, Any]]:
    if parent_id is None:
        return steps
    parent = find_step(steps, parent_id)
    if parent is None:
        raise StepNotFound(parent_id, field="parent_step_id")
    if parent["type"] != "condition":
        raise DomainError("only a condition step holds nested steps", field="parent_step_id")
    return parent.setdefault(branch or "then", [])


def _copy(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s, **{b: _copy(s[b]) for b in ("then", "else") if b in s}} for s in steps]


def _without(steps: list[dict[str, Any]], step_id: str) -> list[dict[str, Any]]:
    out = []
    for s in steps:
        if s["id"] == step_id:
            continue
        out.append({**s, **{b: _without(s[b], step_id) for b in ("then", "else") if b in s}})
    return out


def count_steps(steps: list[dict[str, Any]]) -> int:
    return sum(1 for _ in iter_steps(steps))


def step_depth(steps: list[dict[str, Any]], step_id: str) -> int:
    return next((d for s, d in iter_steps(steps) if s["id"] == step_id), 0)


def next_step(steps: list[dict[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """What a run does next: the first step not done yet, walking into the branch each done condition chose."""
    for s in steps:
        if s["id"] in done:
            if s["type"] == "condition":
                found = next_step(s.get(done[s["id"]].get("branch", "else")) or [], done)
                if found is not None:
                    return found
            continue
        return s
    return None


# -- the Workflow aggregate ---------------------------------------------------------------------------------
class Workflow(Editable):
    entity_name = "workflow"
    editable_fields = frozenset({"name", "description"})

    @event("Created")
    def __init__(self, org_id: UUID, name: str, description: str | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.name = name
        self.description = description
        self.created_by = created_by
        self.trigger: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []
        self.status = "draft"
        self.status_reason: str | None = None
        self.activated_by: UUID | None = None
        self.grants: dict[str, str] = {}
        self.has_secret = False
        self.deleted = False

    def check_changes(self, changes: dict[str, Any]) -> None:
        if "name" in changes and not (changes["name"] or "").strip():
            raise DomainError("name cannot be empty", field="name")

    @property
    def available(self) -> set[str] | None:
        return available_placeholders(self.trigger)

    # -- trigger -------------------------------------------------------------------------------------------
    def set_trigger(self, trigger_type: str, raw_config: Any) -> None:
        config = check_trigger(trigger_type, raw_config)
        trigger = {"type": trigger_type, "config": config}
        if self.status == "active":
            self._check_steps_against(trigger)
        if trigger != self.trigger:
            self._trigger_set(trigger=trigger)

    @event("TriggerSet")
    def _trigger_set(self, trigger: dict[str, Any]) -> None:
        self.trigger = trigger

    def _check_steps_against(self, trigger: Mapping[str, Any]) -> None:
        available = available_placeholders(trigger)
        for position, (step, _) in enumerate(iter_steps(self.steps), start=1):
            try:
                check_placeholders(step["config"], available)
                check_step_rules(step["type"], convert(step["config"], STEP_TYPES[step["type"]].config, "config"),
                                 available)
            except InvalidConfig as e:
                raise NotActivatable(f"step {position} ({step['type']}, id {step['id']}): {e.message}",
                                     field="type" if trigger is not self.trigger else "workflow_id") from None

    # -- steps: each event carries the resulting tree, so read models never recompute it ---------------------
    def add_step(self, step_type: str, raw_config: Any, *, position: int | None = None,
                 parent_step_id: str | None = None, branch: str | None = None,
                 unavailable: Mapping[str, str] | None = None) -> str:
        config = check_step(step_type, raw_config, self.available, unavailable)
        if count_steps(self.steps) >= MAX_STEPS:
            raise DomainError(f"a workflow holds at most {MAX_STEPS} steps", field="type")
        if parent_step_id is None and branch is not None:
            raise DomainError("branch goes with parent_step_id (a condition step)", field="branch")
        steps = _copy(self.steps)
        container = _container(steps, parent_step_id, branch)
        if parent_step_id is not None and step_depth(self.steps, parent_step_id) >= MAX_NESTING:
            raise DomainError(f"conditions nest at most {MAX_NESTING} deep", field="parent_step_id")
        at = len(container) if position is None else position - 1
        if not 0 <= at <= len(container):
            raise DomainError(f"position must be between 1 and {len(container) + 1}", field="position")
        step_id = str(uuid4())
        container.insert(at, {"id": step_id, "type": step_type, "config": config})
        self._step_added(step_id=step_id, step_type=step_type, parent_id=parent_step_id, steps=steps)
        return step_id

    @event("StepAdded")
    def _step_added(self, step_id: str, step_type: str, parent_id: str | None, steps: list[dict[str, Any]]) -> None:
        self.steps = steps

    def _step(self, step_id: str) -> dict[str, Any]:
        step = find_step(self.steps, step_id)
        if step is None:
            raise StepNotFound(step_id)
        return step

    def update_step(self, step_id: str, raw_config: Any, unavailable: Mapping[str, str] | None = None) -> None:
        step = self._step(step_id)
        config = check_step(step["type"], raw_config, self.available, unavailable)
        if config != step["config"]:
            steps = _copy(self.steps)
            find_step(steps, step_id)["config"] = config  # type: ignore[index]
            self._step_updated(step_id=step_id, steps=steps)

    @event("StepUpdated")
    def _step_updated(self, step_id: str, steps: list[dict[str, Any]]) -> None:
        self.steps = steps

    def remove_step(self, step_id: str) -> None:
        self._step(step_id)
        self._step_removed(step_id=step_id, steps=_without(self.steps, step_id))

    @event("StepRemoved")
    def _step_removed(self, step_id: str, steps: list[dict[str, Any]]) -> None:
        self.steps = steps

    def reorder_steps(self, order: list[str], *, parent_step_id: str | None = None, branch: str | None = None) -> None:
        """`order` lists every step of that level (top level, or a condition's branch) once, in the new order."""
        if parent_step_id is None and branch is not None:
            raise DomainError("branch goes with parent_step_id (a condition step)", field="branch")
        steps = _copy(self.steps)
        container = _container(steps, parent_step_id, branch)
        current = [s["id"] for s in container]
        if sorted(order) != sorted(current) or len(set(order)) != len(order):
            missing = sorted(set(current) - set(order))
            extra = sorted(set(order) - set(current))
            detail = ((f"; missing {', '.join(missing)}" if missing else "")
                      + (f"; not at this level: {', '.join(extra)}" if extra else ""))
            raise DomainError(f"step_ids must list each of the {len(current)} steps of that level exactly once{detail}",
                              field="step_ids")
        if order != current:
            by_id = {s["id"]: s for s in container}
            container[:] = [by_id[i] for i in order]
            self._reordered(parent_id=parent_step_id, steps=steps)

    @event("StepsReordered")
    def _reordered(self, parent_id: str | None, steps: list[dict[str, Any]]) -> None:
        self.steps = steps

    def uses_webhooks(self) -> bool:
        return any(s["type"] == "webhook" for s, _ in iter_steps(self.steps))

    def issue_secret(self) -> None:
        """A webhook signing secret now exists for this workflow (the secret itself is never in an event)."""
        self._secret_issued()

    @event("SecretIssued")
    def _secret_issued(self) -> None:
        self.has_secret = True

    # -- status --------------------------------------------------------------------------------------------
    def activate(self, user_id: UUID, grants: Mapping[str, str]) -> None:
        if self.trigger is None:
            raise NotActivatable("set a trigger first (crm_workflows_set_trigger)", field="workflow_id")
        if not self.steps:
            raise NotActivatable("add at least one step first (crm_workflows_add_step)", field="workflow_id")
        self._check_steps_against(self.trigger)
        if self.status != "active" or self.activated_by != user_id or self.grants != dict(grants):
            self._activated(activated_by=user_id, grants=dict(grants))

    @event("Activated")
    def _activated(self, activated_by: UUID, grants: dict[str, str]) -> None:
        self.status = "active"
        self.status_reason = None
        self.activated_by = activated_by
        self.grants = grants

    def pause(self, reason: str, by: UUID | None = None) -> None:
        if self.status != "paused" or self.status_reason != reason:
            self._paused(reason=reason, by=by)

    @event("Paused")
    def _paused(self, reason: str, by: UUID | None) -> None:
        self.status = "paused"
        self.status_reason = reason


# -- the WorkflowRun aggregate -------------------------------------------------------------------------------
class WorkflowRun(TenantAggregate):
    """One run. Created with `id=run_id(workflow_id, trigger_key)`; steps are recorded as they happen."""

    entity_name = "workflow run"

    @event("Started")
    def __init__(self, org_id: UUID, workflow_id: UUID, workflow_version: int, workflow_name: str,
                 trigger: dict[str, Any], depth: int, context: dict[str, Any]) -> None:
        self.org_id = org_id
        self.workflow_id = workflow_id
        self.workflow_version = workflow_version
        self.workflow_name = workflow_name
        self.trigger = trigger
        self.depth = depth
        self.context = context
        self.done: dict[str, dict[str, Any]] = {}
        self.sending: dict[str, int] = {}
        self.status = "running"
        self.waiting_until: datetime | None = None
        self.waiting_step: str | None = None
        self.resumed_at: datetime | None = None
        self.deleted = False

    @classmethod
    def start(cls, run_id: UUID, **kwargs: Any) -> WorkflowRun:
        """The run with the id its workflow and trigger decide (see `run_id`)."""
        return cls._create(cls.Started, id=run_id, **kwargs)

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "stopped")

    def since(self) -> datetime:
        """The moment the run's current stretch started: the trigger, or the end of its last wait. Steps count
        'due in N days' from here, so that a step re-executed after a crash renders exactly as the first time."""
        if self.resumed_at is not None:
            return self.resumed_at
        return datetime.fromisoformat(self.trigger["occurred_at"])

    def sending_step(self, step_id: str) -> None:
        self._sending(step_id=step_id, attempt=self.sending.get(step_id, 0) + 1)

    @event("StepSending")
    def _sending(self, step_id: str, attempt: int) -> None:
        self.sending = {**self.sending, step_id: attempt}

    def step_done(self, step: Mapping[str, Any], result: dict[str, Any]) -> None:
        self._done(step_id=step["id"], step_type=step["type"], result=result)

    @event("StepDone")
    def _done(self, step_id: str, step_type: str, result: dict[str, Any]) -> None:
        self.done = {**self.done, step_id: result}
        if self.waiting_step == step_id:
            self.resumed_at = self.waiting_until
            self.waiting_until = self.waiting_step = None
        self.status = "running"

    def step_failed(self, step: Mapping[str, Any], error: str, code: str) -> None:
        self._failed(step_id=step["id"], step_type=step["type"], error=error[:2000], code=code)
        self.finish("failed")

    @event("StepFailed")
    def _failed(self, step_id: str, step_type: str, error: str, code: str) -> None:
        pass

    def wait(self, step: Mapping[str, Any], until: datetime) -> None:
        if self.waiting_step != step["id"]:
            self._waiting(step_id=step["id"], until=until)

    @event("WaitingUntil")
    def _waiting(self, step_id: str, until: datetime) -> None:
        self.waiting_step = step_id
        self.waiting_until = until
        self.status = "waiting"

    def finish(self, status: str = "succeeded") -> None:
        if not self.finished:
            self._finished(status=status)

    @event("Finished")
    def _finished(self, status: str) -> None:
        self.status = status

    def stop(self, reason: str, step_id: str | None = None) -> None:
        if not self.finished:
            self._stopped(reason=reason, step_id=step_id)

    @event("Stopped")
    def _stopped(self, reason: str, step_id: str | None) -> None:
        self.status = "stopped"


@dataclass
class Trigger:
    """What started a run, as the run records it."""

    type: str
    key: str
    occurred_at: datetime
    notification_id: int | None = None
    event_type: str | None = None
    entity_type: str | None = None
    entity_id: UUID | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "key": self.key, "occurred_at": self.occurred_at.isoformat(),
                "notification_id": self.notification_id, "event_type": self.event_type,
                "entity_type": self.entity_type, "entity_id": None if self.entity_id is None else str(self.entity_id),
                **self.extra}


def trigger_holds(trigger: Mapping[str, Any], context: Mapping[str, Any]) -> tuple[bool, str]:
    """The whole trigger test on the run's context (the consumer only compared the event's key value)."""
    ttype, config = trigger["type"], trigger["config"]
    if ttype == "deal_status_changed":
        if context.get("event.status") != config["to_status"]:
            return False, f"the deal's status is not {config['to_status']}"
        if config.get("pipeline_id") and str(context.get("deal.pipeline_id")) != str(config["pipeline_id"]):
            return False, "the deal is in another pipeline"
    elif ttype == "deal_stage_changed":
        if str(context.get("event.stage_id")) != str(config["stage_id"]):
            return False, "the deal moved to another stage"
    elif ttype == "client_created":
        if config.get("source") and not _same(context.get("event.fields.source"), config["source"]):
            return False, "the lead/client has another source"
    elif ttype == "client_status_changed":
        if context.get("event.status") != config["to_status"]:
            return False, f"the lead's status is not {config['to_status']}"
    elif ttype == "event":
        conditions = [msgspec.convert(c, Condition) for c in config.get("conditions", [])]
        failing = [c for c in conditions if not holds(c, context)]
        if failing:
            return False, f"condition on {failing[0].field} does not hold"
    return True, "matches"
