"""Workflows on the read side: the `workflows` read model, and `workflow_triggers`, the consumer that starts runs.

`WorkflowsProjection` is an ordinary read model (definitions, runs, each run's step log), rebuildable from 0.

`WorkflowTriggers` is a stream consumer on the projector's mechanism (tracking row, batches, parking per
organization, advisory-lock leadership, shown by `flusia projections status` and `/readyz`), but not a read
model. In its batch transaction it matches each event against the workflows of the event's organization that
were active at that point of the stream (its own `workflow_triggers` table, kept from Workflow events in order)
and inserts one `workflow_pending` row per match, keyed unique (workflow_id, trigger key): the rows commit with
the tracking position, so a trigger starts at most one run across restarts and across processes. The engine
(application/workflow_engine.py) claims those rows.

- Loops: each event's cause row names the run that caused it (if any); a run's depth is its cause's run depth + 1
  (1 for an event a person caused). Deeper than `MAX_DEPTH` the row is recorded as `cut` and never started.
- Timers: `schedule` keeps one timer per workflow at its next tick; `task_due` one per (workflow, open task with a
  due date), kept in step with the tasks' events through `workflow_task_dues`. The engine fires due timers.
- Not rebuildable (`rebuildable = False`): its rows record runs that happened. `flusia projections rebuild`
  keeps its rows and position and says so; if its position is ever reset anyway, replayed events meet their
  ledger rows (ON CONFLICT DO NOTHING) and start nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from domain import workflows as wf
from domain.tasks import Task
from domain.workflows import Workflow, WorkflowRun
from projections.base import Projection, exists, handles, set_columns, touch
from projections.pagination import BY_CREATION, Sort, paginate

WAKE_CHANNEL = "flusia_workflows"
"""NOTIFY'd when a pending run is inserted: the engine wakes without polling."""

WORKFLOW_COLUMNS = (
    "id, name, description, status, status_reason, trigger, steps, steps_count, activated_by,"
    " (SELECT name FROM users u WHERE u.id = activated_by) AS activated_by_name, activated_at, has_secret, created_by,"
    " created_at, updated_at, runs_count, last_run_id, last_run_status, last_run_at"
)
RUNS_NEWEST = Sort("started_at", "timestamptz", descending=True)
RUN_COLUMNS = (
    "id, workflow_id, workflow_name, workflow_version, status, trigger_type, trigger_event_type,"
    " trigger_notification_id, trigger_entity_type, trigger_entity_id, triggered_at, depth, waiting_until, error,"
    " stop_reason, started_at, finished_at, updated_at"
)


def _step_count(steps: list[dict[str, Any]]) -> int:
    return wf.count_steps(steps)


class WorkflowsProjection(Projection):
    name = "workflows"
    tables = ("workflows", "workflow_runs", "workflow_run_steps")
    resources = ("workflows",)

    @handles(Workflow.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO workflows (id, organization_id, name, description, created_by, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.name, e.description, e.created_by, e.timestamp, e.timestamp))

    @handles(Workflow.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "workflows", e, dict(e.changes))

    @handles(Workflow.TriggerSet)
    def trigger_set(self, cur: Any, e: Any) -> None:
        touch(cur, "workflows", e, "trigger = %s", (Jsonb(e.trigger),))

    @handles(Workflow.StepAdded, Workflow.StepUpdated, Workflow.StepRemoved, Workflow.StepsReordered)
    def steps_changed(self, cur: Any, e: Any) -> None:
        touch(cur, "workflows", e, "steps = %s, steps_count = %s", (Jsonb(e.steps), _step_count(e.steps)))

    @handles(Workflow.SecretIssued)
    def secret_issued(self, cur: Any, e: Any) -> None:
        touch(cur, "workflows", e, "has_secret = true")

    @handles(Workflow.Activated)
    def activated(self, cur: Any, e: Any) -> None:
        touch(cur, "workflows", e, "status = 'active', status_reason = NULL, activated_by = %s, activated_at = %s",
              (e.activated_by, e.timestamp))

    @handles(Workflow.Paused)
    def paused(self, cur: Any, e: Any) -> None:
        touch(cur, "workflows", e, "status = 'paused', status_reason = %s", (e.reason,))

    @handles(Workflow.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM workflow_run_steps WHERE run_id IN (SELECT id FROM workflow_runs WHERE workflow_id = %s)",
                    (e.originator_id,))
        cur.execute("DELETE FROM workflow_runs WHERE workflow_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM workflows WHERE id = %s", (e.originator_id,))

    # -- runs ----------------------------------------------------------------------------------------------
    @handles(WorkflowRun.Started)
    def run_started(self, cur: Any, e: Any) -> None:
        t = e.trigger
        cur.execute(
            "INSERT INTO workflow_runs (id, organization_id, workflow_id, workflow_name, workflow_version, status,"
            " trigger_type, trigger_key, trigger_event_type, trigger_notification_id, trigger_entity_type,"
            " trigger_entity_id, triggered_at, depth, started_at, updated_at)"
            " SELECT %s, %s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
            " WHERE EXISTS (SELECT 1 FROM workflows WHERE id = %s)",
            (e.originator_id, e.org_id, e.workflow_id, e.workflow_name, e.workflow_version, t.get("type"), t.get("key"),
             t.get("event_type"), t.get("notification_id"), t.get("entity_type"), t.get("entity_id"),
             t.get("occurred_at"), e.depth, e.timestamp, e.timestamp, e.workflow_id))
        cur.execute("UPDATE workflows SET runs_count = runs_count + 1, last_run_id = %s, last_run_status = 'running',"
                    " last_run_at = %s WHERE id = %s", (e.originator_id, e.timestamp, e.workflow_id))

    def _step_row(self, cur: Any, e: Any, status: str, *, attempt: int | None = None, result: Any = None,
                  error: str | None = None, code: str | None = None, until: datetime | None = None) -> None:
        cur.execute(
            "INSERT INTO workflow_run_steps (run_id, seq, organization_id, step_id, step_type, status, attempt, result,"
            " error, error_code, waiting_until, at)"
            " SELECT id, %s, organization_id, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM workflow_runs WHERE id = %s",
            (e.originator_version, e.step_id, getattr(e, "step_type", None), status, attempt,
             None if result is None else Jsonb(result), error, code, until, e.timestamp, e.originator_id))

    def _run(self, cur: Any, e: Any, status: str, sets: str = "", params: tuple[Any, ...] = ()) -> None:
        touch(cur, "workflow_runs", e, f"status = %s{', ' + sets if sets else ''}", (status, *params))
        cur.execute("UPDATE workflows SET last_run_status = %s WHERE last_run_id = %s", (status, e.originator_id))

    @handles(WorkflowRun.StepSending)
    def step_sending(self, cur: Any, e: Any) -> None:
        self._step_row(cur, e, "sending", attempt=e.attempt)

    @handles(WorkflowRun.StepDone)
    def step_done(self, cur: Any, e: Any) -> None:
        self._step_row(cur, e, "done", result=e.result)
        self._run(cur, e, "running", "waiting_until = NULL")

    @handles(WorkflowRun.StepFailed)
    def step_failed(self, cur: Any, e: Any) -> None:
        self._step_row(cur, e, "failed", error=e.error, code=e.code)
        touch(cur, "workflow_runs", e, "error = %s", (e.error,))

    @handles(WorkflowRun.WaitingUntil)
    def waiting(self, cur: Any, e: Any) -> None:
        self._step_row(cur, e, "waiting", until=e.until)
        self._run(cur, e, "waiting", "waiting_until = %s", (e.until,))

    @handles(WorkflowRun.Finished)
    def finished(self, cur: Any, e: Any) -> None:
        self._run(cur, e, e.status, "finished_at = %s, waiting_until = NULL", (e.timestamp,))

    @handles(WorkflowRun.Stopped)
    def stopped(self, cur: Any, e: Any) -> None:
        self._run(cur, e, "stopped", "finished_at = %s, waiting_until = NULL, stop_reason = %s", (e.timestamp, e.reason))


# -- the trigger consumer -----------------------------------------------------------------------------------
MATCH = """
WITH ev AS (
    SELECT notification_id AS n, organization_id AS org FROM stored_events
    WHERE originator_id = %(oid)s AND originator_version = %(ver)s
), matched AS (
    SELECT workflow_id, organization_id, version FROM workflow_triggers
    WHERE organization_id = (SELECT org FROM ev) AND active AND topic = %(topic)s
      AND (match_value IS NULL OR match_value = %(match)s)
), parent AS (
    SELECT coalesce((
        SELECT p.depth FROM ev
        CROSS JOIN LATERAL (SELECT workflow_run_id, last_notification_id FROM event_causes
                            WHERE first_notification_id <= ev.n ORDER BY first_notification_id DESC LIMIT 1) c
        JOIN workflow_pending p ON p.run_id = c.workflow_run_id
        WHERE c.last_notification_id >= ev.n), 0) AS depth
), ins AS (
    INSERT INTO workflow_pending (run_id, organization_id, workflow_id, workflow_version, trigger_key, notification_id,
                                  depth, status, due_at)
    SELECT workflow_run_id(m.workflow_id, 'event:' || ev.n), m.organization_id, m.workflow_id, m.version,
           'event:' || ev.n, ev.n, parent.depth + 1,
           CASE WHEN parent.depth + 1 > %(max_depth)s THEN 'cut' ELSE 'pending' END, 'epoch'
    FROM matched m CROSS JOIN ev CROSS JOIN parent
    ON CONFLICT DO NOTHING
    RETURNING status
)
SELECT pg_notify('""" + WAKE_CHANNEL + """', '') FROM ins WHERE status = 'pending' LIMIT 1
"""
TASK_TIMERS = """
INSERT INTO workflow_timers (workflow_id, timer_key, organization_id, kind, due_at, task_id)
SELECT t.workflow_id, 'due:' || d.task_id || ':' || d.due_date, t.organization_id, 'task_due',
       ((d.due_date - (t.config->>'days_before')::int) + make_time(coalesce((t.config->>'at_hour')::int, 9), 0, 0))
           AT TIME ZONE o.timezone,
       d.task_id
FROM workflow_triggers t
JOIN workflow_task_dues d ON d.organization_id = t.organization_id
JOIN organizations o ON o.id = t.organization_id
WHERE (%(org)s::uuid IS NULL OR t.organization_id = %(org)s) AND t.active AND t.trigger_type = 'task_due'
  AND d.open AND d.due_date IS NOT NULL
  AND (%(task)s::uuid IS NULL OR d.task_id = %(task)s) AND (%(workflow)s::uuid IS NULL OR t.workflow_id = %(workflow)s)
  AND d.due_date >= (%(at)s::timestamptz AT TIME ZONE o.timezone)::date
ON CONFLICT DO NOTHING
"""


class WorkflowTriggers(Projection):
    """Matches events to active workflows and records one pending run per match (see the module docstring)."""

    name = "workflow_triggers"
    tables = ("workflow_triggers", "workflow_task_dues", "workflow_timers", "workflow_pending")
    resources = ()
    rebuildable = False
    max_depth = wf.MAX_DEPTH

    _TASK = {Task.Created: "task_created", Task.Updated: "task_updated", Task.Completed: "task_closed",
             Task.Reopened: "task_reopened", Task.Deleted: "task_deleted"}
    _WORKFLOW = (Workflow.Created, Workflow.Updated, Workflow.TriggerSet, Workflow.StepAdded, Workflow.StepUpdated,
                 Workflow.StepRemoved, Workflow.StepsReordered, Workflow.SecretIssued, Workflow.Activated,
                 Workflow.Paused, Workflow.Deleted)

    @classmethod
    def topics(cls) -> list[str]:
        return [get_topic(c) for c in (*cls._WORKFLOW, *wf.EVENT_TYPES.values())]

    def apply(self, cur: Any, event: Any, notification_id: int | None = None) -> None:
        self.notification_id = notification_id
        kind = type(event)
        if kind in self._WORKFLOW:
            self.workflow_event(cur, event)
            return
        if kind in self._TASK:
            getattr(self, self._TASK[kind])(cur, event)
        self.match(cur, event)

    def clear(self, cur: Any) -> None:
        """Never emptied: its rows record runs that happened (see `rebuildable`)."""

    # -- matching ------------------------------------------------------------------------------------------
    def match(self, cur: Any, e: Any) -> None:
        key = wf.TOPIC_MATCH.get(type(e))
        value = key(e) if key is not None else None
        cur.execute(MATCH, {"oid": e.originator_id, "ver": e.originator_version, "topic": get_topic(type(e)), "match": None if value is None else str(value),
                            "max_depth": self.max_depth})

    # -- workflows, in stream order -------------------------------------------------------------------------
    def workflow_event(self, cur: Any, e: Any) -> None:
        if isinstance(e, Workflow.Created):
            cur.execute("INSERT INTO workflow_triggers (workflow_id, organization_id, version) VALUES (%s, %s, %s)"
                        " ON CONFLICT (workflow_id) DO NOTHING", (e.originator_id, e.org_id, e.originator_version))
            return
        if isinstance(e, Workflow.Deleted):
            cur.execute("DELETE FROM workflow_timers WHERE workflow_id = %s", (e.originator_id,))
            cur.execute("DELETE FROM workflow_triggers WHERE workflow_id = %s", (e.originator_id,))
            return
        cur.execute("UPDATE workflow_triggers SET version = %s WHERE workflow_id = %s",
                    (e.originator_version, e.originator_id))
        if isinstance(e, Workflow.TriggerSet):
            t = e.trigger
            events = wf.trigger_events(t["type"], t["config"])
            cur.execute("UPDATE workflow_triggers SET trigger_type = %s, topic = %s, match_value = %s, config = %s"
                        " WHERE workflow_id = %s",
                        (t["type"], get_topic(events[0]) if events else None, wf.match_value(t["type"], t["config"]),
                         Jsonb(t["config"]), e.originator_id))
            self._timers(cur, e)
        elif isinstance(e, Workflow.Activated):
            cur.execute("UPDATE workflow_triggers SET active = true WHERE workflow_id = %s", (e.originator_id,))
            self._timers(cur, e)
        elif isinstance(e, Workflow.Paused):
            cur.execute("UPDATE workflow_triggers SET active = false WHERE workflow_id = %s", (e.originator_id,))
            cur.execute("DELETE FROM workflow_timers WHERE workflow_id = %s", (e.originator_id,))

    def _timers(self, cur: Any, e: Any) -> None:
        """Timers of an active timer-triggered workflow, from the event's moment (its own time, so a replay agrees)."""
        cur.execute("DELETE FROM workflow_timers WHERE workflow_id = %s", (e.originator_id,))
        with cur.connection.cursor(row_factory=tuple_row) as read:
            row = read.execute(
                "SELECT t.trigger_type, t.config, t.active, t.organization_id, o.timezone FROM workflow_triggers t"
                " JOIN organizations o ON o.id = t.organization_id WHERE t.workflow_id = %s",
                (e.originator_id,)).fetchone()
        if row is None or not row[2]:
            return
        ttype, config, _, org, timezone = row
        if ttype == "schedule":
            due = wf.next_cron(config["cron"], e.timestamp, timezone)
            cur.execute("INSERT INTO workflow_timers (workflow_id, timer_key, organization_id, kind, due_at)"
                        " VALUES (%s, 'schedule', %s, 'schedule', %s)", (e.originator_id, org, due))
        elif ttype == "task_due":
            cur.execute(TASK_TIMERS, {"org": org, "task": None, "workflow": e.originator_id, "at": e.timestamp})

    # -- tasks' due dates (task_due timers) -----------------------------------------------------------------
    def _task_timers(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM workflow_timers WHERE task_id = %s", (e.originator_id,))
        cur.execute(TASK_TIMERS, {"org": None, "task": e.originator_id, "workflow": None, "at": e.timestamp})

    def task_created(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO workflow_task_dues (task_id, organization_id, due_date, open) VALUES (%s, %s, %s, true)"
                    " ON CONFLICT (task_id) DO UPDATE SET due_date = EXCLUDED.due_date, open = true",
                    (e.originator_id, e.org_id, (e.fields or {}).get("due_date")))
        self._task_timers(cur, e)

    def task_updated(self, cur: Any, e: Any) -> None:
        if "due_date" in e.changes:
            cur.execute("UPDATE workflow_task_dues SET due_date = %s WHERE task_id = %s",
                        (e.changes["due_date"], e.originator_id))
            self._task_timers(cur, e)

    def task_closed(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE workflow_task_dues SET open = false WHERE task_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM workflow_timers WHERE task_id = %s", (e.originator_id,))

    def task_reopened(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE workflow_task_dues SET open = true WHERE task_id = %s", (e.originator_id,))
        self._task_timers(cur, e)

    def task_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM workflow_timers WHERE task_id = %s", (e.originator_id,))
        cur.execute("DELETE FROM workflow_task_dues WHERE task_id = %s", (e.originator_id,))


# -- queries ----------------------------------------------------------------------------------------------
def workflow_exists(conn: Any, org_id: UUID, workflow_id: UUID) -> bool:
    return exists(conn, "workflows", org_id, workflow_id)


def get_workflow(conn: Any, org_id: UUID, workflow_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE organization_id = %s AND id = %s",
                       (org_id, workflow_id)).fetchone()
    if row is not None:
        row["runs_cut_by_loop_limit"] = conn.execute(
            "SELECT count(*) AS n FROM workflow_pending WHERE organization_id = %s AND workflow_id = %s AND status = 'cut'",
            (org_id, workflow_id)).fetchone()["n"]
    return row


def list_workflows(conn: Any, org_id: UUID, *, status: str | None, limit: int, cursor: str | None):
    where = "FROM workflows WHERE organization_id = %s AND (%s::text IS NULL OR status = %s)"
    return paginate(conn, WORKFLOW_COLUMNS, where, [org_id, status, status], BY_CREATION["created_desc"], limit, cursor)


def list_runs(conn: Any, org_id: UUID, workflow_id: UUID, *, status: str | None, limit: int, cursor: str | None):
    where = ("FROM workflow_runs WHERE organization_id = %s AND workflow_id = %s"
             " AND (%s::text IS NULL OR status = %s)")
    return paginate(conn, RUN_COLUMNS, where, [org_id, workflow_id, status, status], RUNS_NEWEST, limit, cursor)


def get_run(conn: Any, org_id: UUID, run_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {RUN_COLUMNS} FROM workflow_runs WHERE organization_id = %s AND id = %s",
                       (org_id, run_id)).fetchone()
    if row is not None:
        row["steps"] = conn.execute(
            "SELECT seq, step_id, step_type, status, attempt, result, error, error_code, waiting_until, at"
            " FROM workflow_run_steps WHERE organization_id = %s AND run_id = %s ORDER BY seq", (org_id, run_id)).fetchall()
    return row


def find_event(conn: Any, org_id: UUID, notification_id: int) -> dict[str, Any] | None:
    """A stored event of this organization (for dry runs against a real past event)."""
    return conn.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM stored_events"
        " WHERE notification_id = %s AND organization_id = %s", (notification_id, org_id)).fetchone()


def latest_event(conn: Any, org_id: UUID, topic: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM stored_events"
        " WHERE organization_id = %s AND topic = %s ORDER BY notification_id DESC LIMIT 1", (org_id, topic)).fetchone()


def aggregate_events(conn: Any, originator_id: UUID, up_to_notification: int | None) -> list[dict[str, Any]]:
    """An aggregate's stored events up to a point of the stream (its state at that moment), in version order."""
    return conn.execute(
        "SELECT originator_id, originator_version, topic, state FROM stored_events WHERE originator_id = %s"
        " AND (%s::bigint IS NULL OR notification_id <= %s) ORDER BY originator_version",
        (originator_id, up_to_notification, up_to_notification)).fetchall()
