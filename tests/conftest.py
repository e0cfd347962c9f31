"""Shared fixtures: a fresh PostgreSQL database per test session, runtimes, organizations, a real server.

PostgreSQL comes from TEST_DATABASE_URL (an admin URL), else the local server on 127.0.0.1:5432, else the
embedded server (the same one `flusia serve` uses without DATABASE_URL).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from interfaces.database import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


def _admin_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(local, connect_timeout=3).close()
        return local
    except psycopg.OperationalError:
        from interfaces.database import database_url_for, start_embedded

        return database_url_for(start_embedded(), "postgres")


@pytest.fixture(scope="session")
def admin_url() -> str:
    return _admin_url()


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """One migrated database for the whole session; tests isolate themselves by organization."""
    from application.migrate import migrate

    name = f"flusia_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    migrate(url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture
def fresh_database_url(admin_url: str) -> Iterator[str]:
    """A database of its own, for tests that compare whole tables (rebuild, kill/restart)."""
    from application.migrate import migrate

    name = f"flusia_iso_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    migrate(url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture(scope="session")
def runtime(database_url: str):
    """The same wiring `flusia serve` uses, with the projector following live in a thread."""

    from interfaces.runtime import Runtime

    rt = Runtime(database_url, consistency="settle")
    rt.projector.start(database_url)
    yield rt
    rt.close()


@dataclass
class Org:
    organization_id: uuid.UUID
    user_id: uuid.UUID
    token: str

    def principal(self, url: str, token: str | None = None):
        from application.identity import principal_for_token

        with psycopg.connect(url, row_factory=dict_row) as conn:
            return principal_for_token(conn, token or self.token)


@pytest.fixture
def make_org(database_url: str):
    """Factory: a new organization with an admin user and token; users and tokens can be added."""
    from application import identity

    def make(name: str = "Org") -> Org:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            created = identity.create_organization(conn, f"{name} {uuid.uuid4().hex[:6]}", f"admin-{uuid.uuid4().hex[:8]}@example.com", "Admin")
        return Org(created.organization_id, created.user_id, created.token)

    return make


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    base_url: str
    database_url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"


def start_server(database_url: str, extra_env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    # No test reaches the real FattureInCloud: unless a test points it at its local stub, the server's invoice sync
    # worker talks to a closed loopback port (queued items of seeded organizations then fail at once).
    env = {**os.environ, "DATABASE_URL": database_url, "FLUSIA_FATTUREINCLOUD_URL": "http://127.0.0.1:9",
           "FLUSIA_WHATSAPP_URL": "http://127.0.0.1:9",  # nor the real WhatsApp Cloud API
           **(extra_env or {})}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"flusia-e2e-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    return ServerProcess(f"http://127.0.0.1:{port}", database_url, proc, Path(log.name))


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[ServerProcess]:
    """The real server (uvicorn via `flusia serve`) on a free port, sharing the session database."""
    srv = start_server(database_url)
    yield srv
    srv.process.terminate()
    try:
        srv.process.wait(10)
    except subprocess.TimeoutExpired:
        srv.process.kill()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def flusia(*args: str, env: dict[str, str], stdin: str | None = None) -> dict:
    """Run the `flusia` command line; it must succeed and print exactly one JSON object."""
    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, input=stdin, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture
def iso_runtime(fresh_database_url):
    """A runtime on a database of its own, settling projections synchronously after each write."""
    from interfaces.runtime import Runtime

    rt = Runtime(fresh_database_url, pool_size=6, consistency="settle")
    yield rt
    rt.close()


def settle(rt) -> None:
    """Bring every projection up to date now (tests that call the runner in-process)."""
    rt.settle()
