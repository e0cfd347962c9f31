"""Operators manage credentials from the command line, and the running server obeys at once: `flusia token list`
shows tokens without secrets, `flusia token revoke` and `flusia user deactivate` stop the next request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from application import identity, oauth
from tests.conftest import ROOT, flusia
from tests.e2e.test_mcp_endpoint import post, rpc

pytestmark = pytest.mark.e2e


def flusia_error(*args: str, env: dict[str, str]) -> str:
    """Run a `flusia` command that must fail; its JSON error message."""
    proc = subprocess.run([sys.executable, "-m", "interfaces.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    return json.loads(proc.stdout)["error"]


def status_of(server, token: str) -> int:
    return post(server, token, rpc("tools/call", {"name": "crm_users_me", "arguments": {}})).status_code


def oauth_tokens(db, server, org_id, user_id) -> str:
    """An OAuth access token (and its refresh token) for the user, stored as the authorization server stores them."""
    access, family = oauth.new_secret(oauth.ACCESS_PREFIX), uuid.uuid4()
    for table, secret in (("oauth_access_tokens", access), ("oauth_refresh_tokens", oauth.new_secret(oauth.REFRESH_PREFIX))):
        db.execute(
            f"INSERT INTO {table} (token_hash, family_id, client_id, organization_id, user_id, resource, scope, expires_at)"
            " VALUES (%s, %s, 'fcl_test', %s, %s, %s, 'mcp:full', now() + interval '1 hour')",
            (oauth.digest(secret), family, org_id, user_id, server.mcp_url),
        )
    return access


def test_token_list_shows_no_secret_and_revoke_stops_the_token(server, make_org, db, database_url):
    env = {"DATABASE_URL": database_url}
    org = make_org()
    scoped, scoped_id = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"}, name="reports")
    listed = flusia("token", "list", "--org", str(org.organization_id), env=env)["tokens"]
    assert [t["name"] for t in listed] == ["initial admin token", "reports"]
    reports = listed[1]
    assert set(reports) == {"id", "name", "user", "grants", "created_at", "revoked_at", "last_used"}
    assert reports["id"] == str(scoped_id) and reports["grants"] == {"clients": "r"} and reports["revoked_at"] is None
    assert reports["user"]["id"] == str(org.user_id) and listed[0]["grants"] is None
    text = str(listed)
    assert scoped not in text and org.token not in text and "hash" not in text

    assert status_of(server, scoped) == 200
    revoked = flusia("token", "revoke", "--org", str(org.organization_id), "--token-id", str(scoped_id), env=env)
    assert revoked["revoked"]["id"] == str(scoped_id) and revoked["revoked"]["revoked_at"]
    assert status_of(server, scoped) == 401
    assert status_of(server, org.token) == 200  # the other token is untouched
    again = flusia("token", "revoke", "--org", str(org.organization_id), "--token-id", str(scoped_id), env=env)
    assert again == revoked
    changes = flusia("settings", "changes", "--org", str(org.organization_id), env=env)["changes"]
    assert [(c["tool"], c["entity_type"], c["entity_id"], c["action"]) for c in changes] == [
        ("flusia token revoke", "api_token", str(scoped_id), "revoked")]  # once: the second revoke changed nothing
    assert changes[0]["actor_user_id"] is None and changes[0]["actor_token_id"] is None
    other_org = make_org()  # another organization's token id is not found
    error = flusia_error("token", "revoke", "--org", str(other_org.organization_id), "--token-id", str(scoped_id), env=env)
    assert "not found" in error


def test_deactivating_a_user_refuses_their_api_and_oauth_tokens_at_once(server, make_org, db, database_url):
    org = make_org()
    user = identity.create_user(db, org.organization_id, f"leaver-{uuid.uuid4().hex[:6]}@example.com", "Leo Leaver", "sales")
    api_token, _ = identity.create_token(db, org.organization_id, user, None)
    access = oauth_tokens(db, server, org.organization_id, user)
    assert status_of(server, api_token) == 200 and status_of(server, access) == 200

    out = flusia("user", "deactivate", "--org", str(org.organization_id), "--user", str(user),
                 env={"DATABASE_URL": database_url})
    assert out == {"user_id": str(user), "status": "inactive",
                   "revoked": {"api_tokens": 1, "oauth_access_tokens": 1, "oauth_refresh_tokens": 1}}
    assert status_of(server, api_token) == 401
    assert status_of(server, access) == 401
    assert status_of(server, org.token) == 200  # the admin is untouched
    assert db.execute("SELECT status FROM users WHERE id = %s", (user,)).fetchone()["status"] == "inactive"
    answer = post(server, org.token, rpc("tools/call", {"name": "crm_audit_recent_changes", "arguments": {}})).json()
    seen = answer["result"]["structuredContent"]["items"]
    console = [c for c in seen if c.get("tool") == "flusia user deactivate"]
    assert len(console) == 1 and console[0]["entity_id"] == str(user), seen
    left = db.execute("SELECT count(*) AS n FROM oauth_refresh_tokens WHERE user_id = %s AND revoked_at IS NULL",
                      (user,)).fetchone()["n"]
    assert left == 0
