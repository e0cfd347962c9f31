"""The workflow engine: runs the pending runs the trigger consumer recorded, exactly once, with durable waits.

How a run happens:
1. The trigger consumer (projections/workflows.py) inserts a `workflow_pending` row per (workflow, trigger) in
   its batch transaction; timers (`schedule`, `task_due`) insert theirs when the engine fires them. The row's
   unique key makes a trigger start at most one run.
2. The engine claims a due row with `SELECT ... FOR UPDATE SKIP LOCKED` and keeps the row locked while it works
   on the run, so several processes can run the engine: each run is worked on by one of them at a time, and a
   process that dies releases its rows (its connection closes) to the others.
3. The run is the `WorkflowRun` aggregate, id `run_id(workflow, trigger key)`: creating it twice is an
   optimistic-concurrency conflict, never a second run. The aggregate is the truth (which steps are done, what
   it waits for); the row only says when to look at it next, and is corrected from the aggregate on every claim.
4. Steps act through the ordinary command path — `ToolRunner.call` (validation, permissions, events,
   idempotency) — as a workflow principal: the organization, the user who activated the workflow, the grants
   that user had at activation, and `workflow_run_id` (every event a step causes names the run in its cause
   row). Each call carries `idempotency_key = wf:<run id>:<step id>`: a step executed again after a crash appends
   nothing and returns the first result. Arguments render from the context snapshot stored when the run
   started (and "today" is the trigger's day, or the end of the last wait), so a re-executed step renders
   exactly the same call. The activator is re-checked at each claim and by a sweep every few seconds: once they
   are deactivated the workflow is paused with that reason and its runs stop at their next step.
5. A `wait` records WaitingUntil and moves the row's due time: a restart resumes it when due. Schedules and task
   due dates are timers (`workflow_timers`) polled here: timers derived from events by the trigger consumer,
   rather than apscheduler, because they then commit with the stream position and need no second scheduler
   store (a missed schedule tick fires once when the engine runs again).
6. Webhooks: the run records StepSending before each attempt; the POST carries `Idempotency-Key:
   wf:<run>:<step>` and `X-Flusia-Signature: sha256=<hex HMAC-SHA256 of the body with the workflow's secret>`,
   10 s timeout, 3 attempts with back-off (5xx, 429 and network errors; other 4xx fail at once). After a crash
   between sending and recording, the request is sent again with the same key: receivers that honour the key
   act once. Only HTTPS to public addresses, unless FLUSIA_WEBHOOK_ALLOW_LOOPBACK=1 (tests, local development:
   then also http:// and https:// to 127.0.0.1/::1/localhost). The per-workflow secret is generated when the
   first webhook step is added, shown once in that answer, and stored sealed with the server's key
   (application/secrets.py: AES-256-GCM, FLUSIA_SECRET_KEY), never in an event, a result or a log.

Limits (settings):
- FLUSIA_WORKFLOW_RUNS_PER_MINUTE (default 300): runs one organization may START per minute; more wait their
  turn (nothing is dropped). Runs already started (resuming after a wait) are not counted.
- Loops: a run started by an event another run caused is one level deeper; deeper than 3 is not started (the
  consumer records it as `cut`; `crm_workflows_get` counts them).
- FLUSIA_WORKFLOW_WORKERS (default 4): runs worked on at once per process.

Time comes from `now` (injectable: tests drive the clock, nothing sleeps for days). Logs carry classes and ids,
never argument values or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID
from zoneinfo import ZoneInfo

import anyio
import msgspec
import psycopg
from eventsourcing.persistence import (DatetimeAsISO, DecimalAsStr, IntegrityError, JSONTranscoder, Mapper,
                                      StoredEvent, UUIDAsHex)
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from application import mail
from application import secrets as secrets_box
from application.errors import ToolError
from application.logsafe import describe
from application.organization import org_settings
from application.principal import Principal
from application.store import DateAsISO, SideWrite
from domain import templates
from domain import workflows as wf
from domain.clients import Client
from domain.deals import Deal
from domain.errors import DomainError
from domain.tasks import Task
from domain.workflows import Trigger, Workflow, WorkflowRun
from projections import settings as settings_q
from projections import workflows as workflows_q
from projections.workflows import WAKE_CHANNEL

log = logging.getLogger("flusia.workflows")
WEBHOOK_TIMEOUT_SECONDS = 10.0
WEBHOOK_ATTEMPTS = 3
SWEEP_SECONDS = 5.0
TRANSIENT = {"busy", "timeout", "internal_error", "conflict", "rate_limited"}  # rate_limited: WhatsApp sent nothing
MAX_ATTEMPTS = 5
"""A step whose tool answered a transient error (nothing changed) is retried with back-off this many times."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


@dataclass
class EngineSettings:
    runs_per_minute: int = 300
    workers: int = 4
    allow_loopback: bool = False
    webhook_backoff_seconds: float = 1.0
    poll_seconds: float = 1.0

    @classmethod
    def from_env(cls) -> EngineSettings:
        return cls(runs_per_minute=_env_int("FLUSIA_WORKFLOW_RUNS_PER_MINUTE", 300),
                   workers=max(1, _env_int("FLUSIA_WORKFLOW_WORKERS", 4)),
                   allow_loopback=os.environ.get("FLUSIA_WEBHOOK_ALLOW_LOOPBACK", "") in ("1", "true", "yes"),
                   webhook_backoff_seconds=float(os.environ.get("FLUSIA_WEBHOOK_BACKOFF_SECONDS") or 1.0))


# -- reading events and aggregates without the event store's Application ---------------------------------------
@cache
def event_mapper() -> Mapper[UUID]:
    """Decodes stored events as the event store does (same transcodings; no compression or cipher configured)."""
    transcoder = JSONTranscoder()
    from application.personal_data import PersonalDataMapper, PersonalTranscoding  # decrypted, or "[erased]"

    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO(), PersonalTranscoding()):
        transcoder.register(transcoding)
    return PersonalDataMapper(transcoder)


def decode(row: dict[str, Any]) -> Any:
    return event_mapper().to_domain_event(StoredEvent(
        originator_id=row["originator_id"], originator_version=row["originator_version"], topic=row["topic"],
        state=bytes(row["state"])))


def load_at(conn: Any, org_id: UUID, aggregate_id: Any, upto: int | None = None) -> Any | None:
    """The aggregate as it was at notification `upto` (None: now); None when missing, deleted or another tenant's."""
    if aggregate_id is None:
        return None
    try:
        aggregate_id = UUID(str(aggregate_id))
    except ValueError:
        return None
    aggregate = None
    for row in workflows_q.aggregate_events(conn, aggregate_id, upto):
        aggregate = decode(row).mutate(aggregate)
    if aggregate is None or getattr(aggregate, "org_id", None) != org_id or getattr(aggregate, "deleted", False):
        return None
    return aggregate


# -- the context a run renders from ---------------------------------------------------------------------------
def _user(conn: Any, org_id: UUID, user_id: Any) -> dict[str, Any]:
    if user_id is None:
        return {}
    row = conn.execute("SELECT id, name, email, status FROM users WHERE organization_id = %s AND id = %s",
                       (org_id, user_id)).fetchone()
    return row or {}


def _iso(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else (str(v) if isinstance(v, UUID) else v)


def entity_values(conn: Any, org_id: UUID, subject: str, agg: Any) -> dict[str, Any]:
    """`deal.title`, `client.business_name`, ... for one entity (see domain.workflows.SUBJECT_PLACEHOLDERS)."""
    out: dict[str, Any] = {}
    for key in wf.SUBJECT_PLACEHOLDERS[subject]:
        if "." in key:
            continue
        attr = {"value": "value_cents"}.get(key, key)
        value = getattr(agg, attr, None) if key != "id" else agg.id
        if key == "value" and value is not None:
            value = f"{value / 100:.2f}"
        out[f"{subject}.{key}"] = _iso(value)
    people = {"deal": ("owner", agg.__dict__.get("owner_id")), "client": ("assignee", agg.__dict__.get("assigned_to")),
              "task": ("assignee", agg.__dict__.get("assignee_id"))}
    label, user_id = people[subject]
    person = _user(conn, org_id, user_id)
    out[f"{subject}.{label}.name"] = person.get("name")
    if subject == "deal":
        out["deal.owner.email"] = person.get("email")
    return out


def subject_entities(conn: Any, org_id: UUID, aggregate: Any, upto: int | None) -> dict[str, Any]:
    """The triggering entity and the ones it links to (a task's client and deal, a deal's client)."""
    found: dict[str, Any] = {}
    if isinstance(aggregate, Deal):
        found["deal"] = aggregate
    elif isinstance(aggregate, Client):
        found["client"] = aggregate
    elif isinstance(aggregate, Task):
        found["task"] = aggregate
    if aggregate is not None and "deal" not in found and getattr(aggregate, "deal_id", None):
        deal = load_at(conn, org_id, aggregate.deal_id, upto)
        if deal is not None:
            found["deal"] = deal
    client_id = getattr(found.get("deal"), "client_id", None) or getattr(aggregate, "client_id", None)
    if "client" not in found and client_id is not None:
        client = load_at(conn, org_id, client_id, upto)
        if client is not None:
            found["client"] = client
    return found


def build_context(conn: Any, org_id: UUID, workflow_id: UUID, workflow_name: str, run_id: UUID, trigger: Trigger,
                  event: Any | None, aggregate: Any | None, upto: int | None, cause_user: Any) -> dict[str, Any]:
    timezone = org_settings(conn, org_id)["timezone"]
    ctx: dict[str, Any] = {
        "workflow.id": str(workflow_id), "workflow.name": workflow_name, "run.id": str(run_id),
        "trigger.type": trigger.type, "trigger.event_type": trigger.event_type,
        "trigger.occurred_at": trigger.occurred_at.isoformat(),
        "trigger.date": trigger.occurred_at.astimezone(ZoneInfo(timezone)).date().isoformat(),
    }
    user = _user(conn, org_id, cause_user)
    if user:
        ctx.update({"trigger.user.id": str(user["id"]), "trigger.user.name": user["name"],
                    "trigger.user.email": user["email"]})
    for subject, agg in subject_entities(conn, org_id, aggregate, upto).items():
        ctx.update(entity_values(conn, org_id, subject, agg))
    if event is not None:
        ctx.update(wf.event_values(event))
    return ctx


def cause_of(conn: Any, notification_id: int) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT user_id, workflow_run_id FROM event_causes WHERE first_notification_id <= %s"
        " AND last_notification_id >= %s ORDER BY first_notification_id DESC LIMIT 1",
        (notification_id, notification_id)).fetchone()


def event_trigger(conn: Any, org_id: UUID, row: dict[str, Any]) -> tuple[Trigger, Any, Any, int | None, Any] | None:
    """(trigger, event, its aggregate at that point, notification id, who caused it) for a stored event row."""
    event = decode(row)
    event_type = wf.EVENT_TYPE_NAMES.get(type(event))
    n = row["notification_id"]
    aggregate = load_at(conn, org_id, event.originator_id, n)
    cause = cause_of(conn, n) or {}
    trigger = Trigger(type="event", key=f"event:{n}", occurred_at=event.timestamp, notification_id=n,
                      event_type=event_type, entity_type=(event_type or ".").split(".")[0].lower() or None,
                      entity_id=event.originator_id)
    return trigger, event, aggregate, n, cause.get("user_id")


class Transient(Exception):
    """A step's tool could not run now and changed nothing: the run is looked at again later."""


# -- what a step does ------------------------------------------------------------------------------------------
@dataclass
class ToolCall:
    tool: str
    arguments: dict[str, Any]


class StepRefused(Exception):
    """A step that cannot act on this run's context (no deal to note on, an empty user reference)."""

    def __init__(self, message: str, code: str = "rule_violation") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


UPDATE_TOOLS = {"deal": "crm_deals_update", "client": "crm_clients_update", "task": "crm_tasks_update"}
STATUS_TOOLS = {"deal.status": "crm_deals_set_status", "client.status": "crm_clients_update_status"}
ASSIGN_TOOLS = {"deal": "crm_deals_assign", "client": "crm_clients_assign", "task": "crm_tasks_assign"}


def _user_ref(ref: str | None, context: dict[str, Any], what: str) -> str | None:
    if ref is None:
        return None
    value = wf.render(ref, context) if ref.startswith("{{") else ref
    if not value:
        raise StepRefused(f"{what} {ref} is empty for this run")
    return value


def _note_target(config: dict[str, Any], subjects: set[str]) -> str:
    return config.get("on") or ("deal" if "deal" in subjects else "client")


def step_tools(step_type: str, config: dict[str, Any], subjects: set[str]) -> list[str]:
    """The tools a step calls (for the permissions check at activation)."""
    if step_type == "create_task":
        return ["crm_tasks_create"]
    if step_type == "add_note":
        return [f"crm_{'deals' if _note_target(config, subjects) == 'deal' else 'clients'}_add_note"]
    if step_type == "update_field":
        return [STATUS_TOOLS.get(config["field"]) or UPDATE_TOOLS[config["field"].split(".")[0]]]
    if step_type == "assign":
        return [ASSIGN_TOOLS[config["entity"]]]
    if step_type == "send_whatsapp_template":
        return ["crm_whatsapp_send_template"]
    return []


def plan_call(step: dict[str, Any], context: dict[str, Any], today: datetime) -> ToolCall:
    """The tool call a step makes for this run (rendered from the run's context snapshot)."""
    kind, config = step["type"], step["config"]
    render = lambda text: None if text is None else wf.render(text, context)  # noqa: E731
    if kind == "create_task":
        args: dict[str, Any] = {"title": render(config["title"]) or "-", "priority": config.get("priority", "normal")}
        if config.get("description"):
            args["description"] = render(config["description"])
        if config.get("due_in_days") is not None:
            args["due_date"] = (today.date() + timedelta(days=config["due_in_days"])).isoformat()
        if config.get("assignee_id"):
            args["assignee_id"] = _user_ref(config["assignee_id"], context, "assignee_id")
        if config.get("checklist"):
            args["checklist"] = [render(t) or "-" for t in config["checklist"]]
        for link in ("client", "deal"):
            if context.get(f"{link}.id"):
                args[f"{link}_id"] = context[f"{link}.id"]
        return ToolCall("crm_tasks_create", args)
    if kind == "add_note":
        subjects = {k.split(".")[0] for k in context if context.get(k) is not None}
        target = _note_target(config, subjects)
        if not context.get(f"{target}.id"):
            raise StepRefused(f"this run has no {target} to add a note to")
        return ToolCall(f"crm_{target}s_add_note", {f"{target}_id": context[f"{target}.id"], "body": render(config["body"])})
    if kind == "update_field":
        entity, name = config["field"].split(".", 1)
        if not context.get(f"{entity}.id"):
            raise StepRefused(f"this run has no {entity} to update")
        value = render(config.get("value"))
        if config["field"] in STATUS_TOOLS:
            return ToolCall(STATUS_TOOLS[config["field"]], {f"{entity}_id": context[f"{entity}.id"], "status": value})
        if value == "" and wf.UPDATABLE_FIELDS[config["field"]] == "date":
            value = None
        return ToolCall(UPDATE_TOOLS[entity], {f"{entity}_id": context[f"{entity}.id"], name: value})
    if kind == "assign":
        entity = config["entity"]
        if not context.get(f"{entity}.id"):
            raise StepRefused(f"this run has no {entity} to assign")
        return ToolCall(ASSIGN_TOOLS[entity], {f"{entity}_id": context[f"{entity}.id"],
                                               "user_id": _user_ref(config["user_id"], context, "user_id")})
    if kind == "send_whatsapp_template":
        args = {"to": render(config["to"]), "template_name": config["template_name"], "language": config["language"]}
        if config.get("parameters"):  # explicit values for {{1}}, {{2}}...; else a settings template fills its own
            args["parameters"] = [render(p) for p in config["parameters"]]
        args.update({f"{s}_id": context[f"{s}.id"] for s in ("client", "deal") if context.get(f"{s}.id")})
        return ToolCall("crm_whatsapp_send_template", args)
    raise StepRefused(f"step type {kind} does not call a tool")


def webhook_body(run_id: UUID, step: dict[str, Any], context: dict[str, Any], trigger: dict[str, Any],
                 workflow_id: UUID, workflow_name: str) -> bytes:
    fields = step["config"].get("fields") or {}
    if fields:
        data = {k: wf.render(v, context) for k, v in fields.items()}
    else:
        data = {}
        for key, value in context.items():
            subject, _, rest = key.partition(".")
            if subject in wf.SUBJECT_PLACEHOLDERS:
                data.setdefault(subject, {})[rest] = value
    body = {"workflow": {"id": str(workflow_id), "name": workflow_name}, "run_id": str(run_id), "step_id": step["id"],
            "trigger": {k: trigger.get(k) for k in ("type", "event_type", "occurred_at", "entity_type", "entity_id")},
            "data": data}
    return json.dumps(body, sort_keys=True, default=str).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


def template_values(conn: Any, org_id: UUID, context: dict[str, Any], sender_id: Any) -> dict[str, Any]:
    """The run's context in the settings templates' vocabulary (domain.templates.VOCABULARY): the same entity
    fields, the people's names as `deal.owner_name`/`task.assignee_name`, the organization, and the user the
    workflow acts for as `user.*`."""
    values = {k: v for k, v in context.items() if k.split(".")[0] in ("deal", "client", "task")}
    values["deal.owner_name"] = context.get("deal.owner.name")
    values["task.assignee_name"] = context.get("task.assignee.name")
    org = conn.execute("SELECT * FROM organizations WHERE id = %s", (org_id,)).fetchone() or {}
    for key in templates.VOCABULARY["organization"]:
        value = org.get(key)
        values[f"organization.{key}"] = None if isinstance(value, dict) else value
    user = _user(conn, org_id, sender_id)
    values.update({"user.name": user.get("name"), "user.email": user.get("email")})
    return values


# -- webhook URLs and secrets ------------------------------------------------------------------------------------
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def check_webhook_url(url: str, allow_loopback: bool, *, field: str = "config.url") -> None:
    """HTTPS to a named host; http:// only to loopback and only when FLUSIA_WEBHOOK_ALLOW_LOOPBACK is set."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise DomainError("url is not a valid URL", field=field) from None
    if not host or parts.username or parts.password:
        raise DomainError("url needs a host and no credentials", field=field)
    loopback = host in LOOPBACK_NAMES or _is_loopback_literal(host)
    if parts.scheme == "https" and (not loopback or allow_loopback):
        return
    if parts.scheme == "http" and loopback and allow_loopback:
        return
    raise DomainError("url must be https:// (http:// is allowed only to loopback in test setups)", field=field)


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refused_address(host: str, allow_loopback: bool) -> str | None:
    """Why sending to this host is refused (it resolves to a private/internal address), or None."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return "the host name does not resolve"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_loopback and allow_loopback:
            continue
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return "the host resolves to a private or internal address"
    return None


def _context(org_id: UUID, workflow_id: UUID) -> str:
    return secrets_box.context_for(org_id, f"workflow-webhook:{workflow_id}")


def new_webhook_secret(conn: Any, org_id: UUID, workflow_id: UUID) -> tuple[str, SideWrite]:
    """A fresh secret, sealed with the server's key (application/secrets.py), and the write that stores it with the
    command's events. Returns (sealed, write): the sealed form is what a command may return and keep (its
    idempotency record); `reveal` opens it for the one answer that shows it."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    sealed = secrets_box.encrypt(secrets_box.server_key(conn), secret, context=_context(org_id, workflow_id))
    write = SideWrite("INSERT INTO workflow_secrets (workflow_id, organization_id, sealed) VALUES (%s, %s, %s)"
                      " ON CONFLICT (workflow_id) DO UPDATE SET sealed = EXCLUDED.sealed, created_at = now()",
                      (workflow_id, org_id, sealed.encode()))
    return sealed, write


def reveal(conn: Any, org_id: UUID, workflow_id: UUID, sealed: bytes | str) -> str:
    stored = bytes(sealed).decode() if not isinstance(sealed, str) else sealed
    return secrets_box.decrypt(secrets_box.server_key(conn), stored, context=_context(org_id, workflow_id))


def webhook_secret(conn: Any, org_id: UUID, workflow_id: UUID) -> str | None:
    row = conn.execute("SELECT sealed FROM workflow_secrets WHERE organization_id = %s AND workflow_id = %s",
                       (org_id, workflow_id)).fetchone()
    if row is None:
        return None
    try:
        return reveal(conn, org_id, workflow_id, row["sealed"])
    except secrets_box.SecretUnavailable:  # a changed or lost server key
        return None


# -- the engine ----------------------------------------------------------------------------------------------
CLAIM = """
WITH busy AS (
    SELECT organization_id FROM workflow_pending WHERE started_at > %(now)s - interval '1 minute'
    GROUP BY organization_id HAVING count(*) >= %(per_minute)s
)
SELECT run_id, organization_id, workflow_id, workflow_version, trigger_key, notification_id, depth, started_at,
       attempts
FROM workflow_pending
WHERE status = 'pending' AND due_at <= %(now)s
  AND (started_at IS NOT NULL OR organization_id NOT IN (SELECT organization_id FROM busy))
ORDER BY due_at, created_at
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
DUE_TIMERS = """
SELECT t.workflow_id, t.timer_key, t.organization_id, t.kind, t.due_at, t.task_id, w.config, o.timezone
FROM workflow_timers t
JOIN workflow_triggers w ON w.workflow_id = t.workflow_id
JOIN organizations o ON o.id = t.organization_id
WHERE t.due_at <= %s
ORDER BY t.due_at LIMIT 100
FOR UPDATE OF t SKIP LOCKED
"""
PENDING_FROM_TIMER = """
INSERT INTO workflow_pending (run_id, organization_id, workflow_id, workflow_version, trigger_key, depth, status, due_at)
SELECT workflow_run_id(workflow_id, %(key)s), organization_id, workflow_id, version, %(key)s, 1, 'pending', 'epoch'
FROM workflow_triggers WHERE workflow_id = %(workflow)s AND active
ON CONFLICT DO NOTHING
"""


@dataclass
class Outcome:
    status: str                  # pending (look again at due_at), done, skipped
    due_at: datetime | None = None
    started: bool = False


class WorkflowEngine:
    """Claims and advances runs. `run_forever` in a server or `flusia project`; `drain` in tests and scripts."""

    def __init__(self, runtime: Any, *, now: Callable[[], datetime] | None = None,
                 settings: EngineSettings | None = None) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.runner = runtime.runner
        self.registry = runtime.registry
        self.now = now or (lambda: datetime.now(UTC))
        self.settings = settings or EngineSettings.from_env()
        self._pool: ConnectionPool | None = None
        self._wake = anyio.Event()
        self._cancel: anyio.CancelScope | None = None
        self._last_sweep = 0.0

    # -- connections -----------------------------------------------------------------------------------------
    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            self._pool = ConnectionPool(self.runtime.database_url, min_size=1, max_size=self.settings.workers + 2,
                                        open=True, name="flusia-workflows", timeout=30,
                                        kwargs={"row_factory": dict_row, "autocommit": True})
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @staticmethod
    async def _thread(fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    # -- the loop --------------------------------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Workers claim runs; a LISTEN connection wakes them when the consumer records one; timers and the
        activator sweep run every `poll_seconds`. Errors are logged and retried; cancellation stops it."""
        with anyio.CancelScope() as scope:
            self._cancel = scope
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                tg.start_soon(self._ticker)
                for _ in range(self.settings.workers):
                    tg.start_soon(self._worker)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    def _notify(self) -> None:
        wake, self._wake = self._wake, anyio.Event()
        wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.runtime.database_url, autocommit=True)
                async with conn:
                    await conn.execute(f'LISTEN "{WAKE_CHANNEL}"')
                    self._notify()
                    async for _ in conn.notifies():
                        self._notify()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as e:
                log.warning("workflow wake-up feed lost error=%s; reconnecting", describe(e))
                await anyio.sleep(1.0)

    async def _ticker(self) -> None:
        while True:
            try:
                fired = await self._thread(self.fire_timers)
                await self._thread(self.sweep_activators)
                if fired:
                    self._notify()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as e:
                log.error("workflow timers failed error=%s", describe(e))
            self._notify()  # pending runs whose wait ended are due now
            await anyio.sleep(self.settings.poll_seconds)

    async def _worker(self) -> None:
        while True:
            wake = self._wake
            try:
                worked = await self.process_one()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as e:
                log.error("workflow worker failed error=%s", describe(e))
                worked = False
                await anyio.sleep(1.0)
            if not worked:
                with anyio.move_on_after(self.settings.poll_seconds):
                    await wake.wait()

    async def drain(self, *, settle: bool = True) -> int:
        """Everything due now, until nothing is left (tests, scripts): timers, pending runs, runs they cause."""
        total = 0
        while True:
            if settle and getattr(self.runner, "sync_settle", None) is not None:
                await self._thread(self.runtime.settle)
            fired = await self._thread(self.fire_timers)
            await self._thread(self.sweep_activators, True)
            worked = 0
            while await self.process_one():
                worked += 1
            total += worked
            if not worked and not fired:
                return total

    def drain_sync(self) -> int:
        return anyio.run(self.drain)

    # -- timers ------------------------------------------------------------------------------------------------
    def fire_timers(self) -> int:
        """Turn due timers into pending runs: a schedule moves to its next tick (missed ticks collapse into one),
        a task-due timer goes away. One transaction, timers locked FOR UPDATE SKIP LOCKED."""
        now = self.now()
        fired = 0
        with self.pool.connection() as conn, conn.transaction():
            for t in conn.execute(DUE_TIMERS, (now,)).fetchall():
                if t["kind"] == "schedule":
                    key = f"cron:{t['due_at'].astimezone(UTC).isoformat()}"
                    nxt = wf.next_cron(t["config"]["cron"], max(t["due_at"], now), t["timezone"])
                    conn.execute("UPDATE workflow_timers SET due_at = %s WHERE workflow_id = %s AND timer_key = %s",
                                 (nxt, t["workflow_id"], t["timer_key"]))
                else:
                    key = t["timer_key"]
                    conn.execute("DELETE FROM workflow_timers WHERE workflow_id = %s AND timer_key = %s",
                                 (t["workflow_id"], t["timer_key"]))
                fired += conn.execute(PENDING_FROM_TIMER, {"key": key, "workflow": t["workflow_id"]}).rowcount
            if fired:
                conn.execute("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,))
        return fired

    # -- the activator check -------------------------------------------------------------------------------
    def sweep_activators(self, force: bool = False) -> int:
        """Pause every active workflow whose activator is no longer an active user (every SWEEP_SECONDS)."""
        if not force and time.monotonic() - self._last_sweep < SWEEP_SECONDS:
            return 0
        self._last_sweep = time.monotonic()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT w.id, w.organization_id FROM workflows w JOIN users u ON u.id = w.activated_by"
                " WHERE w.status = 'active' AND u.status <> 'active'").fetchall()
        for r in rows:
            self.pause_for_activator(r["organization_id"], r["id"])
        return len(rows)

    def pause_for_activator(self, org_id: UUID, workflow_id: UUID) -> bool:
        workflow = self.store.repository.get(workflow_id)
        if workflow.status != "active" or workflow.deleted:
            return False
        with self.pool.connection() as conn:
            user = _user(conn, org_id, workflow.activated_by)
        if user.get("status") == "active":
            return False
        workflow.pause(f"{user.get('name') or 'the user'} (who activated it) was deactivated: reactivate it to run it"
                       " with the permissions of an active user")
        try:
            self._save(workflow, org_id, None)
        except IntegrityError:
            return False  # changed meanwhile: the next sweep looks again
        log.info("workflow paused org=%s workflow=%s reason=activator_inactive", org_id, workflow_id)
        return True

    # -- one run -------------------------------------------------------------------------------------------------
    async def process_one(self) -> bool:
        """Claim one due pending row and work on its run while holding the row; False when none is due."""
        conn = await self._thread(self.pool.getconn)
        try:
            row = await self._thread(self._claim, conn)
            if row is None:
                await self._thread(conn.execute, "ROLLBACK")
                return False
            try:
                outcome = await self.advance(row)
            except Exception as e:  # the run stays as recorded; its row is looked at again later
                log.error("workflow run failed run=%s org=%s error=%s", row["run_id"], row["organization_id"],
                          describe(e))
                await self._thread(conn.execute, "ROLLBACK")
                await self._thread(self._retry_later, row["run_id"])
                return True
            await self._thread(self._release, conn, row, outcome)
            return True
        finally:
            with anyio.CancelScope(shield=True):
                await self._thread(self._return, conn)

    def _return(self, conn: Any) -> None:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
        self.pool.putconn(conn)

    def _claim(self, conn: Any) -> dict[str, Any] | None:
        conn.execute("BEGIN")
        return conn.execute(CLAIM, {"now": self.now(), "per_minute": self.settings.runs_per_minute}).fetchone()

    def _release(self, conn: Any, row: dict[str, Any], outcome: Outcome) -> None:
        now = self.now()
        conn.execute(
            "UPDATE workflow_pending SET status = %s, due_at = coalesce(%s, due_at),"
            " started_at = CASE WHEN %s THEN coalesce(started_at, %s) ELSE started_at END,"
            " finished_at = CASE WHEN %s <> 'pending' THEN %s END WHERE run_id = %s",
            (outcome.status, outcome.due_at, outcome.started, now, outcome.status, now, row["run_id"]))
        conn.execute("COMMIT")

    def _retry_later(self, run_id: UUID) -> None:
        """An unexpected failure: look again later (30 s, doubling per failure, at most an hour)."""
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE workflow_pending SET attempts = attempts + 1,"
                " due_at = %s + make_interval(secs => least(3600, 30 * 2 ^ least(attempts, 7))) WHERE run_id = %s",
                (self.now(), run_id))

    def _save(self, aggregate: Any, org_id: UUID, run_id: UUID | None) -> None:
        """Save engine-recorded events (the run's own, a pause) with a cause naming the run, if any."""
        self.store.save(aggregate, cause={
            "organization_id": org_id, "user_id": None, "token_id": None, "oauth_client_id": None,
            "correlation_id": run_id or aggregate.id, "tool": None, "workflow_run_id": run_id})

    def _get(self, aggregate_id: UUID, version: int | None = None) -> Any | None:
        from eventsourcing.application import AggregateNotFoundError

        try:
            return self.store.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            return None

    async def advance(self, row: dict[str, Any]) -> Outcome:
        """Create the run if needed, then do its steps until it ends or waits. Each step's events are appended as
        soon as it is done (the last one together with Finished): a crash loses at most the record of the step
        under way, which is then done again under the same idempotency key."""
        org_id, run_id = row["organization_id"], row["run_id"]
        run, current = await self._thread(self._load, run_id, row["workflow_id"])
        active = current is not None and not current.deleted and current.status == "active"
        if run is None:
            if not active or not await self._thread(self._activator_ok, org_id, current):
                return Outcome("skipped")
            run, workflow = await self._thread(self._start, row)
            if run is None:
                return Outcome("skipped")
        else:
            if run.finished:
                return Outcome("done", started=True)
            if not active:
                run.stop("the workflow was " + ("deleted" if current is None or current.deleted else "paused"))
                await self._thread(self._save, run, org_id, run.id)
                return Outcome("done", started=True)
            if not await self._thread(self._activator_ok, org_id, current):
                run.stop("the user who activated the workflow was deactivated; the workflow is paused")
                await self._thread(self._save, run, org_id, run.id)
                return Outcome("done", started=True)
            workflow = await self._thread(self._get, run.workflow_id, run.workflow_version)
        if run.finished:
            return Outcome("done", started=True)
        principal = Principal(organization_id=org_id, user_id=current.activated_by, grants=dict(current.grants),
                              correlation_id=run.id, workflow_run_id=run.id)
        timezone = await self._thread(self._timezone, org_id)
        step = wf.next_step(workflow.steps, run.done)
        while True:
            if step is None:
                run.finish("succeeded")
                await self._thread(self._save, run, org_id, run.id)
                return Outcome("done", started=True)
            waiting = await self.step(run, step, workflow, principal, timezone, row.get("attempts", 0))
            if waiting is not None:
                return Outcome("pending", due_at=waiting, started=True)
            if run.finished:
                await self._thread(self._save, run, org_id, run.id)
                return Outcome("done", started=True)
            step = wf.next_step(workflow.steps, run.done)
            if step is not None:
                await self._thread(self._save, run, org_id, run.id)

    def _load(self, run_id: UUID, workflow_id: UUID) -> tuple[WorkflowRun | None, Workflow | None]:
        return self._get(run_id), self._get(workflow_id)

    def _timezone(self, org_id: UUID) -> str:
        with self.pool.connection() as conn:
            return org_settings(conn, org_id)["timezone"]

    def _activator_ok(self, org_id: UUID, workflow: Workflow) -> bool:
        with self.pool.connection() as conn:
            user = _user(conn, org_id, workflow.activated_by)
        if user.get("status") == "active":
            return True
        self.pause_for_activator(org_id, workflow.id)
        return False

    def _start(self, row: dict[str, Any]) -> tuple[WorkflowRun | None, Workflow]:
        """Create the run (its context snapshot, the whole trigger test); None when the trigger does not hold."""
        org_id = row["organization_id"]
        workflow = self._get(row["workflow_id"], row["workflow_version"])
        with self.pool.connection() as conn:
            built = self._trigger(conn, org_id, row, workflow)
            if built is None:
                return None, workflow
            trigger, event, aggregate, upto, user = built
            context = build_context(conn, org_id, workflow.id, workflow.name, row["run_id"], trigger, event, aggregate,
                                    upto, user)
        holds, _ = wf.trigger_holds(workflow.trigger, context)
        if not holds:
            return None, workflow
        run = WorkflowRun.start(row["run_id"], org_id=org_id, workflow_id=workflow.id, workflow_version=workflow.version,
                          workflow_name=workflow.name, trigger={**trigger.as_dict(), "type": workflow.trigger["type"]},
                          depth=row["depth"], context=context)
        try:
            self._save(run, org_id, run.id)
        except IntegrityError:
            return self._get(row["run_id"]), workflow  # created meanwhile (a claim lost to a crash): the same run
        log.info("workflow run started org=%s workflow=%s run=%s depth=%s", org_id, workflow.id, run.id, row["depth"])
        return run, workflow

    def _trigger(self, conn: Any, org_id: UUID, row: dict[str, Any], workflow: Workflow
                 ) -> tuple[Trigger, Any, Any, int | None, Any] | None:
        key: str = row["trigger_key"]
        if key.startswith("event:"):
            stored = conn.execute("SELECT notification_id, originator_id, originator_version, topic, state"
                                  " FROM stored_events WHERE notification_id = %s", (row["notification_id"],)).fetchone()
            return None if stored is None else event_trigger(conn, org_id, stored)
        if key.startswith("cron:"):
            at = datetime.fromisoformat(key[5:])
            return Trigger(type="schedule", key=key, occurred_at=at), None, None, None, None
        if key.startswith("due:"):
            _, task_id, day = key.split(":")
            task = load_at(conn, org_id, task_id)
            if task is None or task.status != "open" or str(task.due_date) != day:
                return None  # done, deleted or moved since the timer was set
            at = wf.local_moment(task.due_date - timedelta(days=workflow.trigger["config"]["days_before"]),
                                 workflow.trigger["config"].get("at_hour", 9), org_settings(conn, org_id)["timezone"])
            return (Trigger(type="task_due", key=key, occurred_at=at, entity_type="task", entity_id=task.id),
                    None, task, None, None)
        return None

    # -- steps ---------------------------------------------------------------------------------------------------
    async def step(self, run: WorkflowRun, step: dict[str, Any], workflow: Workflow, principal: Principal,
                   timezone: str, attempts: int = 0) -> datetime | None:
        """Do one step and record it on the run (the caller appends the record). Returns when to look again if the
        run now waits (that record is appended here, with the wait)."""
        kind = step["type"]
        now = self.now()
        if kind == "wait":
            if run.waiting_step == step["id"]:
                if run.waiting_until is not None and now < run.waiting_until:
                    return run.waiting_until
                run.step_done(step, {"waited_until": run.waiting_until.isoformat() if run.waiting_until else None})
            else:
                until = wf.wait_until(step["config"], run.context, now, timezone)
                if until is None or until <= now:
                    run.step_done(step, {"waited": False, "reason": "the date is empty or already past"})
                else:
                    run.wait(step, until)
                    await self._thread(self._save, run, run.org_id, run.id)
                    return until
        elif kind == "condition":
            cfg = step["config"]
            conditions = [msgspec.convert(c, wf.Condition) for c in cfg["conditions"]]
            run.step_done(step, {"branch": "then" if wf.all_hold(conditions, run.context, cfg.get("match", "all"))
                                 else "else"})
        elif kind == "stop":
            run.stop(step["config"].get("reason") or "a stop step ended the run", step["id"])
        elif kind == "webhook":
            await self._webhook(run, step, workflow)
        elif kind == "send_email":
            await self._email(run, step, principal)
        else:
            await self._tool_step(run, step, principal, timezone, attempts)
        return None

    async def _tool_step(self, run: WorkflowRun, step: dict[str, Any], principal: Principal, timezone: str,
                         attempts: int) -> None:
        today = run.since().astimezone(ZoneInfo(timezone))
        try:
            call = plan_call(step, run.context, today)
            if self.registry.get(call.tool) is None:
                raise StepRefused(f"{call.tool} is not available in this installation", "not_available")
            out = await self.runner.call(principal, call.tool, {**call.arguments,
                                                                "idempotency_key": f"wf:{run.id}:{step['id']}"})
        except StepRefused as e:
            run.step_failed(step, e.message, e.code)
        except ToolError as e:
            if e.details and e.details.get("stored"):  # it happened; only reading it back failed
                run.step_done(step, {"tool": call.tool, "id": (e.details.get("ids") or [None])[0], "stored": True})
            elif e.code in TRANSIENT and attempts < MAX_ATTEMPTS:
                raise Transient(e.code) from None  # nothing was changed: the claim is retried later
            else:
                run.step_failed(step, f"{call.tool}: {e.message}", e.code)
        else:
            result: dict[str, Any] = {"tool": call.tool}
            if isinstance(out, dict) and out.get("id") is not None:
                result["id"] = str(out["id"])
            run.step_done(step, result)

    async def _email(self, run: WorkflowRun, step: dict[str, Any], principal: Principal) -> None:
        """One e-mail from a settings template through FLUSIA_SMTP_URL, at most once: StepSending is recorded
        before handing it to the server, and SMTP has no idempotency key, so a run that finds its e-mail step
        already 'sending' (the process died meanwhile) does not send again and says so."""
        org_id = run.org_id
        try:
            smtp = mail.SmtpSettings.from_env()
            if smtp is None:
                raise StepRefused("no SMTP server is configured (FLUSIA_SMTP_URL)", "not_available")
            if step["id"] in run.sending:
                raise StepRefused("the server stopped while this e-mail was being handed to the mail server; it is "
                                  "not sent again, to never send it twice (the outcome is unknown)", "outcome_unknown")
            message = await self._thread(self._email_message, run, step, principal, smtp)
        except (StepRefused, ValueError) as e:
            run.step_failed(step, getattr(e, "message", None) or "FLUSIA_SMTP_URL is not valid",
                            getattr(e, "code", "not_available"))
            return
        run.sending_step(step["id"])
        await self._thread(self._save, run, org_id, run.id)
        try:
            await mail.send_async(smtp, message)
        except mail.MailError as e:
            run.step_failed(step, f"e-mail not sent: {e}", "email_failed")
        else:
            run.step_done(step, {"sent": True, "template_id": step["config"]["template_id"]})

    def _email_message(self, run: WorkflowRun, step: dict[str, Any], principal: Principal,
                       smtp: mail.SmtpSettings) -> Any:
        config = step["config"]
        with self.pool.connection() as conn:
            try:
                template = settings_q.get_template(conn, run.org_id, UUID(str(config["template_id"])))
            except DomainError:
                raise StepRefused("the e-mail template no longer exists") from None
            values = template_values(conn, run.org_id, run.context, principal.user_id)
        to = wf.render(config.get("to") or "", run.context).strip()
        if not EMAIL.match(to):
            raise StepRefused("there is no valid recipient address for this run (config.to rendered empty or invalid)")
        subject = templates.render(template.get("subject") or "", values)
        html = templates.render(template["html_body"], values, escape_html=True) if template.get("html_body") else None
        text = templates.render(template.get("text_body") or "", values) or subject
        return mail.build_message(sender=smtp.sender, to=to, subject=subject, text=text, html=html,
                                  headers={"X-Flusia-Idempotency-Key": f"wf:{run.id}:{step['id']}"})

    async def _webhook(self, run: WorkflowRun, step: dict[str, Any], workflow: Workflow) -> None:
        import httpx2

        url = step["config"]["url"]
        org_id = run.org_id
        try:
            check_webhook_url(url, self.settings.allow_loopback)
            refused = await self._thread(refused_address, urlsplit(url).hostname or "", self.settings.allow_loopback)
            if refused:
                raise StepRefused(f"webhook refused: {refused}")
            with self.pool.connection() as conn:
                secret = webhook_secret(conn, org_id, workflow.id)
            if secret is None:
                raise StepRefused("the workflow's webhook secret cannot be read with this server's key "
                                  "(FLUSIA_SECRET_KEY changed?)", "not_available")
        except (StepRefused, DomainError) as e:
            run.step_failed(step, e.message, getattr(e, "code", "rule_violation"))
            return
        body = webhook_body(run.id, step, run.context, run.trigger, workflow.id, workflow.name)
        headers = {"Content-Type": "application/json", "User-Agent": "Flusia-Workflows/1",
                   "Idempotency-Key": f"wf:{run.id}:{step['id']}", "X-Flusia-Signature": sign(secret, body),
                   "X-Flusia-Event": str(run.trigger.get("event_type") or run.trigger.get("type"))}
        error, code = "no attempt was made", "webhook_failed"
        async with httpx2.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False) as http:
            for attempt in range(WEBHOOK_ATTEMPTS):
                if attempt:
                    await anyio.sleep(self.settings.webhook_backoff_seconds * 2 ** (attempt - 1))
                run.sending_step(step["id"])  # recorded before the request: a crash after it re-sends with the key
                await self._thread(self._save, run, org_id, run.id)
                try:
                    response = await http.post(url, content=body, headers=headers)
                except httpx2.TimeoutException:
                    error = f"no answer within {WEBHOOK_TIMEOUT_SECONDS:g} s"
                    continue
                except httpx2.HTTPError as e:
                    error = f"could not connect ({type(e).__name__})"
                    continue
                if response.status_code < 300:
                    run.step_done(step, {"status_code": response.status_code, "attempts": attempt + 1})
                    return
                error = f"the receiver answered HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break
        run.step_failed(step, f"webhook failed after {attempt + 1} attempt(s): {error}", code)


# -- what the toolset needs --------------------------------------------------------------------------------------
def unavailable_steps(registry: Any) -> dict[str, str]:
    """Step types this installation cannot run, with the reason (shown by crm_workflows_list_step_types)."""
    out: dict[str, str] = {}
    if registry.get("crm_whatsapp_send_template") is None:
        out["send_whatsapp_template"] = "the WhatsApp toolset is not part of this installation yet"
    if not os.environ.get(mail.SMTP_URL_ENV, "").strip():
        out["send_email"] = f"no SMTP server is configured for this server ({mail.SMTP_URL_ENV})"
    return out


SUBJECT_RESOURCES = {"deal": "deals", "client": "clients", "task": "tasks"}


def step_reads(step_type: str, subjects: set[str]) -> list[tuple[str, str]]:
    """What a step needs besides the tools it calls: a webhook or an e-mail carries the trigger's entities' data
    out of the CRM, so its activator must be allowed to read them (and an e-mail reads its settings template)."""
    if step_type not in ("webhook", "send_email", "send_whatsapp_template"):
        return []
    needs = [(SUBJECT_RESOURCES[s], "read") for s in sorted(subjects) if s in SUBJECT_RESOURCES]
    return needs + ([("settings", "read")] if step_type == "send_email" else [])


def missing_permissions(registry: Any, workflow: Workflow, grants: dict[str, str]) -> str | None:
    """Why the activator's grants cannot run every step (runs act with them), or None."""
    from application.permissions import allows

    subjects = set(wf.trigger_subjects(workflow.trigger["type"], workflow.trigger["config"])) if workflow.trigger else set()
    for position, (step, _) in enumerate(wf.iter_steps(workflow.steps), start=1):
        needs: list[tuple[str, str]] = []
        what = ""
        for tool in step_tools(step["type"], step["config"], subjects):
            op = registry.get(tool)
            if op is not None and op.missing(grants):
                needs, what = op.missing(grants), f"calls {tool}, which needs"
                break
        if not needs:
            needs = [(r, a) for r, a in step_reads(step["type"], subjects) if not allows(grants, r, a)]
            what = "sends data out of the CRM, which needs"
        if needs:
            names = ", ".join(f"{r}:{a}" for r, a in needs)
            return (f"step {position} ({step['type']}) {what} {names}; runs act with the permissions of the user who "
                    "activates the workflow, and yours do not include it")
    return None
