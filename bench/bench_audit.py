#!/usr/bin/env python
"""Audit benchmark (issue 11). Standalone: not part of the test suite.

Seeds, through the event store (aggregates saved in batches of 1,000 events), 1,000,000 events in one organization
(tasks created, renamed, completed; plus 10,000 in a second organization), one task with 1,000 events of its own, and
cause rows as commands write them: one per command of one or two events, over the last year, by 20 users with a dozen
tools (rewritten in SQL after the bulk save, which records one cause per batch). Then measures, in-process through the
ToolRunner (validation, permission check, query, replay, msgspec output, thread hop):

- `crm_audit_entity_history` of the task with 1,000 events: first page oldest first, first page newest first (every
  event replayed either way), a page in the middle by cursor;
- `crm_audit_recent_changes` over the 1,000,000 events: the newest page, the next page by cursor, one user's, one
  tool's, one entity type's, and a week-long window a month ago;

next to a baseline measured in the same run: a bare single-row indexed SELECT by primary key through the same pool.
Target: p50 < 50 ms for each. Prints the numbers and writes bench/results/audit.json.

Usage (repository root, venv active):  python bench/bench_audit.py
Environment: BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres), BENCH_EVENTS (default
1000000), BENCH_N (calls per measurement, default 200), BENCH_KEEP_DB=1 to keep the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
N_EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
N_CALLS = int(os.environ.get("BENCH_N", "200"))
N_USERS = 20
BATCH = 1000
TARGET_P50_MS = 50.0
TOOLS = ["crm_tasks_create", "crm_tasks_update", "crm_tasks_complete", "crm_tasks_assign", "crm_tasks_add_tag",
         "crm_tasks_add_checklist_item", "crm_tasks_reopen", "crm_tasks_delete", "crm_tasks_unassign",
         "crm_tasks_remove_tag", "crm_tasks_update_checklist_item", "crm_tasks_add_attachment"]
T0 = time.monotonic()


def say(msg: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


def stats_ms(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "p50_ms": round(q[49], 3), "p95_ms": round(q[94], 3), "mean_ms": round(statistics.fmean(ms), 3)}


def seed(url: str, org_id: uuid.UUID, other_org: uuid.UUID, users: list[uuid.UUID]) -> tuple[uuid.UUID, dict[str, Any]]:
    """1,000,000 events of the organization (and 10,000 of another), a task with 1,000 events, causes per command."""
    from domain.tasks import Task
    from interfaces.runtime import Runtime

    rng = random.Random(11)
    rt = Runtime(url, pool_size=4, consistency="settle")
    out: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        long_task = Task(org_id=org_id, fields={"title": "Long-lived task", "priority": "normal"}, assignee_id=users[0],
                         created_by=users[0])
        items: list[uuid.UUID] = []
        for i in range(999):  # renamed, checklist items added (up to 50) and ticked: 1,000 events with the creation
            if i % 3 != 2:
                long_task.update({"title": f"Long-lived task, revision {i}"})
            elif len(items) < 50:
                items.append(long_task.add_checklist_item(f"step {i}"))
            else:
                item = rng.choice(items)
                long_task.update_checklist_item(item, done=not long_task.checklist[str(item)]["done"])
        rt.store.save(long_task, organization_id=org_id)
        from domain.wiki import WikiPage

        pages = [WikiPage.create(org_id, f"Page {i}", "text", language="italian", author_id=users[0]) for i in range(200)]
        rt.store.save(*pages, organization_id=org_id)  # a rare entity type, among the oldest events
        saved = 1200
        for org, total in ((org_id, N_EVENTS - 1200), (other_org, 10_000)):
            done = 0
            while done < total:
                batch, events = [], 0
                while events < BATCH and done + events < total:
                    task = Task(org_id=org, fields={"title": f"Task {done + events}", "priority": "normal"},
                                assignee_id=rng.choice(users), created_by=users[0])
                    events += 1
                    if events < BATCH and done + events < total and rng.random() < 0.6:
                        task.update({"title": f"Task {done + events} renamed"})
                        events += 1
                    if events < BATCH and done + events < total and rng.random() < 0.3:
                        task.complete()
                        events += 1
                    batch.append(task)
                rt.store.save(*batch, organization_id=org)
                done += events
                saved += events
                if saved % 100_000 < BATCH:
                    say(f"seed: {saved} events saved")
        out["save_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        with rt.pool.connection() as conn:
            conn.execute("SET statement_timeout = 0")
            # One cause per command of one or two events, spread over the last year, oldest first.
            for org in (org_id, other_org):
                conn.execute(
                    """
                    WITH events AS (
                        SELECT notification_id, row_number() OVER (ORDER BY notification_id) AS n,
                               count(*) OVER () AS total
                        FROM stored_events WHERE organization_id = %(org)s
                    ), commands AS (
                        SELECT min(notification_id) AS first, max(notification_id) AS last, min(n) AS n,
                               (min(n) - 1) / 2 AS c, min(total) AS total
                        FROM events GROUP BY (n - 1) / 2
                    )
                    INSERT INTO event_causes (first_notification_id, last_notification_id, organization_id, user_id,
                                              correlation_id, tool, recorded_at)
                    SELECT first, last, %(org)s, (%(users)s::uuid[])[1 + (c %% %(n_users)s)], gen_random_uuid(),
                           (%(tools)s::text[])[1 + ((c * 7) %% %(n_tools)s)],
                           now() - interval '365 days' * (1 - n::float8 / total)
                    FROM commands
                    """, {"org": org, "users": users, "n_users": len(users), "tools": TOOLS, "n_tools": len(TOOLS)})
            conn.execute("VACUUM ANALYZE event_causes")
            conn.execute("VACUUM ANALYZE stored_events")
        out["causes_s"] = round(time.perf_counter() - t, 1)
        say(f"seed: saved in {out['save_s']}s, causes written in {out['causes_s']}s")
    finally:
        rt.close()
    return long_task.id, out


async def measure(rt: Any, principal: Any, users: list[uuid.UUID], task_id: uuid.UUID) -> dict[str, Any]:
    rng = random.Random(7)
    service = rt.runner

    async def timed(fn: Any, n: int) -> list[float]:
        for _ in range(10):  # warm-up
            await fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await fn()
            samples.append(time.perf_counter() - t)
        return samples

    with rt.pool.connection() as conn:
        ids = [r["originator_id"] for r in conn.execute(
            "SELECT originator_id FROM stored_events WHERE originator_version = 1 ORDER BY notification_id DESC LIMIT 1000").fetchall()]

    def bare_select() -> Any:
        with rt.pool.connection() as conn:
            return conn.execute("SELECT originator_id, topic FROM stored_events WHERE originator_id = %s"
                                " AND originator_version = 1", (rng.choice(ids),)).fetchone()

    async def baseline() -> None:
        import anyio

        await anyio.to_thread.run_sync(bare_select, limiter=service.limiter)

    def call(tool: str, args: dict[str, Any]) -> Any:
        async def run() -> None:
            out = await service.call(principal, tool, args)
            assert out["items"], (tool, args)
        return run

    history = {"entity_id": str(task_id)}
    middle = await service.call(principal, "crm_audit_entity_history", {**history, "limit": 100})
    for _ in range(4):
        middle = await service.call(principal, "crm_audit_entity_history",
                                    {**history, "limit": 100, "cursor": middle["next_cursor"]})
    first = await service.call(principal, "crm_audit_recent_changes", {})
    now = datetime.now(UTC)
    cases = {
        "baseline_select": baseline,
        "history_oldest_first": call("crm_audit_entity_history", history),
        "history_newest_first": call("crm_audit_entity_history", {**history, "sort": "newest_first"}),
        "history_middle_page": call("crm_audit_entity_history", {**history, "cursor": middle["next_cursor"]}),
        "recent_changes": call("crm_audit_recent_changes", {}),
        "recent_changes_next_page": call("crm_audit_recent_changes", {"cursor": first["next_cursor"]}),
        "recent_changes_one_user": call("crm_audit_recent_changes", {"user_id": str(users[7])}),
        "recent_changes_one_tool": call("crm_audit_recent_changes", {"tool": "crm_tasks_reopen"}),
        "recent_changes_entity_type": call("crm_audit_recent_changes", {"entity_type": "task"}),
        "recent_changes_rare_entity_type": call("crm_audit_recent_changes", {"entity_type": "wiki_page"}),
        "recent_changes_window_a_month_ago": call("crm_audit_recent_changes", {
            "since": (now - timedelta(days=37)).isoformat(), "until": (now - timedelta(days=30)).isoformat()}),
    }
    return {name: stats_ms(await timed(fn, N_CALLS)) for name, fn in cases.items()}


def main() -> None:
    import psycopg
    from psycopg.rows import dict_row

    from application import identity
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database
    from interfaces.runtime import Runtime

    admin = os.environ.get("BENCH_ADMIN_URL", ADMIN_DEFAULT)
    name = f"flusia_bench_audit_{os.getpid()}"
    url = create_database(admin, name)
    res: dict[str, Any] = {"events": N_EVENTS}
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench", "bench@example.com", "Bench Admin")
            other = identity.create_organization(conn, "Other", "other@example.com", "Other Admin")
            users = [org.user_id] + [identity.create_user(conn, org.organization_id, f"u{i}@example.com", f"User {i}",
                                                          "sales") for i in range(N_USERS - 1)]
            principal = identity.principal_for_token(conn, org.token)
        task_id, res["seed"] = seed(url, org.organization_id, other.organization_id, users)
        rt = Runtime(url, pool_size=8, consistency="settle")
        try:
            res.update(asyncio.run(measure(rt, principal, users, task_id)))
        finally:
            rt.close()
        base = res["baseline_select"]["p50_ms"]
        for key, r in res.items():
            if isinstance(r, dict) and "p50_ms" in r and key != "baseline_select":
                r["pass"] = r["p50_ms"] < TARGET_P50_MS
                r["ratio_to_baseline_p50"] = round(r["p50_ms"] / base, 1)
        res["elapsed_s"] = round(time.monotonic() - T0, 1)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "audit.json").write_text(json.dumps(res, indent=2, default=str))
        print(f"seed: {N_EVENTS} events (+10,000 of another organization); save {res['seed']['save_s']}s,"
              f" causes {res['seed']['causes_s']}s")
        b = res["baseline_select"]
        print(f"{'baseline SELECT by primary key':40} p50 {b['p50_ms']:7.2f} ms  p95 {b['p95_ms']:7.2f} ms")
        for key, r in res.items():
            if isinstance(r, dict) and "pass" in r:
                print(f"{key:40} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  x{r['ratio_to_baseline_p50']}"
                      f" baseline  target p50 < {TARGET_P50_MS:.0f} ms: {'PASS' if r['pass'] else 'FAIL'}")
    finally:
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(admin, name)


if __name__ == "__main__":
    main()
