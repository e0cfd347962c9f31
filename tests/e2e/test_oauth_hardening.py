"""Login and OAuth hardening (issue 8, part 6), one test per defect seen, against real servers over HTTP.

Most tests use a server that trusts 127.0.0.1 as a proxy, so a test can speak for many client addresses with
X-Forwarded-For, and that has short login delays and stream timeouts so the suite stays fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from application import oauth
from tests.conftest import ROOT, ServerProcess, free_port, start_server
from tests.e2e.test_oauth_flow import (
    PASSWORD, Browser, authorize_url, hidden, mcp_status, pkce, register, tokens_for, user_with_password,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
HARDENED_ENV = {
    "FLUSIA_TRUSTED_PROXIES": "127.0.0.1",
    "FLUSIA_OAUTH_LOGIN_DELAY": "0.05",
    "FLUSIA_OAUTH_LOGIN_MAX_DELAY": "0.2",
    "FLUSIA_OAUTH_LOGIN_ADDRESS_LIMIT": "10",
    "FLUSIA_MCP_STREAM_IDLE_SECONDS": "3",
    "FLUSIA_MCP_STREAMS_PER_TOKEN": "2",
}


def stop(srv: ServerProcess) -> None:
    srv.process.terminate()
    try:
        srv.process.wait(10)
    except subprocess.TimeoutExpired:
        srv.process.kill()


@pytest.fixture(scope="module")
def hardened(database_url: str):
    srv = start_server(database_url, HARDENED_ENV)
    yield srv
    stop(srv)


@pytest.fixture(autouse=True)
def _fresh_budgets(db):
    db.execute("DELETE FROM oauth_rate_events WHERE bucket LIKE 'register:%%'")
    db.execute("DELETE FROM oauth_login_throttle")


async def login_form(base: str) -> tuple[Browser, dict[str, str]]:
    """A browser on the login page of a fresh public client; the form fields to post (without credentials)."""
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    page = await browser.open(authorize_url(base, client["client_id"], challenge))
    assert page.status_code == 200 and 'name="password"' in page.text, page.text
    return browser, {"csrf_token": hidden(page.text, "csrf_token") or "", "request": hidden(page.text, "request") or ""}


async def post_login(browser: Browser, form: dict[str, str], email: str, password: str,
                     address: str | None = None) -> httpx2.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return await browser.http.post("/authorize/login", data={**form, "email": email, "password": password},
                                   headers=headers)


def failures(db, bucket: str) -> int:
    row = db.execute("SELECT failures FROM oauth_login_throttle WHERE bucket = %s", (bucket,)).fetchone()
    return row["failures"] if row else 0


# --- 1. login throttling -------------------------------------------------------------------------------

async def test_parallel_wrong_passwords_are_counted_atomically(hardened, make_org, db):
    """Seen: 60 parallel wrong passwords were all checked against a limit of 10 per e-mail."""
    _, email = user_with_password(make_org, db, "Parallel")
    browser, form = await login_form(hardened.base_url)
    address = "198.51.100.60"
    try:
        results: list[httpx2.Response] = []

        async def attempt() -> None:
            results.append(await post_login(browser, form, email, "wrong password", address))

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(attempt)
    finally:
        await browser.close()
    statuses = sorted(r.status_code for r in results)
    # the address cap (10 in this server) let exactly 10 through to a password check; the others were refused
    assert statuses == [401] * 10 + [429] * 50, statuses
    refused = next(r for r in results if r.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0 and "Too many" in refused.text
    assert failures(db, oauth.address_bucket(address)) == 60
    assert failures(db, oauth.account_bucket(email)) == 10  # refused attempts never reached the account


async def test_right_password_works_after_many_wrong_ones_from_others(hardened, make_org, db):
    """Seen: after 10 wrong passwords from anyone, the right password was refused for 15 minutes."""
    _, email = user_with_password(make_org, db, "NoLockout")
    browser, form = await login_form(hardened.base_url)
    try:
        results: list[int] = []

        async def attempt(n: int) -> None:
            results.append((await post_login(browser, form, email, "wrong password", f"203.0.113.{n}")).status_code)

        async with anyio.create_task_group() as tg:
            for n in range(1, 31):
                tg.start_soon(attempt, n)
        assert results == [401] * 30  # delayed, never refused: one failure per address
        assert failures(db, oauth.account_bucket(email)) == 30
        ok = await post_login(browser, form, email, PASSWORD, "192.0.2.200")
        assert ok.status_code == 303 and ok.headers["location"].startswith("/authorize?")
        consent = await browser.http.get(ok.headers["location"])
        assert 'name="decision"' in consent.text
    finally:
        await browser.close()
    assert failures(db, oauth.account_bucket(email)) == 30  # the success took back only its own count


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(server, make_org, db):
    """The shared server trusts no proxy: X-Forwarded-For cannot pick another address's budget."""
    _, email = user_with_password(make_org, db, "Spoof")
    browser, form = await login_form(server.base_url)
    try:
        r = await post_login(browser, form, email, "wrong password", "203.0.113.77")
    finally:
        await browser.close()
    assert r.status_code == 401
    assert failures(db, oauth.address_bucket("127.0.0.1")) == 1
    assert failures(db, oauth.address_bucket("203.0.113.77")) == 0


# --- 2. public URL -------------------------------------------------------------------------------------

async def urls_seen(base: str, headers: dict[str, str]) -> dict[str, str]:
    async with httpx2.AsyncClient(timeout=30) as http:
        asm = (await http.get(f"{base}/.well-known/oauth-authorization-server", headers=headers)).json()
        prm = (await http.get(f"{base}/.well-known/oauth-protected-resource", headers=headers)).json()
        challenge = (await http.post(f"{base}/mcp", json={}, headers=headers)).headers["www-authenticate"]
    return {"issuer": asm["issuer"], "token_endpoint": asm["token_endpoint"], "resource": prm["resource"],
            "authorization_server": prm["authorization_servers"][0],
            "resource_metadata": challenge.split('resource_metadata="')[1].split('"')[0]}


def expected_urls(public: str) -> dict[str, str]:
    return {"issuer": public, "token_endpoint": f"{public}/token", "resource": f"{public}/mcp",
            "authorization_server": public, "resource_metadata": f"{public}/.well-known/oauth-protected-resource"}


async def test_host_header_does_not_change_issuer_metadata_or_challenge(server):
    """Seen: `Host: evil.example` made the issuer, token endpoint and challenge point at evil.example."""
    base = server.base_url
    for headers in ({"Host": "evil.example"},
                    {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},  # no trusted proxy
                    {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}):
        assert await urls_seen(base, headers) == expected_urls(base), headers
    # the resource a client asks for is checked against the server's own URL, not the Host it sent
    client = await register(base)
    _, challenge = pkce()
    browser = Browser(base)
    try:
        r = await browser.http.get(authorize_url(base, client["client_id"], challenge, resource="http://evil.example/mcp"),
                                   headers={"Host": "evil.example"})
    finally:
        await browser.close()
    assert r.status_code == 400 and "invalid_target" in r.text and "location" not in r.headers


async def test_forwarded_headers_only_from_a_trusted_proxy(hardened, make_org, db):
    base = hardened.base_url
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "crm.example.com"}
    assert await urls_seen(base, forwarded) == expected_urls("https://crm.example.com")
    # several hops: the value the nearest (trusted) proxy wrote counts
    assert (await urls_seen(base, {"X-Forwarded-Host": "evil.example, crm.example.com"}))["issuer"] \
        == "http://crm.example.com"
    # Host alone, or malformed forwarded values, fall back to the listening address
    assert await urls_seen(base, {"Host": "evil.example"}) == expected_urls(base)
    assert await urls_seen(base, {"X-Forwarded-Host": "evil.example/x?y", "X-Forwarded-Proto": "gopher"}) \
        == expected_urls(base)
    # a token is for the URL it was issued at: presented through another forwarded host it is refused
    _, email = user_with_password(make_org, db, "Forwarded")
    _, tokens = await tokens_for(base, email)
    assert await mcp_status(base, tokens["access_token"]) == 200
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={**MCP_HEADERS, **forwarded, "Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 401


def start_with_args(database_url: str, args: list[str], env: dict[str, str]) -> ServerProcess:
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"flusia-e2e-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, "DATABASE_URL": database_url, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early; see {log.name}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    return ServerProcess(f"http://127.0.0.1:{port}", database_url, proc, Path(log.name))


async def test_public_url_option_wins_over_everything(database_url):
    srv = start_with_args(database_url, ["--public-url", "https://crm.example.com/flusia/"],
                          {"FLUSIA_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        public = "https://crm.example.com/flusia"
        for headers in ({}, {"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}):
            assert await urls_seen(srv.base_url, headers) == expected_urls(public), headers
    finally:
        stop(srv)
    bad = subprocess.run([sys.executable, "-m", "interfaces.cli", "serve", "--port", str(free_port()),
                          "--public-url", "ftp://crm.example.com"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DATABASE_URL": database_url}, timeout=60)
    assert bad.returncode == 2 and "--public-url" in json.loads(bad.stdout)["error"]


# --- 3. no open redirects ------------------------------------------------------------------------------

async def test_dynamic_client_bad_request_shows_an_error_page_not_a_redirect(server, make_org, db):
    """RFC 9700 §4.11.2: a self-registered client's redirect URI is not vetted, so errors never go there."""
    base = server.base_url
    phishing = "https://login-flusia.example/cb"
    client = await register(base, [phishing])
    verifier, challenge = pkce()
    browser = Browser(base)
    try:
        for url in (authorize_url(base, client["client_id"], challenge, redirect_uri=phishing, scope="everything"),
                    authorize_url(base, client["client_id"], challenge, redirect_uri=phishing, response_type="token"),
                    authorize_url(base, client["client_id"], verifier, redirect_uri=phishing, method="plain"),
                    authorize_url(base, client["client_id"], challenge, redirect_uri=phishing, resource=None),
                    authorize_url(base, client["client_id"], challenge, redirect_uri=phishing) + "&state=again"):
            r = await browser.open(url)
            assert r.status_code == 400 and "location" not in r.headers, url
            assert "login-flusia.example" not in r.text
        # a valid request reaches the login page, and a denial is answered with a page too
        _, email = user_with_password(make_org, db, "Phish")
        page = await browser.open(authorize_url(base, client["client_id"], challenge, redirect_uri=phishing))
        consent = await browser.login(page, email, PASSWORD)
        denied = await browser.decide(consent, "deny")
        assert denied.status_code == 200 and "location" not in denied.headers
    finally:
        await browser.close()


# --- 4. anonymous GET /authorize stores nothing --------------------------------------------------------

async def test_anonymous_authorize_creates_no_session_rows(server, db):
    base = server.base_url
    client = await register(base)
    _, challenge = pkce()
    url = authorize_url(base, client["client_id"], challenge)
    before = db.execute("SELECT count(*) AS n FROM oauth_sessions").fetchone()["n"]
    statuses: list[int] = []
    async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
        async def fetch(n: int) -> None:
            for _ in range(n):
                r = await http.get(url)
                statuses.append(r.status_code if 'name="password"' in r.text else -r.status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(fetch, 50)
    assert statuses == [200] * 1000
    assert db.execute("SELECT count(*) AS n FROM oauth_sessions").fetchone()["n"] == before


# --- 5. GET /mcp streams -------------------------------------------------------------------------------

async def test_get_mcp_streams_close_when_idle_and_are_limited_per_token(hardened, make_org):
    """Stateless, a GET /mcp stream never carries a message: it is closed when idle (3 s in this server), and a
    token may hold at most 2 at once (this server's setting)."""
    org, other = make_org("Streams"), make_org("Streams2")
    url = hardened.mcp_url

    def headers(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30)) as http:
        async with http.stream("GET", url, headers=headers(org.token)) as first, \
                http.stream("GET", url, headers=headers(org.token)) as second:
            assert first.status_code == second.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            third = await http.get(url, headers=headers(org.token))
            assert third.status_code == 429 and int(third.headers["retry-after"]) > 0
            # another token has its own budget, and the same token can still POST
            async with http.stream("GET", url, headers=headers(other.token)) as others:
                assert others.status_code == 200
            call = await http.post(url, headers={**MCP_HEADERS, "Authorization": f"Bearer {org.token}"},
                                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                         "params": {"name": "crm_users_me", "arguments": {}}})
            assert call.status_code == 200
            # the server ends idle streams by itself (the read would time out after 30 s otherwise)
            with anyio.fail_after(20):
                body = b"".join([chunk async for chunk in first.aiter_bytes()])
                await second.aread()
            assert b"data:" not in body
        # the slots are free again
        async with http.stream("GET", url, headers=headers(org.token)) as again:
            assert again.status_code == 200


# --- 6. password hashing has its own threads -----------------------------------------------------------

async def test_login_burst_does_not_starve_tool_calls(hardened, make_org, db):
    _, email = user_with_password(make_org, db, "Burst")
    bystander = make_org("Bystander")
    browser, form = await login_form(hardened.base_url)
    statuses: list[int] = []
    try:
        async def attempt(n: int) -> None:
            statuses.append((await post_login(browser, form, email, f"wrong {n}", f"203.0.113.{100 + n}")).status_code)

        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(attempt, n)
            await anyio.sleep(0.3)  # the burst is being hashed now
            async with httpx2.AsyncClient(timeout=30) as http:
                with anyio.fail_after(2):
                    r = await http.post(hardened.mcp_url, headers={**MCP_HEADERS, "Authorization": f"Bearer {bystander.token}"},
                                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                              "params": {"name": "crm_users_me", "arguments": {}}})
            assert r.status_code == 200
            assert r.json()["result"]["structuredContent"]["organization"]["id"] == str(bystander.organization_id)
    finally:
        await browser.close()
    assert statuses == [401] * 30


# --- malformed input is a 4xx, never a 500 -------------------------------------------------------------

async def test_malformed_login_and_authorize_requests_are_refused_cleanly(hardened, server):
    for base in (server.base_url, hardened.base_url):
        browser, form = await login_form(base)
        try:
            http = browser.http
            odd = {"X-Forwarded-For": "not-an-ip, , 999.1.1.1, [::1]:80", "X-Forwarded-Host": "x" * 300}
            responses = [
                await http.post("/authorize/login", content=b"\xff\xfe=\x00&&==", headers={
                    "Content-Type": "application/x-www-form-urlencoded", **odd}),
                await http.post("/authorize/login", data={**form, "csrf_token": "1.2.3"}),
                await http.post("/authorize/login", data={**form, "csrf_token": "9" * 90 + ".x"}),
                await http.post("/authorize/login", data={**form, "email": "", "password": ""}, headers=odd),
                await http.post("/authorize/login", data={**form, "request": "%ZZ&&client_id="}),
                await http.post("/authorize/consent", data={**form, "decision": "approve"}),
                await http.get("/authorize?%ZZ=%&client_id=%00", headers=odd),
                await http.post("/authorize/login", data={**form, "email": "a\x00@example.com", "password": "x\x00"}),
                await http.post("/token", data={"grant_type": "authorization_code", "client_id": "\x00", "code": "\x00"}),
                await http.post("/register", content=b'{"redirect_uris": ["https://a.example/cb"], "client_name": "\\u0000"}'),
                await http.post("/register", content=b'{"redirect_uris": ["https://a.example/cb"], "client_name": "\\ud800"}'),
                await http.get("/authorize", headers={"Cookie": "flusia_login=%%%; flusia_oauth=" + "x" * 5000}),
            ]
        finally:
            await browser.close()
        for r in responses:
            assert 400 <= r.status_code < 500, (r.status_code, r.request.url, r.text[:200])
