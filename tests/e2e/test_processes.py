"""Several processes on one database: `flusia serve --workers 2`, a second `flusia serve` and a `flusia project`.

- Leadership: each projection (and the newsletter sender) is run by exactly one process at a time, seen from
  PostgreSQL's lock table; when the active consumer process is killed (SIGKILL) a standby takes the locks over and
  read models keep advancing (a write is readable after it); the killed process, restarted, waits as a standby.
  The takeover time is measured and printed (no timing is asserted: the machine is shared).
- Read-your-writes across processes: many writes through one server each followed by a read through another
  (and through new connections to the two-worker server, which the kernel hands to either worker); every read sees
  its write.

Processes are told apart in pg_stat_activity by PGAPPNAME (libpq's application_name) given to each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from application.newsletter_sending import SENDER_LOCK
from interfaces.database import create_database, drop_database
from projections.inventory import all_projections
from projections.projector import advisory_key
from tests.conftest import ROOT, ServerProcess, flusia, start_server
from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CONSUMER_KEYS = sorted({advisory_key(p.name) for p in all_projections()} | {SENDER_LOCK})
HOLDERS = """
SELECT l.objid::bigint AS key, a.application_name AS holder
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.objid::bigint = ANY(%s)
"""


def holders(url: str) -> dict[int, str]:
    """Which process (its application_name) holds each consumer's lock now."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {key: holder for key, holder in conn.execute(HOLDERS, (CONSUMER_KEYS,)).fetchall()}


def wait_for(predicate, timeout: float = 90.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def start_consumer(url: str, name: str) -> subprocess.Popen:
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"flusia-e2e-{name}-{os.getpid()}.log", "w")
    env = {**os.environ, "DATABASE_URL": url, "PGAPPNAME": name, "FLUSIA_FATTUREINCLOUD_URL": "http://127.0.0.1:9",
           "FLUSIA_WHATSAPP_URL": "http://127.0.0.1:9"}
    return subprocess.Popen([sys.executable, "-m", "interfaces.cli", "project"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Cluster:
    def __init__(self, url: str, token: str, consumer: subprocess.Popen, two: ServerProcess, one: ServerProcess):
        self.url, self.token, self.consumer, self.two, self.one = url, token, consumer, two, one


@pytest.fixture(scope="module")
def cluster(admin_url: str) -> Iterator[Cluster]:
    """A database of its own; `flusia project` started first (so it is the active consumer), then a server with two
    API workers and one with one, both standbys for the consumers."""
    from application.migrate import migrate

    name = f"flusia_procs_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    migrate(url)
    token = flusia("org", "create", "--name", "Processi Srl", "--admin-email", "ops@processi.example",
                   env={"DATABASE_URL": url})["token"]
    consumer = start_consumer(url, "consumer-1")
    started: list[ServerProcess] = []
    try:
        wait_for(lambda: set(holders(url).values()) == {"consumer-1"} and len(holders(url)) == len(CONSUMER_KEYS))
        started.append(start_server(url, {"FLUSIA_WORKERS": "2", "PGAPPNAME": "serve-two"}))
        started.append(start_server(url, {"FLUSIA_WORKERS": "1", "PGAPPNAME": "serve-one"}))
        yield Cluster(url, token, consumer, *started)
    finally:
        for srv in started:
            stop(srv.process)
        stop(consumer)
        drop_database(admin_url, name)


async def create_then_find(write: ServerProcess, read: ServerProcess, token: str, label: str) -> None:
    """A lead created through `write` is found by a search through `read` (a new session, so a new connection)."""
    word = f"Prova{uuid.uuid4().hex[:10]}"
    async with mcp_client(write.mcp_url, token) as client:
        lead = await call(client, "crm_clients_create_lead", {"business_name": f"{word} {label} Srl"})
    async with mcp_client(read.mcp_url, token) as client:
        found = await call(client, "crm_clients_search", {"q": word})
    assert lead["id"] in [c["id"] for c in found["items"]], (label, word)


async def test_one_process_runs_each_consumer_and_a_standby_takes_over_when_it_is_killed(cluster: Cluster):
    assert set(holders(cluster.url).values()) == {"consumer-1"}  # the servers wait as standbys
    await create_then_find(cluster.two, cluster.one, cluster.token, "before")

    killed_at = time.monotonic()
    cluster.consumer.send_signal(signal.SIGKILL)
    cluster.consumer.wait(10)
    taken = wait_for(lambda: (lambda h: h if len(h) == len(CONSUMER_KEYS) and "consumer-1" not in h.values()
                              else None)(holders(cluster.url)))
    takeover = time.monotonic() - killed_at
    await create_then_find(cluster.one, cluster.two, cluster.token, "after")
    readable = time.monotonic() - killed_at
    print(f"\nfailover: consumer process SIGKILLed; every consumer lock held again after {takeover:.2f} s "
          f"(by {sorted(set(taken.values()))}); a new write readable through the other server after {readable:.2f} s")
    assert set(taken.values()) <= {"serve-two", "serve-one"}

    # The killed process restarted: a standby now (nobody's locks move to it), and writes keep being readable.
    cluster.consumer = start_consumer(cluster.url, "consumer-1")
    wait_for(lambda: _connected(cluster.url, "consumer-1"))
    time.sleep(1.5)  # longer than a standby's lock retry: had a lock been free, it would have taken it
    assert holders(cluster.url) == taken and cluster.consumer.poll() is None
    await create_then_find(cluster.two, cluster.two, cluster.token, "restarted")


def _connected(url: str, name: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (name,)).fetchone()[0] > 0


async def test_read_your_writes_holds_across_processes_and_workers(cluster: Cluster):
    """Writes through one server read through the other, both ways, and through fresh connections to the two-worker
    server (each a new TCP connection, accepted by whichever worker the kernel picks): every read sees its write."""
    pairs = [(cluster.two, cluster.one), (cluster.one, cluster.two), (cluster.two, cluster.two)] * 12
    for i, (write, read) in enumerate(pairs):
        await create_then_find(write, read, cluster.token, f"pair{i}")


def test_project_prints_what_it_runs(cluster: Cluster):
    """`flusia project` names the consumers it runs on its one line of JSON (read from the restarted one's log)."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"flusia-e2e-consumer-1-{os.getpid()}.log"
    first = json.loads(wait_for(lambda: [line for line in log.read_text().splitlines() if line.startswith("{")])[0])
    assert first["projector"] == "running" and "clients" in first["projections"]
    assert first["consumers"] == ["newsletter", "invoice_sync", "whatsapp"]
