"""OAuth 2.1 authorization server endpoints: discovery, registration, authorize (login + consent), token, revoke."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import anyio
from litestar import Request, get, post
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response import Response

from application import oauth
from interfaces.oauth import cimd, pages
from interfaces.oauth.store import OAuthStore

log = logging.getLogger("flusia.oauth")

# The /mcp URL of the request being authenticated: an access token is accepted only for its own audience.
oauth_audience: ContextVar[str | None] = ContextVar("oauth_audience", default=None)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PAGE_HEADERS = {**NO_STORE, "X-Frame-Options": "DENY", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
SUPPORTED_AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")


class PageError(Exception):
    """The request cannot be trusted to redirect (bad client or redirect URI): show an error page."""


@dataclass
class RedirectError(Exception):
    error: str
    description: str
    redirect_uri: str
    state: str | None


@dataclass
class AuthzRequest:
    client: dict[str, Any]
    redirect_uri: str
    state: str | None
    challenge: str
    resource: str
    scope: str
    query: str


def _public_base_url(scope: Any) -> str:
    from interfaces.http import public_base_url

    return public_base_url(scope)


def _client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def _redirect_to(uri: str, params: dict[str, str | None]) -> Response[Any]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    sep = "&" if urlsplit(uri).query else "?"
    return Response(None, status_code=303, headers={**NO_STORE, "Location": f"{uri}{sep}{query}"})


def _html(body: str, status: int = 200, cookies: list[Cookie] | None = None) -> Response[Any]:
    return Response(body, status_code=status, media_type=MediaType.HTML, headers=PAGE_HEADERS, cookies=cookies or [])


def _json_error(error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response({"error": error, "error_description": description}, status_code=status,
                    headers={**NO_STORE, **(headers or {})})


def oauth_routes(runtime: Any, auth: Any) -> list[Any]:
    """The route handlers; also registers the access-token verifier with BearerAuth."""
    settings = oauth.Settings.from_env()
    store = OAuthStore(runtime.pool, settings)
    limiter = runtime.service.limiter

    def verify(token: str) -> Any:
        return store.principal_for_access_token(token, oauth_audience.get())

    auth.verifiers.append(verify)

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=limiter)

    def cookie_name(base: str) -> str:
        return "__Host-flusia_oauth" if base.startswith("https://") else "flusia_oauth"

    def session_cookie(base: str, sid: str) -> Cookie:
        return Cookie(key=cookie_name(base), value=sid, path="/", httponly=True, samesite="lax",
                      secure=base.startswith("https://"), max_age=settings.session_ttl)

    # --- clients -------------------------------------------------------------------------------------

    def load_client(client_id: str) -> dict[str, Any] | None:
        if not client_id or len(client_id) > 2000:
            return None
        row = store.client(client_id)
        if row is not None or not oauth.is_metadata_document_client_id(client_id):
            return row
        try:
            document, ttl = cimd.fetch(client_id, settings)
        except cimd.MetadataDocumentError as e:
            log.info("client metadata document refused: %s", e)
            return None
        return store.cache_metadata_document(client_id, document, ttl)

    def authenticate_client(request: Request[Any, Any, Any], form: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
        """(client, "") or (None, description). Basic, post, or a public client's bare client_id."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None, "malformed Basic credentials"
            if client_id and client_id != unquote(user):
                return None, "client_id differs from the authenticated client"
            client_id, secret = unquote(user), unquote(password)
        if not client_id:
            return None, "client_id is required"
        client = load_client(client_id)
        if client is None:
            return None, "unknown or expired client"
        if client["token_endpoint_auth_method"] != "none":
            if not secret or not oauth.same_digest(client["client_secret_hash"], secret):
                return None, "client authentication failed"
        return client, ""

    # --- the authorization request -------------------------------------------------------------------

    def parse_request(query: str, base: str) -> AuthzRequest:
        pairs = parse_qsl(query, keep_blank_values=True)
        params = dict(pairs)
        client_id = params.get("client_id", "")
        client = load_client(client_id) if client_id else None
        if client is None:
            raise PageError("The application is unknown, or its registration has expired.")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri or redirect_uri not in client["redirect_uris"]:
            raise PageError("The redirect URI does not match any registered for this application.")
        state = params.get("state")

        def fail(error: str, description: str) -> RedirectError:
            return RedirectError(error, description, redirect_uri, state)

        if len({k for k, _ in pairs}) != len(pairs):
            raise fail("invalid_request", "request parameters must not repeat")
        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "only response_type=code is supported")
        method = params.get("code_challenge_method")
        if not params.get("code_challenge"):
            raise fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
        if method != "S256":
            raise fail("invalid_request", "only code_challenge_method=S256 is supported (plain is refused)")
        if not oauth.valid_challenge(params["code_challenge"]):
            raise fail("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)")
        resource = params.get("resource")
        if not resource:
            raise fail("invalid_request", f"the resource parameter is required and must be {base}/mcp")
        if resource.rstrip("/") != f"{base}/mcp":
            raise fail("invalid_target", f"this server only issues tokens for {base}/mcp")
        requested = params.get("scope", "").split()
        if any(s != oauth.SCOPE for s in requested):
            raise fail("invalid_scope", f"the only scope is {oauth.SCOPE}")
        return AuthzRequest(client, redirect_uri, state, params["code_challenge"], f"{base}/mcp", oauth.SCOPE, query)

    def error_redirect(e: RedirectError, base: str) -> Response[Any]:
        return _redirect_to(e.redirect_uri, {"error": e.error, "error_description": e.description,
                                            "state": e.state, "iss": base})

    def client_name(client: dict[str, Any]) -> str:
        return client.get("client_name") or oauth.redirect_host(client["redirect_uris"][0])

    async def current_session(request: Request[Any, Any, Any], base: str) -> tuple[str | None, dict[str, Any] | None]:
        sid = request.cookies.get(cookie_name(base))
        return sid, (await db(store.session, sid) if sid else None)

    async def consent_or_login(authz: AuthzRequest, session: dict[str, Any], cookies: list[Cookie],
                               error: str | None = None, email: str = "", status: int = 200) -> Response[Any]:
        identities = await db(store.active_identities, session["identities"])
        name = client_name(authz.client)
        if not identities:
            return _html(pages.login_page(csrf=session["csrf_token"], request_query=authz.query, client_name=name,
                                          email=email, error=error), status, cookies)
        return _html(pages.consent_page(
            csrf=session["csrf_token"], request_query=authz.query, client_name=name, client_id=authz.client["client_id"],
            redirect_host=oauth.redirect_host(authz.redirect_uri), identities=identities, scope=authz.scope,
        ), status, cookies)

    CSRF_REFUSED = "invalid_request: the form's CSRF token is missing or invalid. Reload the page and try again."

    async def checked_form(request: Request[Any, Any, Any], base: str) -> tuple[dict[str, str], dict[str, Any] | None, str | None]:
        form = dict((await request.form()).items())
        sid, session = await current_session(request, base)
        token = form.get("csrf_token") or ""
        if session is None or not token or not hmac.compare_digest(token.encode(), session["csrf_token"].encode()):
            return form, None, sid
        return form, session, sid

    async def authz_or_error(query: str, base: str) -> AuthzRequest | Response[Any]:
        """The validated authorization request, or the answer to a bad one: an error page while the client or
        its redirect URI is in doubt (never an open redirect), an error redirect once both are known good."""
        try:
            return await db(parse_request, query, base)
        except PageError as e:
            return _html(pages.error_page(str(e)), 400)
        except RedirectError as e:
            return error_redirect(e, base)

    @get("/authorize")
    async def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
        base = _public_base_url(request.scope)
        authz = await authz_or_error(request.scope.get("query_string", b"").decode("latin-1"), base)
        if isinstance(authz, Response):
            return authz
        sid, session = await current_session(request, base)
        cookies: list[Cookie] = []
        if session is None:
            sid, session = await db(store.new_session)
            cookies.append(session_cookie(base, sid))
        return await consent_or_login(authz, session, cookies)

    @post("/authorize/login")
    async def login(request: Request[Any, Any, Any]) -> Response[Any]:
        base = _public_base_url(request.scope)
        form, session, sid = await checked_form(request, base)
        if session is None:
            return _html(pages.error_page(CSRF_REFUSED), 403)
        authz = await authz_or_error(form.get("request", ""), base)
        if isinstance(authz, Response):
            return authz
        email = (form.get("email") or "").strip().lower()[:320]
        password = form.get("password") or ""
        ip_bucket, email_bucket = f"login-ip:{_client_address(request)}", f"login-email:{email}"
        window, limit = settings.login_window, settings.login_limit
        if (await db(store.count, ip_bucket, window)) >= limit * 3 or (await db(store.count, email_bucket, window)) >= limit:
            return await consent_or_login(authz, session, [], "Too many sign-in attempts. Wait a few minutes and try again.",
                                          email, 429)
        matched = await db(_authenticate, email, password) if email and password else []
        if not matched:
            await db(store.record, ip_bucket)
            await db(store.record, email_bucket)
            return await consent_or_login(authz, session, [], "Incorrect e-mail or password.", email, 401)
        # a fresh session id on login (no fixation); the old one is dropped
        if sid:
            await db(store.drop_session, sid)
        new_sid, _ = await db(store.new_session, [{"organization_id": m["organization_id"], "user_id": m["user_id"]}
                                                   for m in matched])
        return Response(None, status_code=303, headers={**NO_STORE, "Location": f"/authorize?{authz.query}"},
                        cookies=[session_cookie(base, new_sid)])

    def _authenticate(email: str, password: str) -> list[dict[str, Any]]:
        with runtime.pool.connection() as conn:
            return oauth.authenticate(conn, email, password)

    @post("/authorize/consent")
    async def consent(request: Request[Any, Any, Any]) -> Response[Any]:
        base = _public_base_url(request.scope)
        form, session, _ = await checked_form(request, base)
        if session is None:
            return _html(pages.error_page(CSRF_REFUSED), 403)
        authz = await authz_or_error(form.get("request", ""), base)
        if isinstance(authz, Response):
            return authz
        identities = await db(store.active_identities, session["identities"])
        if not identities:
            return await consent_or_login(authz, session, [])
        decision = form.get("decision")
        if decision == "deny":
            return error_redirect(RedirectError("access_denied", "the user denied access", authz.redirect_uri, authz.state), base)
        if decision != "approve":
            return _html(pages.error_page("invalid_request: choose Allow or Deny."), 400)
        chosen = form.get("user") or (str(identities[0]["user_id"]) if len(identities) == 1 else "")
        identity = next((i for i in identities if str(i["user_id"]) == chosen), None)
        if identity is None:
            return _html(pages.error_page("invalid_request: choose one of your organizations."), 400)
        code = await db(store.issue_code, client_id=authz.client["client_id"], org_id=identity["organization_id"],
                        user_id=identity["user_id"], redirect_uri=authz.redirect_uri, challenge=authz.challenge,
                        resource=authz.resource, scope=authz.scope)
        return _redirect_to(authz.redirect_uri, {"code": code, "state": authz.state, "iss": base})

    # --- token and revocation ------------------------------------------------------------------------

    @post("/token")
    async def token(request: Request[Any, Any, Any]) -> Response[Any]:
        base = _public_base_url(request.scope)
        form = dict((await request.form()).items())
        client, problem = await db(authenticate_client, request, form)
        if client is None:
            return _json_error("invalid_client", problem, 401, {"WWW-Authenticate": 'Basic realm="flusia"'})
        grant = form.get("grant_type")
        if grant not in client["grant_types"] and grant in ("authorization_code", "refresh_token"):
            return _json_error("unauthorized_client", f"this client may not use {grant}")
        resource = form.get("resource")
        if resource is not None and resource.rstrip("/") != f"{base}/mcp":
            return _json_error("invalid_target", f"this server only issues tokens for {base}/mcp")
        scope = form.get("scope")
        if scope is not None and any(s != oauth.SCOPE for s in scope.split()):
            return _json_error("invalid_scope", f"the only scope is {oauth.SCOPE}")
        if grant == "authorization_code":
            code, verifier, redirect_uri = form.get("code"), form.get("code_verifier"), form.get("redirect_uri")
            if not code or not verifier or not redirect_uri:
                return _json_error("invalid_request", "code, code_verifier and redirect_uri are required")
            row, why = await db(store.redeem_code, code)
            if row is None:
                return _json_error("invalid_grant", why)
            if row["client_id"] != client["client_id"]:
                return _json_error("invalid_grant", "the authorization code was issued to another client")
            if row["redirect_uri"] != redirect_uri:
                return _json_error("invalid_grant", "redirect_uri does not match the authorization request")
            if not oauth.pkce_matches(verifier, row["code_challenge"]):
                return _json_error("invalid_grant", "the PKCE code_verifier does not match the code_challenge")
            if row["resource"] != f"{base}/mcp":
                return _json_error("invalid_target", "the code was issued for another resource")
        elif grant == "refresh_token":
            refresh = form.get("refresh_token")
            if not refresh:
                return _json_error("invalid_request", "refresh_token is required")
            row, why = await db(store.rotate_refresh, refresh)
            if row is None:
                return _json_error("invalid_grant", why)
            if row["client_id"] != client["client_id"]:
                return _json_error("invalid_grant", "the refresh token was issued to another client")
            if row["resource"] != f"{base}/mcp":
                return _json_error("invalid_target", "the refresh token was issued for another resource")
        else:
            return _json_error("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
        if not await db(store.user_active, row["organization_id"], row["user_id"]):
            return _json_error("invalid_grant", "the user is no longer active")
        tokens = await db(store.issue_tokens, family_id=row["family_id"], client_id=client["client_id"],
                          org_id=row["organization_id"], user_id=row["user_id"], resource=row["resource"], scope=row["scope"],
                          with_refresh="refresh_token" in client["grant_types"])
        return Response(tokens, status_code=200, headers=NO_STORE)

    @post("/revoke")
    async def revoke(request: Request[Any, Any, Any]) -> Response[Any]:
        form = dict((await request.form()).items())
        client_id: str | None = None
        if form.get("client_id") or request.headers.get("authorization"):
            client, problem = await db(authenticate_client, request, form)
            if client is None:
                return _json_error("invalid_client", problem, 401)
            client_id = client["client_id"]
        value = form.get("token")
        if not value:
            return _json_error("invalid_request", "token is required")
        await db(store.revoke, value, client_id)
        return Response({}, status_code=200, headers=NO_STORE)

    # --- registration and discovery ------------------------------------------------------------------

    @post("/register")
    async def register(request: Request[Any, Any, Any]) -> Response[Any]:
        address = _client_address(request)
        if not await db(store.hit, f"register:{address}", settings.register_limit, settings.register_window):
            return _json_error("too_many_requests", "too many registrations from this address; try again later", 429,
                               {"Retry-After": str(settings.register_window)})
        body = await request.body()
        if len(body) > 32 * 1024:
            return _json_error("invalid_client_metadata", "the registration request is too large")
        try:
            meta = json.loads(body or b"{}")
        except ValueError:
            return _json_error("invalid_client_metadata", "the body must be a JSON object")
        if not isinstance(meta, dict):
            return _json_error("invalid_client_metadata", "the body must be a JSON object")
        uris = meta.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > 20:
            return _json_error("invalid_redirect_uri", "redirect_uris must list 1 to 20 URIs")
        for uri in uris:
            problem = oauth.redirect_uri_problem(uri)
            if problem:
                return _json_error("invalid_redirect_uri", problem)
        method = meta.get("token_endpoint_auth_method") or "client_secret_basic"
        if method not in SUPPORTED_AUTH_METHODS:
            return _json_error("invalid_client_metadata", f"token_endpoint_auth_method must be one of {', '.join(SUPPORTED_AUTH_METHODS)}")
        grants = meta.get("grant_types") or ["authorization_code", "refresh_token"]
        if not isinstance(grants, list) or "authorization_code" not in grants or \
                any(g not in ("authorization_code", "refresh_token") for g in grants):
            return _json_error("invalid_client_metadata", "grant_types must be authorization_code and optionally refresh_token")
        responses = meta.get("response_types") or ["code"]
        if responses != ["code"]:
            return _json_error("invalid_client_metadata", "response_types must be [\"code\"]")
        scope = meta.get("scope") or oauth.SCOPE
        if not isinstance(scope, str) or any(s != oauth.SCOPE for s in scope.split()):
            return _json_error("invalid_client_metadata", f"the only scope is {oauth.SCOPE}")
        name = meta.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            return _json_error("invalid_client_metadata", "client_name must be a string of at most 200 characters")
        record = {k: v for k, v in meta.items() if k in (
            "client_name", "client_uri", "logo_uri", "contacts", "tos_uri", "policy_uri", "software_id",
            "software_version", "application_type")}
        record.update(redirect_uris=uris, grant_types=grants, response_types=["code"], scope=scope,
                      token_endpoint_auth_method=method)
        client_id, secret = await db(store.register_client, record, method, address)
        out = {"client_id": client_id, "client_id_issued_at": int(time.time()), **record}
        if secret:
            out.update(client_secret=secret, client_secret_expires_at=0)
        return Response(out, status_code=201, headers=NO_STORE)

    @get("/.well-known/oauth-authorization-server")
    async def authorization_server_metadata(request: Request[Any, Any, Any]) -> dict[str, Any]:
        base = _public_base_url(request.scope)
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "registration_endpoint": f"{base}/register",
            "revocation_endpoint": f"{base}/revoke",
            "scopes_supported": [oauth.SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": list(SUPPORTED_AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(SUPPORTED_AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": True,
            "service_documentation": f"{base}/",
        }

    return [authorize, login, consent, token, revoke, register, authorization_server_metadata]
