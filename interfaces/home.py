"""`/`: a small page for the person who just started the server, or who opens its URL in a browser.

It says whether the server is ready (what `/readyz` checks: the database answers and no stream consumer is stuck),
where the MCP endpoint is (the public URL + `/mcp`, never taken from the request's Host header:
interfaces/public_url.py) and how to connect an assistant, with links to the OAuth metadata. It shows no tenant
data and no secret: no organization, no token, no count of anything. Every interpolated value is HTML-escaped.
"""

from __future__ import annotations

import html
import logging
from typing import Any
from urllib.parse import urlsplit

import anyio
from litestar import MediaType, Request, route
from litestar.response import Response

from interfaces.health import consumer_report
from interfaces.public_url import PublicUrls

log = logging.getLogger("flusia.http")

HEADERS = {
    "Cache-Control": "no-store",  # the status changes
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

STYLE = """
body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:14px ui-monospace,monospace;background:#f4f4f4;border-radius:4px}
code{padding:.1rem .3rem}pre{padding:.6rem;overflow-x:auto;white-space:pre-wrap}
.ready{color:#17692e}.not-ready{color:#a4161a}li{margin:.4rem 0}small{color:#666}
"""


def status_of(runtime: Any) -> tuple[bool, str]:
    """(ready, a sentence) from the same checks as /readyz; names no organization."""
    try:
        with runtime.pool.connection() as conn:
            report = consumer_report(conn)
    except Exception as e:  # the page must answer even when the database does not
        log.error("home page status check failed: database unreachable error=%s", type(e).__name__)
        return False, "Not ready: the database does not answer."
    stuck = sorted(name for name, c in report["consumers"].items() if c["stuck"])
    if stuck:
        return False, f"Not ready: read models behind and not moving: {', '.join(stuck)}."
    return True, "Ready: the database answers and the read models are up to date."


def render(base: str, ready: bool, status: str, public: bool) -> str:
    e = html.escape
    mcp = e(f"{base}/mcp")
    home = e(base)
    loopback = not public and urlsplit(base).hostname in ("127.0.0.1", "::1", "localhost")
    remote_note = (
        "<p><small>This address is on this machine only. Claude.ai and ChatGPT connect from the internet: start "
        "the server with <code>--public-url https://your.host</code> (or <code>FLUSIA_PUBLIC_URL</code>) behind a "
        "reachable HTTPS address.</small></p>" if loopback else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flusia CRM: MCP server</title><style>{STYLE}</style></head>
<body>
<h1>Flusia CRM</h1>
<p class="{'ready' if ready else 'not-ready'}"><strong>{e(status)}</strong> <small>(<a href="{home}/readyz">/readyz</a>)</small></p>
<h2>MCP endpoint</h2>
<pre>{mcp}</pre>
<p>Every request needs <code>Authorization: Bearer &lt;token&gt;</code>: the API token printed at the first start, one
from <code>flusia token create</code>, or an OAuth access token. Clients that speak OAuth need only the URL: they
register themselves and send you to the login page (your e-mail and password).</p>
{remote_note}
<h2>Connect an assistant</h2>
<ul>
<li><strong>Claude</strong> (claude.ai, Claude Desktop): <em>Settings → Connectors → Add custom connector</em>, the
URL above; Claude signs in with OAuth.</li>
<li><strong>Claude Code</strong>: <code>claude mcp add --transport http flusia-crm {mcp}</code>, adding
<code>--header "Authorization: Bearer flusia_..."</code> to use an API token instead of OAuth.</li>
<li><strong>ChatGPT</strong> (developer mode, <em>Settings → Connectors → Create</em>): the URL above and
<em>OAuth</em> as authentication.</li>
<li><strong>MCP Inspector</strong>: <code>npx @modelcontextprotocol/inspector</code>, transport
<em>Streamable HTTP</em>, the URL above, and the header <code>Authorization</code> =
<code>Bearer flusia_...</code>.</li>
<li><strong>Any MCP client with a bearer token</strong>: the URL above with the header
<code>Authorization: Bearer flusia_...</code>; <code>?toolsets=clients,deals</code> and
<code>?readonly=1</code> narrow the tool list.</li>
</ul>
<h2>OAuth metadata</h2>
<ul>
<li><a href="{home}/.well-known/oauth-protected-resource">{home}/.well-known/oauth-protected-resource</a></li>
<li><a href="{home}/.well-known/oauth-authorization-server">{home}/.well-known/oauth-authorization-server</a></li>
</ul>
</body></html>
"""


def home_route(urls: PublicUrls) -> Any:
    @route("/", http_method=["GET", "HEAD"])
    async def home(request: Request[Any, Any, Any]) -> Response[str]:
        ready, status = await anyio.to_thread.run_sync(status_of, request.app.state.runtime)
        page = render(urls.base(request.scope), ready, status, urls.configured is not None)
        return Response(page, media_type=MediaType.HTML, headers=HEADERS)

    return home
