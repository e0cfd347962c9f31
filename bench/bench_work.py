#!/usr/bin/env python
"""Work-management benchmark (issue 5). Standalone: not part of the test suite.

Seeds, through events (aggregates saved with the event store in batches of 1,000, then projected by the
projector), 100,000 tasks (50 assignees, due dates spread over a year, about half done) and 10,000 wiki
pages (markdown bodies of ~120 words from a Zipf-distributed vocabulary) in a fresh database, then measures
in-process through the ToolRunner (validation, permission check, query, msgspec output, thread hop):

- `crm_tasks_list` with due='overdue' for one assignee (the organization's timezone decides "today");
- `crm_wiki_search` with one- and two-word queries (ranked, with ts_headline snippets);

next to a baseline measured in the same run: a bare single-row indexed SELECT by primary key through the
same connection pool. Targets: p50 < 20 ms for each tool. Prints the numbers and writes bench/results/work.json.

Usage (repository root, venv active):  python bench/bench_work.py
Environment: BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres), BENCH_TASKS
(default 100000), BENCH_PAGES (default 10000), BENCH_N (calls per measurement, default 300),
BENCH_KEEP_DB=1 to keep the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
N_TASKS = int(os.environ.get("BENCH_TASKS", "100000"))
N_PAGES = int(os.environ.get("BENCH_PAGES", "10000"))
N_CALLS = int(os.environ.get("BENCH_N", "300"))
N_USERS = 50
BATCH = 1000
TARGET_P50_MS = 20.0
T0 = time.monotonic()

SYLLABLES = ["ca", "fe", "ri", "lo", "ma", "ne", "to", "sa", "bi", "gu", "pe", "do", "li", "vo", "ra", "ze", "mi", "co"]


def say(msg: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - T0:6.1f}s] {msg}\n")
    sys.stderr.flush()


def stats_ms(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "p50_ms": round(q[49], 3), "p95_ms": round(q[94], 3), "mean_ms": round(statistics.fmean(ms), 3)}


def vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def seed(url: str, org_id: uuid.UUID, users: list[uuid.UUID]) -> tuple[list[str], dict[str, float]]:
    from domain.tasks import Task
    from domain.wiki import WikiPage
    from interfaces.runtime import Runtime

    rng = random.Random(5)
    vocab = vocabulary(rng)
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf: a few very common words, a long tail
    rt = Runtime(url, pool_size=4)
    today = dt.date.today()
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        for start in range(0, N_TASKS, BATCH):
            batch = []
            for i in range(start, min(start + BATCH, N_TASKS)):
                fields = {"title": f"Task {i} " + " ".join(rng.choices(vocab, weights, k=4)),
                          "description": None, "priority": rng.choice(["low", "normal", "high", "urgent"]),
                          "due_date": today + dt.timedelta(days=rng.randint(-180, 180)) if rng.random() < 0.9 else None}
                task = Task(org_id=org_id, fields=fields, assignee_id=rng.choice(users), created_by=users[0])
                if rng.random() < 0.5:
                    task.complete()
                batch.append(task)
            rt.store.save(*batch)
            if start % 20000 == 0:
                say(f"seed: {start + len(batch)}/{N_TASKS} tasks saved")
        for start in range(0, N_PAGES, BATCH):
            batch = []
            for i in range(start, min(start + BATCH, N_PAGES)):
                body = "\n\n".join(" ".join(rng.choices(vocab, weights, k=40)) + "." for _ in range(3))
                batch.append(WikiPage.create(org_id, f"Page {i} " + " ".join(rng.choices(vocab, weights, k=3)), body,
                                             language="italian", author_id=users[0]))
            rt.store.save(*batch)
        out["save_s"] = round(time.perf_counter() - t, 1)
        say(f"seed: events saved in {out['save_s']}s; projecting")
        t = time.perf_counter()
        for p in rt.projections:
            tp = time.perf_counter()
            n = rt.projector.catch_up(p)
            say(f"seed: projection {p.name}: {n} events in {time.perf_counter() - tp:.1f}s")
        out["project_s"] = round(time.perf_counter() - t, 1)
        with rt.pool.connection() as conn:
            for table in ("tasks", "wiki_pages"):
                conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        rt.close()
    return vocab, out


async def measure(rt: Any, principal: Any, users: list[uuid.UUID], vocab: list[str]) -> dict[str, Any]:
    rng = random.Random(7)
    service = rt.runner

    async def timed(fn: Any, n: int) -> list[float]:
        for _ in range(20):  # warm-up
            await fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await fn()
            samples.append(time.perf_counter() - t)
        return samples

    with rt.pool.connection() as conn:
        ids = [r["id"] for r in conn.execute("SELECT id FROM tasks ORDER BY random() LIMIT 1000").fetchall()]

    def bare_select() -> Any:
        with rt.pool.connection() as conn:
            return conn.execute("SELECT id, title FROM tasks WHERE id = %s", (rng.choice(ids),)).fetchone()

    async def baseline() -> None:
        import anyio

        await anyio.to_thread.run_sync(bare_select, limiter=service.limiter)

    counts: list[int] = []

    async def overdue() -> None:
        out = await service.call(principal, "crm_tasks_list", {"due": "overdue", "assignee_id": str(rng.choice(users))})
        counts.append(len(out["items"]))

    common, mid = vocab_ranks(vocab)
    hits: list[int] = []

    async def search() -> None:
        r = rng.random()
        q = rng.choice(mid) if r < 0.6 else (f"{rng.choice(mid)} {rng.choice(mid)}" if r < 0.85 else rng.choice(common))
        out = await service.call(principal, "crm_wiki_search", {"q": q})
        hits.append(len(out["items"]))

    res = {"baseline_select": stats_ms(await timed(baseline, N_CALLS)),
           "tasks_list_overdue_assignee": stats_ms(await timed(overdue, N_CALLS)),
           "wiki_search": stats_ms(await timed(search, N_CALLS))}
    res["tasks_list_overdue_assignee"]["avg_items"] = round(statistics.fmean(counts), 1)
    res["wiki_search"]["avg_hits"] = round(statistics.fmean(hits), 1)
    return res


def vocab_ranks(vocab: list[str]) -> tuple[list[str], list[str]]:
    """Zipf ranks as seeded: the first words are very common, ranks 50-1000 are typical search words."""
    return vocab[:20], vocab[50:1000]


def main() -> None:
    import psycopg
    from psycopg.rows import dict_row

    from application import identity
    from application.migrate import migrate
    from interfaces.runtime import Runtime

    from interfaces.database import create_database, drop_database

    admin = os.environ.get("BENCH_ADMIN_URL", ADMIN_DEFAULT)
    name = f"flusia_bench_work_{os.getpid()}"
    url = create_database(admin, name)
    res: dict[str, Any] = {"tasks": N_TASKS, "pages": N_PAGES}
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench", "bench@example.com", "Bench Admin")
            users = [org.user_id] + [identity.create_user(conn, org.organization_id, f"u{i}@example.com", f"User {i}", "sales")
                                     for i in range(N_USERS - 1)]
            principal = identity.principal_for_token(conn, org.token)
        vocab, res["seed"] = seed(url, org.organization_id, users)
        rt = Runtime(url, pool_size=8)
        try:
            res.update(asyncio.run(measure(rt, principal, users, vocab)))
        finally:
            rt.close()
        for key in ("tasks_list_overdue_assignee", "wiki_search"):
            res[key]["pass"] = res[key]["p50_ms"] < TARGET_P50_MS
            res[key]["ratio_to_baseline_p50"] = round(res[key]["p50_ms"] / res["baseline_select"]["p50_ms"], 2)
        res["elapsed_s"] = round(time.monotonic() - T0, 1)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "work.json").write_text(json.dumps(res, indent=2, default=str))
        b = res["baseline_select"]
        print(f"seed: {N_TASKS} tasks + {N_PAGES} pages; save {res['seed']['save_s']}s, project {res['seed']['project_s']}s")
        print(f"baseline SELECT by id           p50 {b['p50_ms']:7.2f} ms  p95 {b['p95_ms']:7.2f} ms")
        for key, label in (("tasks_list_overdue_assignee", "crm_tasks_list overdue+assignee"),
                           ("wiki_search", "crm_wiki_search              ")):
            r = res[key]
            print(f"{label} p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  x{r['ratio_to_baseline_p50']} baseline"
                  f"  target p50 < {TARGET_P50_MS:.0f} ms: {'PASS' if r['pass'] else 'FAIL'}")
    finally:
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(admin, name)


if __name__ == "__main__":
    main()
