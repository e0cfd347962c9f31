"""OAuth 2.1 authorization server endpoints: discovery, registration, authorize (login + consent), token, revoke."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
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
from interfaces.metrics import auth_failure
from interfaces.oauth import cimd, pages
from interfaces.oauth.store import OAuthStore
from interfaces.public_url import PublicUrls

log = logging.getLogger("flusia.oauth")

# The /mcp URL of the request being authenticated: an access token is accepted only for its own audience.
oauth_audience: ContextVar[str | None] = ContextVar("oauth_audience", default=None)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PAGE_HEADERS = {**NO_STORE, "X-Frame-Options": "DENY", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
SUPPORTED_AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
LOGIN_FORM_SECRET = "oauth_login_form"
NONCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class AuthzError(Exception):
    """A bad authorization request. Always answered with an error page, never a redirect: every client of this
    server registered itself (RFC 7591) or names its own metadata document (CIMD), so no redirect URI has been
    vetted, and redirecting on errors would make this server an open redirector (RFC 9700 §4.11.2)."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(f"{error}: {message}" if error else message)


@dataclass
class AuthzRequest:
    client: dict[str, Any]
    redirect_uri: str
    state: str | None
    challenge: str
    resource: str
    scope: str
    query: str


def _redirect_to(uri: str, params: dict[str, str | None]) -> Response[Any]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    sep = "&" if urlsplit(uri).query else "?"
    return Response(None, status_code=303, headers={**NO_STORE, "Location": f"{uri}{sep}{query}"})


def _html(body: str, status: int = 200, cookies: list[Cookie] | None = None,
          headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(body, status_code=status, media_type=MediaType.HTML, headers={**PAGE_HEADERS, **(headers or {})},
                    cookies=cookies or [])


def _json_error(error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> Response[Any]:
    if error in ("invalid_client", "invalid_grant"):
        auth_failure(error)
    return Response({"error": error, "error_description": description}, status_code=status,
                    headers={**NO_STORE, **(headers or {})})


def oauth_routes(runtime: Any, auth: Any, urls: PublicUrls | None = None) -> list[Any]:
    """The route handlers; also registers the access-token verifier with BearerAuth."""
    settings = oauth.Settings.from_env()
    urls = urls or PublicUrls.from_env()
    store = OAuthStore(runtime.pool, settings)
    limiter = runtime.runner.limiter
    # argon2 is slow and memory-hard on purpose: a burst of logins must not take the threads tool calls run on
    hash_limiter = anyio.CapacityLimiter(settings.password_hash_threads)
    form_key: list[bytes] = []

    def verify(token: str) -> Any:
        return store.principal_for_access_token(token, oauth_audience.get())

    auth.verifiers.append(verify)

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=limiter)

    def in_connection(fn: Any, *args: Any) -> Any:
        with runtime.pool.connection() as conn:
            return fn(conn, *args)

    async def login_form_key() -> bytes:
        if not form_key:
            form_key.append(await db(in_connection, oauth.server_secret, LOGIN_FORM_SECRET))
        return form_key[0]

    def cookie_name(base: str) -> str:
        return "__Host-flusia_oauth" if base.startswith("https://") else "flusia_oauth"

    def login_cookie_name(base: str) -> str:
        return "__Host-flusia_login" if base.startswith("https://") else "flusia_login"

    def session_cookie(base: str, sid: str) -> Cookie:
        return Cookie(key=cookie_name(base), value=sid, path="/", httponly=True, samesite="lax",
                      secure=base.startswith("https://"), max_age=settings.session_ttl)

    # --- clients -------------------------------------------------------------------------------------

    def load_client(client_id: str) -> dict[str, Any] | None:
        if not client_id or len(client_id) > 2000 or not oauth.storable(client_id):
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
            raise AuthzError("The application is unknown, or its registration has expired.")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri or redirect_uri not in client["redirect_uris"]:
            raise AuthzError("The redirect URI does not match any registered for this application.")
        if len({k for k, _ in pairs}) != len(pairs):
            raise AuthzError("request parameters must not repeat", "invalid_request")
        if params.get("response_type") != "code":
            raise AuthzError("only response_type=code is supported", "unsupported_response_type")
        method = params.get("code_challenge_method")
        if not params.get("code_challenge"):
            raise AuthzError("PKCE is required: code_challenge with code_challenge_method=S256", "invalid_request")
        if method != "S256":
            raise AuthzError("only code_challenge_method=S256 is supported (plain is refused)", "invalid_request")
        if not oauth.valid_challenge(params["code_challenge"]):
            raise AuthzError("code_challenge must be a base64url SHA-256 (43 characters)", "invalid_request")
        resource = params.get("resource")
        if not resource:
            raise AuthzError(f"the resource parameter is required and must be {base}/mcp", "invalid_request")
        if resource.rstrip("/") != f"{base}/mcp":
            raise AuthzError(f"this server only issues tokens for {base}/mcp", "invalid_target")
        requested = params.get("scope", "").split()
        if any(s != oauth.SCOPE for s in requested):
            raise AuthzError(f"the only scope is {oauth.SCOPE}", "invalid_scope")
        return AuthzRequest(client, redirect_uri, params.get("state"), params["code_challenge"], f"{base}/mcp",
                            oauth.SCOPE, query)

    def client_name(client: dict[str, Any]) -> str:
        return client.get("client_name") or oauth.redirect_host(client["redirect_uris"][0])

    async def current_session(request: Request[Any, Any, Any], base: str) -> tuple[str | None, dict[str, Any] | None]:
        sid = request.cookies.get(cookie_name(base))
        return sid, (await db(store.session, sid) if sid else None)

    async def login_form(request: Request[Any, Any, Any], base: str, authz: AuthzRequest, *, error: str | None = None,
                         email: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
        """The login page. Its CSRF token is stateless (an HMAC over the browser's nonce cookie and the time),
        so showing it stores nothing: a session row exists only after a successful login."""
        nonce = request.cookies.get(login_cookie_name(base)) or ""
        if len(nonce) != 43 or not set(nonce) <= NONCE_CHARS:
            nonce = secrets.token_urlsafe(32)
        cookie = Cookie(key=login_cookie_name(base), value=nonce, path="/", httponly=True, samesite="lax",
                        secure=base.startswith("https://"), max_age=settings.login_form_ttl)
        token = oauth.login_form_token(await login_form_key(), nonce, time.time())
        return _html(pages.login_page(csrf=token, request_query=authz.query, client_name=client_name(authz.client),
                                      email=email, error=error), status, [cookie], headers)

    async def consent_or_login(request: Request[Any, Any, Any], base: str, authz: AuthzRequest,
                               session: dict[str, Any] | None) -> Response[Any]:
        identities = await db(store.active_identities, session["identities"]) if session else []
        if not identities or session is None:
            return await login_form(request, base, authz)
        return _html(pages.consent_page(
            csrf=session["csrf_token"], request_query=authz.query, client_name=client_name(authz.client),
            client_id=authz.client["client_id"], redirect_host=oauth.redirect_host(authz.redirect_uri),
            identities=identities, scope=authz.scope,
        ))

    CSRF_REFUSED = "invalid_request: the form's CSRF token is missing or invalid. Reload the page and try again."

    async def authz_or_error(query: str, base: str) -> AuthzRequest | Response[Any]:
        """The validated authorization request, or an error page for a bad one (never a redirect: see AuthzError)."""
        try:
            return await db(parse_request, query, base)
        except AuthzError as e:
            return _html(pages.error_page(str(e)), 400)

    async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
        return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}

    @get("/authorize")
    async def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
        base = urls.base(request.scope)
        authz = await authz_or_error(request.scope.get("query_string", b"").decode("latin-1"), base)
        if isinstance(authz, Response):
            return authz
        _, session = await current_session(request, base)
        return await consent_or_login(request, base, authz, session)

    @post("/authorize/login")
    async def login(request: Request[Any, Any, Any]) -> Response[Any]:
        base = urls.base(request.scope)
        form = await form_of(request)
        if not oauth.login_form_token_valid(await login_form_key(), request.cookies.get(login_cookie_name(base)),
                                            form.get("csrf_token"), time.time(), settings.login_form_ttl):
            return _html(pages.error_page(CSRF_REFUSED), 403)
        authz = await authz_or_error(form.get("request", ""), base)
        if isinstance(authz, Response):
            return authz
        email = (form.get("email") or "").strip().lower()[:320]
        password = form.get("password") or ""

        # Throttle before the password is checked. Every attempt first counts as a failure of its client address
        # and of its account (atomically, one upsert each: parallel attempts are counted one after the other),
        # and waits as long as the failures before it require; a correct password takes its failure back.
        # Only an address over its cap is refused: failures never lock an account.
        buckets = [oauth.address_bucket(urls.client_address(request.scope))]
        address_failures = await db(store.login_attempt, buckets[0])
        if address_failures >= settings.login_address_limit:
            return await login_form(request, base, authz, email=email, status=429,
                                    error="Too many sign-in attempts from your network. Try again later.",
                                    headers={"Retry-After": str(settings.login_window)})
        delay = oauth.login_delay(address_failures, settings.login_address_free_attempts, settings.login_delay,
                                  settings.login_max_delay)
        if email:
            buckets.append(oauth.account_bucket(email))
            account_failures = await db(store.login_attempt, buckets[1])
            delay = max(delay, oauth.login_delay(account_failures, settings.login_free_attempts, settings.login_delay,
                                                 settings.login_max_delay))
        if delay > 0:
            await anyio.sleep(delay)
        matched: list[dict[str, Any]] = []
        if email and password and oauth.storable(email):
            candidates = await db(in_connection, oauth.login_candidates, email)
            matched = await anyio.to_thread.run_sync(oauth.matching_candidates, candidates, password,
                                                     limiter=hash_limiter)
        if not matched:
            auth_failure("login")
            return await login_form(request, base, authz, error="Incorrect e-mail or password.", email=email,
                                    status=401)
        await db(store.login_succeeded, buckets)
        # the session starts here, with a fresh id (no fixation); an earlier one is dropped
        sid, _ = await current_session(request, base)
        if sid:
            await db(store.drop_session, sid)
        new_sid, _ = await db(store.new_session, [{"organization_id": m["organization_id"], "user_id": m["user_id"]}
                                                  for m in matched])
        return Response(None, status_code=303, headers={**NO_STORE, "Location": f"/authorize?{authz.query}"},
                        cookies=[session_cookie(base, new_sid)])

    @post("/authorize/consent")
    async def consent(request: Request[Any, Any, Any]) -> Response[Any]:
        base = urls.base(request.scope)
        form = await form_of(request)
        _, session = await current_session(request, base)
        token = form.get("csrf_token") or ""
        if session is None or not token or not hmac.compare_digest(token.encode(), session["csrf_token"].encode()):
            return _html(pages.error_page(CSRF_REFUSED), 403)
        authz = await authz_or_error(form.get("request", ""), base)
        if isinstance(authz, Response):
            return authz
        identities = await db(store.active_identities, session["identities"])
        if not identities:
            return await login_form(request, base, authz)
        decision = form.get("decision")
        if decision == "deny":
            # not redirected either: a self-registered client's redirect URI is not vetted (RFC 9700 §4.11.2)
            return _html(pages.denied_page(client_name(authz.client)))
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
        base = urls.base(request.scope)
        form = await form_of(request)
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
        form = await form_of(request)
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
        address = urls.client_address(request.scope)
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
        if not oauth.storable(meta):
            return _json_error("invalid_client_metadata", "text must not contain NUL characters or unpaired surrogates")
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
        base = urls.base(request.scope)
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
