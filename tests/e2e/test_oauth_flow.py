"""The OAuth 2.1 authorization server in front of /mcp, driven as real clients drive it.

The happy path uses the `mcp` SDK's own OAuth client (discovery, registration, PKCE, token exchange, refresh);
the test plays the user by submitting the login and consent forms with httpx2. Negative tests speak the
protocol by hand, one refusal each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.mcp_helpers import call

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PASSWORD = "correct horse battery staple"
CALLBACK = "http://localhost:6274/oauth/callback"


# --- helpers -------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _registration_budget(db):
    """Every test here registers clients and signs in from 127.0.0.1: start each with fresh per-address budgets."""
    db.execute("DELETE FROM oauth_rate_events WHERE bucket LIKE 'register:%%'")
    db.execute("DELETE FROM oauth_login_throttle")


def user_with_password(make_org, db, name: str = "OAuth") -> tuple[Any, str]:
    from application import oauth

    org = make_org(name)
    email = db.execute("SELECT email FROM users WHERE id = %s", (org.user_id,)).fetchone()["email"]
    oauth.set_password(db, org.organization_id, org.user_id, PASSWORD)
    return org, email


def hidden(html: str, name: str) -> str | None:
    m = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', html)
    return unescape(m.group(1)) if m else None


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


class Browser:
    """A user agent with a cookie jar that reads forms and submits them, following only same-server redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx2.AsyncClient(base_url=base, follow_redirects=False, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def open(self, url: str) -> httpx2.Response:
        return await self.http.get(url)

    async def login(self, page: httpx2.Response, email: str, password: str, *, csrf: str | None = "from-page") -> httpx2.Response:
        form = {"email": email, "password": password, "request": hidden(page.text, "request") or ""}
        if csrf == "from-page":
            form["csrf_token"] = hidden(page.text, "csrf_token") or ""
        elif csrf is not None:
            form["csrf_token"] = csrf
        response = await self.http.post("/authorize/login", data=form)
        if response.status_code == 303 and response.headers["location"].startswith("/authorize?"):
            return await self.http.get(response.headers["location"])
        return response

    async def decide(self, page: httpx2.Response, decision: str, extra: dict[str, str] | None = None,
                     *, csrf: str | None = "from-page") -> httpx2.Response:
        form = {"decision": decision, "request": hidden(page.text, "request") or "", **(extra or {})}
        if csrf == "from-page":
            form["csrf_token"] = hidden(page.text, "csrf_token") or ""
        user = hidden(page.text, "user")
        if user and "user" not in form:
            form["user"] = user
        return await self.http.post("/authorize/consent", data=form)

    async def authorize(self, url: str, email: str, password: str = PASSWORD, decision: str = "approve") -> dict[str, str]:
        page = await self.open(url)
        assert page.status_code == 200, page.text
        if 'name="password"' in page.text:
            page = await self.login(page, email, password)
        assert page.status_code == 200 and 'name="decision"' in page.text, page.text
        done = await self.decide(page, decision)
        assert done.status_code == 303, done.text
        return redirect_params(done.headers["location"])


def redirect_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


async def register(base: str, redirect_uris: list[str] | None = None, **meta: Any) -> dict[str, Any]:
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/register", json={
            "client_name": "Test client", "redirect_uris": redirect_uris or [CALLBACK],
            "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"], **meta,
        })
    assert r.status_code == 201, r.text
    return r.json()


def authorize_url(base: str, client_id: str, challenge: str, *, redirect_uri: str = CALLBACK, state: str = "st4te",
                  resource: str | None = "default", method: str = "S256", **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state,
              "code_challenge": challenge, "code_challenge_method": method, "scope": "mcp:full", **extra}
    if resource == "default":
        params["resource"] = f"{base}/mcp"
    elif resource is not None:
        params["resource"] = resource
    return f"/authorize?{urlencode(params)}"


async def token_request(base: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(f"{base}/token", data=data, auth=auth)


async def get_code(base: str, client: dict[str, Any], email: str, challenge: str, **kw: Any) -> str:
    browser = Browser(base)
    try:
        params = await browser.authorize(authorize_url(base, client["client_id"], challenge, **kw), email)
    finally:
        await browser.close()
    assert "code" in params, params
    return params["code"]


async def exchange(base: str, client: dict[str, Any], code: str, verifier: str, redirect_uri: str = CALLBACK,
                   **extra: str) -> httpx2.Response:
    return await token_request(base, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                      "redirect_uri": redirect_uri, "client_id": client["client_id"],
                                      "resource": f"{base}/mcp", **extra})


async def tokens_for(base: str, email: str) -> tuple[dict[str, Any], dict[str, Any]]:
    client = await register(base)
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    r = await exchange(base, client, code, verifier)
    assert r.status_code == 200, r.text
    return client, r.json()


async def mcp_status(base: str, token: str, host: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if host:
        headers["Host"] = host
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/mcp", json=body, headers=headers)
    return r.status_code


def assert_oauth_error(r: httpx2.Response, error: str) -> None:
    assert r.status_code in (400, 401), (r.status_code, r.text)
    assert r.json()["error"] == error, r.text
    assert r.headers.get("cache-control") == "no-store"


# --- the whole flow with the SDK -----------------------------------------------------------------------

async def test_whole_flow_with_the_mcp_sdk(server, make_org, db):
    org, email = user_with_password(make_org, db, "SDKFlow")
    base = server.base_url
    browser = Browser(base)
    redirected: list[str] = []
    result: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        redirected.append(url)
        params = await browser.authorize(url, email)
        result.update(params)

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=result["code"], state=result.get("state"), iss=result.get("iss"))

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=server.mcp_url,
        client_metadata=OAuthClientMetadata(client_name="SDK e2e", redirect_uris=[CALLBACK],
                                            grant_types=["authorization_code", "refresh_token"],
                                            response_types=["code"], token_endpoint_auth_method="none"),
        storage=storage, redirect_handler=redirect_handler, callback_handler=callback_handler,
    )
    # 401 first: the resource points at its metadata
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(server.mcp_url, json={})
    assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=60) as http:
            async with Client(streamable_http_client(server.mcp_url, http_client=http)) as client:
                me = await call(client, "crm_users_me")
                assert me["auth"] == "oauth"
                assert me["user"]["id"] == str(org.user_id)
                assert me["organization"]["id"] == str(org.organization_id)
                assert "clients:delete" in me["permissions"]  # admin role, scope mcp:full
                assert redirected and storage.client_info is not None
                assert result["iss"] == base and result["state"]
                first = storage.tokens
                assert first is not None and first.refresh_token and first.access_token.startswith("fat_")

                # force a refresh: the SDK rotates to a new pair before the next call
                provider.context.token_expiry_time = time.time() - 1
                lead = await call(client, "crm_clients_create_lead", {"business_name": "OAuth Lead Srl"})
                assert lead["business_name"] == "OAuth Lead Srl"
                second = storage.tokens
                assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
                assert len(redirected) == 1  # refreshed, not re-authorized
    finally:
        await browser.close()

    # the old access token still works until it expires (only the refresh token rotated)...
    assert await mcp_status(base, second.access_token) == 200
    # ...revoking the refresh token ends the grant at once: its access tokens stop working too
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/revoke", data={"token": second.refresh_token, "client_id": storage.client_info.client_id})
    assert r.status_code == 200
    assert await mcp_status(base, second.access_token) == 401
    assert await mcp_status(base, first.access_token) == 401
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": second.refresh_token,
                                   "client_id": storage.client_info.client_id})
    assert_oauth_error(r, "invalid_grant")
    # static API tokens keep working beside OAuth
    assert await mcp_status(base, org.token) == 200


async def test_discovery_documents(server):
    base = server.base_url
    async with httpx2.AsyncClient(timeout=30) as http:
        asm = (await http.get(f"{base}/.well-known/oauth-authorization-server")).json()
        prm = (await http.get(f"{base}/.well-known/oauth-protected-resource")).json()
        prm_mcp = (await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")).json()
    assert asm["issuer"] == base
    assert asm["code_challenge_methods_supported"] == ["S256"]
    assert asm["authorization_response_iss_parameter_supported"] is True
    assert asm["client_id_metadata_document_supported"] is True
    assert set(asm["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert {"none", "client_secret_post", "client_secret_basic"} <= set(asm["token_endpoint_auth_methods_supported"])
    assert asm["registration_endpoint"] == f"{base}/register" and asm["revocation_endpoint"] == f"{base}/revoke"
    assert asm["scopes_supported"] == ["mcp:full"]
    assert prm == prm_mcp and prm["resource"] == f"{base}/mcp" and prm["authorization_servers"] == [base]


async def test_access_token_revocation_is_immediate(server, make_org, db):
    _, email = user_with_password(make_org, db, "RevokeAccess")
    base = server.base_url
    client, tokens = await tokens_for(base, email)
    assert await mcp_status(base, tokens["access_token"]) == 200
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/revoke", data={"token": tokens["access_token"], "client_id": client["client_id"]})
    assert r.status_code == 200
    assert await mcp_status(base, tokens["access_token"]) == 401
    # the refresh token is separate and still works
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                   "client_id": client["client_id"]})
    assert r.status_code == 200


async def test_confidential_client_with_basic_and_post_auth(server, make_org, db):
    _, email = user_with_password(make_org, db, "Confidential")
    base = server.base_url
    for method in ("client_secret_basic", "client_secret_post"):
        client = await register(base, token_endpoint_auth_method=method)
        assert client["client_secret"].startswith("fcs_")
        stored = db.execute("SELECT client_secret_hash FROM oauth_clients WHERE client_id = %s", (client["client_id"],)).fetchone()
        assert bytes(stored["client_secret_hash"]) == hashlib.sha256(client["client_secret"].encode()).digest()
        verifier, challenge = pkce()
        code = await get_code(base, client, email, challenge)
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": CALLBACK,
                "resource": f"{base}/mcp"}
        # without the secret: invalid_client
        r = await token_request(base, {**data, "client_id": client["client_id"]})
        assert_oauth_error(r, "invalid_client")
        # a wrong secret: invalid_client too; failed client authentication does not consume the code
        r = await token_request(base, {**data, "client_id": client["client_id"], "client_secret": "fcs_wrong"})
        assert_oauth_error(r, "invalid_client")
        if method == "client_secret_basic":
            r = await token_request(base, data, auth=(client["client_id"], client["client_secret"]))
        else:
            r = await token_request(base, {**data, "client_id": client["client_id"], "client_secret": client["client_secret"]})
        assert r.status_code == 200, r.text
        assert await mcp_status(base, r.json()["access_token"]) == 200


# --- registration -----------------------------------------------------------------------------------

async def test_registration_validates_redirect_uris(server):
    base = server.base_url
    ok = await register(base, [
        "https://claude.ai/api/mcp/auth_callback", "https://claude.com/api/mcp/auth_callback",
        "http://localhost:6274/oauth/callback", "http://localhost:6274/oauth/callback/debug",
        "http://127.0.0.1:33418/cb", "http://[::1]:9999/cb", "https://app.example.org/oauth",
    ])
    assert ok["token_endpoint_auth_method"] == "none" and "client_secret" not in ok
    async with httpx2.AsyncClient(timeout=30) as http:
        for bad in (["http://evil.example.com/cb"], ["javascript:alert(1)"], ["https://a.example/cb#frag"], [],
                    ["http://localhost.evil.com/cb"], ["ftp://example.com/x"]):
            r = await http.post(f"{base}/register", json={"redirect_uris": bad, "token_endpoint_auth_method": "none"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_redirect_uri", (bad, r.text)


async def test_registration_is_rate_limited_per_address(server, db):
    base = server.base_url
    db.execute("DELETE FROM oauth_rate_events WHERE bucket LIKE 'register:%%'")
    db.execute("INSERT INTO oauth_rate_events (bucket) SELECT 'register:127.0.0.1' FROM generate_series(1, 30)")
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/register", json={"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"})
    assert r.status_code == 429 and "Retry-After" in r.headers
    db.execute("DELETE FROM oauth_rate_events WHERE bucket LIKE 'register:%%'")


async def test_unused_registrations_expire(server, make_org, db):
    _, email = user_with_password(make_org, db, "Expire")
    base = server.base_url
    client = await register(base)
    db.execute("UPDATE oauth_clients SET created_at = now() - interval '30 days' WHERE client_id = %s", (client["client_id"],))
    _, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, client["client_id"], challenge))
    finally:
        await browser.close()
    assert page.status_code == 400 and "registration has expired" in page.text


# --- negative tests: /token ------------------------------------------------------------------------

async def test_wrong_verifier_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "WrongVerifier")
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    other_verifier, _ = pkce()
    assert_oauth_error(await exchange(base, client, code, other_verifier), "invalid_grant")


async def test_reused_code_is_refused_and_revokes_its_tokens(server, make_org, db):
    _, email = user_with_password(make_org, db, "ReusedCode")
    base = server.base_url
    client = await register(base)
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    first = await exchange(base, client, code, verifier)
    assert first.status_code == 200
    assert_oauth_error(await exchange(base, client, code, verifier), "invalid_grant")
    assert await mcp_status(base, first.json()["access_token"]) == 401


async def test_code_for_another_client_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "OtherClient")
    base = server.base_url
    client, intruder = await register(base), await register(base)
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    assert_oauth_error(await exchange(base, intruder, code, verifier), "invalid_grant")


async def test_mismatched_redirect_uri_at_token_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "RedirectMismatch")
    base = server.base_url
    client = await register(base, [CALLBACK, "http://localhost:6274/oauth/callback/debug"])
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    r = await exchange(base, client, code, verifier, redirect_uri="http://localhost:6274/oauth/callback/debug")
    assert_oauth_error(r, "invalid_grant")


async def test_foreign_resource_at_token_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "ForeignResourceToken")
    base = server.base_url
    client = await register(base)
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    r = await exchange(base, client, code, verifier, resource="https://other.example.com/mcp")
    assert_oauth_error(r, "invalid_target")


async def test_expired_code_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "ExpiredCode")
    base = server.base_url
    client = await register(base)
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    db.execute("UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE code_hash = %s",
               (hashlib.sha256(code.encode()).digest(),))
    assert_oauth_error(await exchange(base, client, code, verifier), "invalid_grant")


async def test_rotated_out_refresh_token_revokes_the_family(server, make_org, db):
    _, email = user_with_password(make_org, db, "Rotation")
    base = server.base_url
    client, tokens = await tokens_for(base, email)
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                   "client_id": client["client_id"]})
    assert r.status_code == 200
    newer = r.json()
    assert newer["refresh_token"] != tokens["refresh_token"]
    assert await mcp_status(base, newer["access_token"]) == 200
    # the old one again: refused, and the whole family (newer tokens too) is revoked
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                   "client_id": client["client_id"]})
    assert_oauth_error(r, "invalid_grant")
    assert await mcp_status(base, newer["access_token"]) == 401
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": newer["refresh_token"],
                                   "client_id": client["client_id"]})
    assert_oauth_error(r, "invalid_grant")


async def test_revoked_refresh_token_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "RevokedRefresh")
    base = server.base_url
    client, tokens = await tokens_for(base, email)
    async with httpx2.AsyncClient(timeout=30) as http:
        assert (await http.post(f"{base}/revoke", data={"token": tokens["refresh_token"],
                                                        "client_id": client["client_id"]})).status_code == 200
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                   "client_id": client["client_id"]})
    assert_oauth_error(r, "invalid_grant")


async def test_token_of_another_audience_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "Audience")
    base = server.base_url
    _, tokens = await tokens_for(base, email)
    port = urlsplit(base).port
    # the token was issued for http://127.0.0.1:PORT/mcp, the server's own URL: a Host header changes nothing
    assert await mcp_status(base, tokens["access_token"]) == 200
    assert await mcp_status(base, tokens["access_token"], host=f"localhost:{port}") == 200
    # one minted for a foreign resource is refused
    db.execute("UPDATE oauth_access_tokens SET resource = 'https://other.example.com/mcp' WHERE token_hash = %s",
               (hashlib.sha256(tokens["access_token"].encode()).digest(),))
    assert await mcp_status(base, tokens["access_token"]) == 401


async def test_client_without_refresh_grant_gets_no_refresh_token(server, make_org, db):
    _, email = user_with_password(make_org, db, "NoRefresh")
    base = server.base_url
    client = await register(base, grant_types=["authorization_code"])
    verifier, challenge = pkce()
    code = await get_code(base, client, email, challenge)
    r = await exchange(base, client, code, verifier)
    assert r.status_code == 200 and "refresh_token" not in r.json()
    r = await token_request(base, {"grant_type": "refresh_token", "refresh_token": "frt_x", "client_id": client["client_id"]})
    assert_oauth_error(r, "unauthorized_client")


async def test_unsupported_grant_type(server):
    base = server.base_url
    client = await register(base)
    r = await token_request(base, {"grant_type": "password", "client_id": client["client_id"]})
    assert_oauth_error(r, "unsupported_grant_type")


# --- negative tests: /authorize ----------------------------------------------------------------------

async def _authorize_error_page(base: str, url: str) -> str:
    """A bad request of a self-registered client: an error page naming the error, never a redirect to its
    unvetted redirect URI (RFC 9700 §4.11.2)."""
    browser = Browser(base)
    try:
        r = await browser.open(url)
    finally:
        await browser.close()
    assert r.status_code == 400 and "location" not in r.headers, (r.status_code, r.headers)
    assert "cannot continue" in r.text
    return unescape(re.search(r'<p class="error" role="alert">(.*?)</p>', r.text, re.S).group(1))


async def test_plain_pkce_and_missing_pkce_are_refused(server):
    base = server.base_url
    client = await register(base)
    verifier, _ = pkce()
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], verifier, method="plain"))
    assert message.startswith("invalid_request:") and "S256" in message
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], ""))
    assert message.startswith("invalid_request:") and "PKCE" in message


async def test_missing_or_foreign_resource_is_refused(server):
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], challenge, resource=None))
    assert message.startswith("invalid_request:") and "resource" in message
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], challenge,
                                                              resource="https://other.example.com/mcp"))
    assert message.startswith("invalid_target:")


async def test_only_the_code_flow(server):
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], challenge, response_type="token"))
    assert message.startswith("unsupported_response_type:")
    message = await _authorize_error_page(base, authorize_url(base, client["client_id"], challenge, scope="admin"))
    assert message.startswith("invalid_scope:")


async def test_open_redirect_attempts_get_an_error_page_not_a_redirect(server):
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    try:
        for url in (
            authorize_url(base, client["client_id"], challenge, redirect_uri="https://evil.example.com/cb"),
            authorize_url(base, client["client_id"], challenge, redirect_uri=CALLBACK + "/../../evil"),
            authorize_url(base, client["client_id"], challenge, redirect_uri=CALLBACK + "?next=https://evil.example.com"),
            authorize_url(base, "fcl_unknown", challenge, redirect_uri="https://evil.example.com/cb"),
            authorize_url(base, client["client_id"], challenge, redirect_uri="https://evil.example.com/cb", method="plain"),
        ):
            r = await browser.open(url)
            assert r.status_code == 400 and "location" not in r.headers, url
            assert "cannot continue" in r.text
    finally:
        await browser.close()


async def test_deny_shows_a_page_and_issues_nothing(server, make_org, db):
    org, email = user_with_password(make_org, db, "Deny")
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, client["client_id"], challenge))
        consent = await browser.login(page, email, PASSWORD)
        denied = await browser.decide(consent, "deny")
    finally:
        await browser.close()
    # a self-registered client's redirect URI is not vetted: no redirect, even for access_denied
    assert denied.status_code == 200 and "location" not in denied.headers
    assert "Access not granted" in denied.text and "Test client" in denied.text
    assert db.execute("SELECT count(*) AS n FROM oauth_codes WHERE user_id = %s", (org.user_id,)).fetchone()["n"] == 0


async def test_csrf_token_missing_or_wrong_is_refused(server, make_org, db):
    _, email = user_with_password(make_org, db, "CSRF")
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, client["client_id"], challenge))
        # the login form's token is bound to a nonce cookie; nothing is stored server-side yet
        cookie = next(iter(browser.http.cookies.jar))
        assert cookie.name == "flusia_login" and cookie.has_nonstandard_attr("HttpOnly")
        set_cookie = page.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=lax" in set_cookie
        assert (await browser.login(page, email, PASSWORD, csrf=None)).status_code == 403
        assert (await browser.login(page, email, PASSWORD, csrf="forged")).status_code == 403
        issued, _, mac = hidden(page.text, "csrf_token").partition(".")
        assert (await browser.login(page, email, PASSWORD, csrf=f"{int(issued) + 1}.{mac}")).status_code == 403
        # the token of another browser (another nonce cookie) is refused too
        other = Browser(base)
        try:
            foreign = hidden((await other.open(authorize_url(base, client["client_id"], challenge))).text, "csrf_token")
        finally:
            await other.close()
        assert (await browser.login(page, email, PASSWORD, csrf=foreign)).status_code == 403
        consent = await browser.login(page, email, PASSWORD)
        assert 'name="decision"' in consent.text
        assert any(c.name == "flusia_oauth" for c in browser.http.cookies.jar)  # the session, after the login
        r = await browser.decide(consent, "approve", csrf=None)
        assert r.status_code == 403 and "CSRF" in r.text and "location" not in r.headers
    finally:
        await browser.close()


async def test_login_does_not_reveal_which_part_was_wrong(server, make_org, db):
    _, email = user_with_password(make_org, db, "LoginLimit")
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, client["client_id"], challenge))
        wrong_password = await browser.login(page, email, "not the password")
        wrong_email = await browser.login(page, "nobody-" + email, PASSWORD)
        assert wrong_password.status_code == wrong_email.status_code == 401
        message = re.compile(r'<p class="error" role="alert">(.*?)</p>')
        assert message.search(wrong_password.text).group(1) == message.search(wrong_email.text).group(1)
        # the login page after a failure carries a fresh form: the right password goes through
        consent = await browser.login(wrong_password, email, PASSWORD)
        assert consent.status_code == 200 and 'name="decision"' in consent.text
    finally:
        await browser.close()


async def test_email_in_several_organizations_picks_the_organization(server, make_org, db):
    from application import identity, oauth

    email = f"multi-{uuid.uuid4().hex[:8]}@example.com"
    first, second = make_org("MultiA"), make_org("MultiB")
    user_a = identity.create_user(db, first.organization_id, email, "Multi A", "viewer")
    user_b = identity.create_user(db, second.organization_id, email, "Multi B", "sales")
    oauth.set_password(db, first.organization_id, user_a, PASSWORD)
    oauth.set_password(db, second.organization_id, user_b, PASSWORD)
    base = server.base_url
    client = await register(base)
    verifier, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, client["client_id"], challenge))
        consent = await browser.login(page, email, PASSWORD)
        assert consent.text.count('type="radio" name="user"') == 2
        done = await browser.decide(consent, "approve", {"user": str(user_b)})
    finally:
        await browser.close()
    code = redirect_params(done.headers["location"])["code"]
    r = await exchange(base, client, code, verifier)
    token = r.json()["access_token"]
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(server.mcp_url, http_client=http)) as mcp:
            me = await call(mcp, "crm_users_me")
    assert me["user"]["id"] == str(user_b) and me["organization"]["id"] == str(second.organization_id)
    assert "clients:delete" not in me["permissions"] and "clients:write" in me["permissions"]  # capped by role


def test_cli_set_password_reads_stdin(database_url, make_org, db):
    import sys

    from application import oauth

    org = make_org("CLI")
    env = {**os.environ, "DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "user", "set-password", "--org", str(org.organization_id),
         "--user", str(org.user_id)], input="s3cret-password\n", capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2], check=True,
    )
    assert json.loads(out.stdout) == {"user_id": str(org.user_id), "password_set": True}
    stored = db.execute("SELECT password_hash FROM users WHERE id = %s", (org.user_id,)).fetchone()["password_hash"]
    assert stored.startswith("$argon2id$") and oauth.check_password(stored, "s3cret-password")


# --- Client ID Metadata Documents ----------------------------------------------------------------------

@pytest.fixture
def cimd_host(tmp_path):
    """An https server on loopback (self-signed certificate for localhost) serving client metadata documents."""
    import http.server
    import ssl
    import threading

    from tests.conftest import free_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    documents: dict[str, bytes] = {}
    fetched: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            fetched.append(self.path)
            body = documents.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=600")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"base": f"https://localhost:{port}", "documents": documents, "fetched": fetched, "cert": str(cert)}
    httpd.shutdown()


async def test_client_id_metadata_document(database_url, make_org, db, cimd_host):
    from tests.conftest import start_server

    _, email = user_with_password(make_org, db, "CIMD")
    client_id = f"{cimd_host['base']}/oauth/client.json"
    cimd_host["documents"]["/oauth/client.json"] = json.dumps({
        "client_id": client_id, "client_name": "Metadata Document Client", "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none",
    }).encode()
    cimd_host["documents"]["/oauth/big.json"] = b'{"client_id": "' + b"x" * 200_000 + b'"}'
    srv = start_server(database_url, {"FLUSIA_CIMD_ALLOW_LOOPBACK": "1", "SSL_CERT_FILE": cimd_host["cert"]})
    try:
        base = srv.base_url
        verifier, challenge = pkce()
        browser = Browser(base)
        try:
            page = await browser.open(authorize_url(base, client_id, challenge))
            assert page.status_code == 200 and "Metadata Document Client" in page.text
            consent = await browser.login(page, email, PASSWORD)
            assert "Metadata Document Client" in consent.text and "localhost:6274" in consent.text
            done = await browser.decide(consent, "approve")
            # cached: a second authorization does not fetch again
            await browser.open(authorize_url(base, client_id, challenge))
            # a document over the size cap is refused
            big = await browser.open(authorize_url(base, f"{cimd_host['base']}/oauth/big.json", challenge))
            assert big.status_code == 400
            # a bad request of a metadata-document client: an error page, not a redirect to its own URI
            bad = await browser.open(authorize_url(base, client_id, challenge, method="plain"))
            assert bad.status_code == 400 and "location" not in bad.headers and "invalid_request" in bad.text
        finally:
            await browser.close()
        assert cimd_host["fetched"].count("/oauth/client.json") == 1
        code = redirect_params(done.headers["location"])["code"]
        r = await token_request(base, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                       "redirect_uri": CALLBACK, "client_id": client_id, "resource": f"{base}/mcp"})
        assert r.status_code == 200, r.text
        assert await mcp_status(base, r.json()["access_token"]) == 200
    finally:
        srv.process.terminate()
        srv.process.wait(10)


async def test_client_id_metadata_document_on_a_private_address_is_refused(server, cimd_host):
    # the shared server does not allow loopback: the document is never fetched
    base = server.base_url
    _, challenge = pkce()
    browser = Browser(base)
    try:
        page = await browser.open(authorize_url(base, f"{cimd_host['base']}/oauth/never.json", challenge))
    finally:
        await browser.close()
    assert page.status_code == 400 and "location" not in page.headers
    assert cimd_host["fetched"] == []


def test_address_rules():
    from application import oauth

    for refused in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fe80::1",
                    "fc00::1", "0.0.0.0", "::ffff:127.0.0.1", "100.64.0.1", "not-an-ip"):
        assert oauth.address_refused(refused, allow_loopback=False), refused
    assert not oauth.address_refused("127.0.0.1", allow_loopback=True)
    assert oauth.address_refused("10.0.0.1", allow_loopback=True)
    assert not oauth.address_refused("93.184.216.34", allow_loopback=False)


# --- a real browser -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-separated JSON)."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=412,915", "about:blank"],
            # close_fds would run after `wire` and close fds 3 and 4 again
            preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_chrome], [], [], remaining)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"document.readyState === 'complete' && !!({expression})"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression}: {self.evaluate('document.body && document.body.innerText')}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True)
        except Exception:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (apt-get install chromium)")
async def test_login_and_consent_in_headless_chromium(server, make_org, db, tmp_path):
    import http.server
    import threading

    from tests.conftest import free_port

    _, email = user_with_password(make_org, db, "Chromium")
    received: list[str] = []

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"You can close this window.")

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    callback_server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Callback)
    threading.Thread(target=callback_server.serve_forever, daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    base = server.base_url
    client = await register(base, [redirect_uri], client_name="Chromium Test App")
    verifier, challenge = pkce()
    chrome = DevTools(tmp_path / "profile")
    try:
        chrome.open(base + authorize_url(base, client["client_id"], challenge, redirect_uri=redirect_uri))
        chrome.wait_for("document.querySelector('input[name=password]')")
        assert chrome.evaluate("document.querySelector('meta[name=viewport]') !== null")
        chrome.screenshot(tmp_path / "login.png")
        chrome.evaluate(f"document.querySelector('#email').value = {json.dumps(email)};"
                        f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
                        "document.querySelector('form button[type=submit]').click(); true")
        chrome.wait_for("document.querySelector('button[name=decision][value=approve]')")
        text = chrome.evaluate("document.body.innerText")
        assert "Chromium Test App" in text and f"127.0.0.1:{port}" in text and "mcp:full" in text
        chrome.screenshot(tmp_path / "consent.png")
        chrome.evaluate("document.querySelector('button[name=decision][value=approve]').click(); true")
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        chrome.close()
        callback_server.shutdown()
    assert (tmp_path / "consent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert received, "the browser never reached the callback"
    params = redirect_params(received[0])
    assert params["state"] == "st4te" and params["iss"] == base
    r = await exchange(base, client, params["code"], verifier, redirect_uri=redirect_uri)
    assert r.status_code == 200, r.text
