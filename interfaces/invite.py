"""The invitation page: `GET /invite/<secret>` shows a form to set a password, `POST` sets it (once).

The secret in the path is the credential (256 random bits, stored hashed, valid 72 hours, usable once), so the form
needs no session; the page sends no referrer, is not framed or cached, and never echoes the secret back except
as the form's own action. Password hashing (argon2id) runs on its own threads, like the login's.
"""

from __future__ import annotations

from html import escape
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.enums import MediaType
from litestar.response import Response

from application import invites, oauth
from domain.errors import DomainError
from interfaces.oauth.pages import STYLE

HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"}
MAX_PASSWORD = 200


def _page(title: str, body: str, status: int = 200) -> Response[Any]:
    html = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)} · Flusia CRM</title><style>{STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>")
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=HEADERS)


def _form(secret: str, invite: invites.Invite, error: str | None = None) -> Response[Any]:
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("Set your password", f"""
<h1>Welcome to {escape(invite.organization_name)}</h1>
<p class="muted">{escape(invite.user_name)} &lt;{escape(invite.email)}&gt;, choose the password you will sign in with
(at least {oauth.MIN_PASSWORD_LENGTH} characters).</p>
{err}
<form method="post" action="/invite/{escape(secret)}">
<input type="hidden" name="username" value="{escape(invite.email)}" autocomplete="username">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="{oauth.MIN_PASSWORD_LENGTH}" required>
<label for="confirm">Repeat it</label>
<input id="confirm" name="confirm" type="password" autocomplete="new-password" required>
<button class="primary" type="submit">Set password</button>
</form>""", 400 if error else 200)


def _gone() -> Response[Any]:
    return _page("Invitation not valid", """
<h1>This invitation link cannot be used</h1>
<p class="error" role="alert">It was already used, has expired (links last 72 hours) or was withdrawn.</p>
<p class="muted">Ask an administrator of your organization to invite you again.</p>""", 410)


def invite_routes(runtime: Any) -> list[Any]:
    hash_limiter = anyio.CapacityLimiter(oauth.Settings.from_env().password_hash_threads)

    async def db(fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with runtime.pool.connection() as conn:
                return fn(conn, *args)

        return await anyio.to_thread.run_sync(run, limiter=runtime.runner.limiter)

    @get("/invite/{secret:str}")
    async def show(secret: str) -> Response[Any]:
        invite = await db(invites.find, secret)
        return _gone() if invite is None else _form(secret, invite)

    @post("/invite/{secret:str}")
    async def accept(secret: str, request: Request[Any, Any, Any]) -> Response[Any]:
        data = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        invite = await db(invites.find, secret)
        if invite is None:
            return _gone()
        password, confirm = data.get("password", ""), data.get("confirm", "")
        if not oauth.storable(password) or len(password) > MAX_PASSWORD:
            return _form(secret, invite, f"the password must be plain text of at most {MAX_PASSWORD} characters")
        if password != confirm:
            return _form(secret, invite, "the two passwords differ")
        try:
            hashed = await anyio.to_thread.run_sync(oauth.hash_password, password, limiter=hash_limiter)
        except DomainError as e:
            return _form(secret, invite, e.message)
        try:
            done = await db(invites.accept, secret, hashed)
        except DomainError:
            return _gone()
        return _page("Password set", f"""
<h1>You're in</h1>
<p>Your password for <strong>{escape(done.organization_name)}</strong> is set. Connect your assistant (Claude,
ChatGPT, MCP Inspector) to this CRM and sign in with <strong>{escape(done.email)}</strong>.</p>""")

    return [show, accept]
