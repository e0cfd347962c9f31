"""`/`: a small HTML page with the server's status, the MCP URL and how to connect an assistant; no tenant data."""

from __future__ import annotations

import httpx
import pytest

from interfaces.home import render

pytestmark = [pytest.mark.e2e]


def test_home_page_names_the_mcp_url_and_the_status(server, make_org):
    org = make_org()
    page = httpx.get(f"{server.base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"{server.base_url}/mcp" in page.text
    assert "Ready" in page.text and "/.well-known/oauth-protected-resource" in page.text
    assert "/.well-known/oauth-authorization-server" in page.text and "Claude" in page.text and "ChatGPT" in page.text
    assert "Inspector" in page.text and "Bearer" in page.text
    assert page.headers["cache-control"] == "no-store" and "default-src 'none'" in page.headers["content-security-policy"]
    assert "flusia_" + org.token.removeprefix("flusia_")[:8] not in page.text  # no secrets, no tenant data
    assert str(org.organization_id) not in page.text

    head = httpx.head(f"{server.base_url}/", timeout=10)
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html") and head.content == b""

    missing = httpx.get(f"{server.base_url}/no-such-page", timeout=10)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
    assert httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource").json()["resource_documentation"] == (
        f"{server.base_url}/")


def test_home_page_escapes_what_it_shows():
    page = render('https://crm.example/"><script>alert(1)</script>', False, "Not ready: <b>x</b>", True)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&quot;&gt;" in page
    assert "<b>x</b>" not in page and 'class="not-ready"' in page
    assert "on this machine only" not in page  # a public URL was set
    assert "on this machine only" in render("http://127.0.0.1:8000", True, "Ready", False)
