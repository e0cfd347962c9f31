"""The login, consent and error pages: plain server-rendered HTML, no JavaScript, readable on a phone."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:#f4f5f7;color:#1d2330}main{max-width:26rem;margin:2rem auto;padding:1.5rem;background:#fff;
border-radius:12px;box-shadow:0 1px 4px rgba(0,0,0,.08)}h1{font-size:1.35rem;margin:0 0 1rem}
label{display:block;margin:.8rem 0 .25rem;font-weight:600}input[type=email],input[type=password],select{
width:100%;padding:.7rem;font-size:1rem;border:1px solid #c5cad3;border-radius:8px}
button{width:100%;padding:.8rem;margin-top:1rem;font-size:1rem;border:0;border-radius:8px;cursor:pointer}
.primary{background:#2456d3;color:#fff}.secondary{background:#e7e9ee;color:#1d2330}
.error{background:#fdecec;color:#8a1c1c;padding:.7rem;border-radius:8px}dl{margin:0}dt{font-weight:600;margin-top:.6rem}
dd{margin:0;word-break:break-all}.muted{color:#5b6475;font-size:.9rem}fieldset{border:0;padding:0;margin:0}
.org{display:block;padding:.5rem;border:1px solid #c5cad3;border-radius:8px;margin:.3rem 0;font-weight:400}
@media (max-width:30rem){main{margin:0;border-radius:0;min-height:100vh}}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)} · Flusia CRM</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _hidden(csrf: str, request_query: str) -> str:
    return (f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
            f'<input type="hidden" name="request" value="{escape(request_query)}">')


def login_page(*, csrf: str, request_query: str, client_name: str, email: str = "", error: str | None = None) -> str:
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("Sign in", f"""
<h1>Sign in to Flusia CRM</h1>
<p class="muted"><strong>{escape(client_name)}</strong> wants to connect to your CRM.</p>
{err}
<form method="post" action="/authorize/login">
{_hidden(csrf, request_query)}
<label for="email">E-mail</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{escape(email)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button class="primary" type="submit">Sign in</button>
</form>""")


def consent_page(*, csrf: str, request_query: str, client_name: str, client_id: str, redirect_host: str,
                 identities: list[dict[str, Any]], scope: str) -> str:
    if len(identities) == 1:
        ident = identities[0]
        org = (f'<dd>{escape(ident["organization_name"])}</dd>'
               f'<input type="hidden" name="user" value="{escape(str(ident["user_id"]))}">')
    else:
        options = "".join(
            f'<label class="org"><input type="radio" name="user" value="{escape(str(i["user_id"]))}"'
            f'{" checked" if n == 0 else ""}> {escape(i["organization_name"])}</label>'
            for n, i in enumerate(identities)
        )
        org = f'<dd><fieldset><legend class="muted">Choose the organization to connect</legend>{options}</fieldset></dd>'
    return _page("Allow access", f"""
<h1>Allow {escape(client_name)} to access Flusia CRM?</h1>
<form method="post" action="/authorize/consent">
{_hidden(csrf, request_query)}
<dl>
<dt>Application</dt><dd>{escape(client_name)}<br><span class="muted">{escape(client_id)}</span></dd>
<dt>Will return you to</dt><dd>{escape(redirect_host)}</dd>
<dt>Organization</dt>{org}
<dt>Access</dt><dd><code>{escape(scope)}</code>: everything your role allows in the CRM (read, create, change and
delete, as your permissions permit).</dd>
</dl>
<button class="primary" type="submit" name="decision" value="approve">Allow</button>
<button class="secondary" type="submit" name="decision" value="deny">Deny</button>
</form>""")


def error_page(message: str) -> str:
    return _page("Authorization error", f"""
<h1>This authorization request cannot continue</h1>
<p class="error" role="alert">{escape(message)}</p>
<p class="muted">Return to the application and try connecting again.</p>""")


def denied_page(client_name: str) -> str:
    return _page("Access denied", f"""
<h1>Access not granted</h1>
<p><strong>{escape(client_name)}</strong> was not given access to your CRM.</p>
<p class="muted">You can close this window.</p>""")
