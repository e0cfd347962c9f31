"""`flusia` subcommands print one JSON object; they honour DATABASE_URL, else the embedded server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, flusia


def test_org_user_token_and_projection_commands(fresh_database_url):
    env = {"DATABASE_URL": fresh_database_url}
    assert flusia("migrate", env=env) == {"applied": []}
    org = flusia("org", "create", "--name", "Studio", "--admin-email", "boss@studio.it", env=env)
    assert org["token"].startswith("flusia_") and len(org["token"]) >= len("flusia_") + 32
    user = flusia("user", "create", "--org", org["organization_id"], "--email", "s@studio.it", "--name", "Sara", "--role", "sales", env=env)
    token = flusia("token", "create", "--org", org["organization_id"], "--user", user["user_id"],
                   "--perm", "clients:r", "--perm", "tasks:rw", env=env)
    with psycopg.connect(fresh_database_url) as conn:
        stored = conn.execute("SELECT token_hash, grants FROM api_tokens WHERE id = %s", (token["token_id"],)).fetchone()
    assert token["token"].encode() not in bytes(stored[0]) and stored[1] == {"clients": "r", "tasks": "rw"}
    status = flusia("projections", "status", env=env)
    assert set(status) == {"event_store_head", "projections"}
    rebuilt = flusia("projections", "rebuild", "clients", env=env)
    assert rebuilt == {"rebuilt": {"clients": {"events_applied": 0, "parked": []}}}


def test_bad_permission_flag_is_a_clear_error(fresh_database_url):
    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", "token", "create", "--org", "00000000-0000-0000-0000-000000000000",
                           "--user", "00000000-0000-0000-0000-000000000000", "--perm", "clients:x"],
                          cwd=ROOT, env={**os.environ, "DATABASE_URL": fresh_database_url}, capture_output=True, text=True)
    assert proc.returncode == 2 and "rwd" in json.loads(proc.stdout)["error"]


@pytest.mark.skipif(os.environ.get("FLUSIA_SKIP_EMBEDDED") == "1", reason="embedded PostgreSQL disabled")
def test_without_database_url_the_embedded_server_is_used(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["FLUSIA_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", "org", "create", "--name", "Emb", "--admin-email", "e@x.it"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["token"].startswith("flusia_")
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
