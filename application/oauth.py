"""Domain-free OAuth 2.1 logic: secrets and their hashes, PKCE, redirect URI rules, passwords, settings.

Everything that touches HTTP lives in `interfaces/oauth`; this module only computes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import DomainError, NotFound

SCOPE = "mcp:full"
ACCESS_PREFIX = "fat_"   # never "flusia_": that prefix is routed to static API tokens
REFRESH_PREFIX = "frt_"
CODE_PREFIX = "fac_"
CLIENT_PREFIX = "fcl_"
SECRET_PREFIX = "fcs_"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
PRECONFIGURED_CALLBACKS = (
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
    "http://localhost:6274/oauth/callback",
    "http://localhost:6274/oauth/callback/debug",
)
MIN_PASSWORD_LENGTH = 8


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 and value == value and value != float("inf") else default


@dataclass(frozen=True)
class Settings:
    access_ttl: int = 900                 # seconds; access tokens are short-lived
    refresh_ttl: int = 30 * 86400
    code_ttl: int = 60
    session_ttl: int = 12 * 3600
    unused_client_ttl: int = 7 * 86400    # a registration never used for this long expires
    register_limit: int = 30              # registrations per client address per window
    register_window: int = 3600
    login_window: int = 900               # failures are forgotten after this long without another one
    login_free_attempts: int = 3          # failures per account before its attempts are delayed
    login_address_free_attempts: int = 10  # failures per client address before its attempts are delayed
    login_delay: float = 1.0              # the first delay; it doubles with every further failure...
    login_max_delay: float = 30.0         # ...up to this
    login_address_limit: int = 100        # failures per client address per window before it is refused (429)
    login_form_ttl: int = 3600            # how long a login form (its CSRF token) stays valid
    password_hash_threads: int = 2        # threads checking passwords (argon2), apart from tool calls
    cimd_timeout: float = 5.0
    cimd_max_bytes: int = 64 * 1024
    cimd_cache_ttl: int = 3600
    cimd_allow_loopback: bool = False     # tests only

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            access_ttl=_int_env("FLUSIA_OAUTH_ACCESS_TTL", 900),
            refresh_ttl=_int_env("FLUSIA_OAUTH_REFRESH_TTL", 30 * 86400),
            code_ttl=_int_env("FLUSIA_OAUTH_CODE_TTL", 60),
            session_ttl=_int_env("FLUSIA_OAUTH_SESSION_TTL", 12 * 3600),
            unused_client_ttl=_int_env("FLUSIA_OAUTH_UNUSED_CLIENT_TTL", 7 * 86400),
            register_limit=_int_env("FLUSIA_OAUTH_REGISTER_LIMIT", 30),
            register_window=_int_env("FLUSIA_OAUTH_REGISTER_WINDOW", 3600),
            login_window=max(1, _int_env("FLUSIA_OAUTH_LOGIN_WINDOW", 900)),
            login_free_attempts=max(0, _int_env("FLUSIA_OAUTH_LOGIN_FREE_ATTEMPTS", 3)),
            login_address_free_attempts=max(0, _int_env("FLUSIA_OAUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", 10)),
            login_delay=_float_env("FLUSIA_OAUTH_LOGIN_DELAY", 1.0),
            login_max_delay=_float_env("FLUSIA_OAUTH_LOGIN_MAX_DELAY", 30.0),
            login_address_limit=max(1, _int_env("FLUSIA_OAUTH_LOGIN_ADDRESS_LIMIT", 100)),
            login_form_ttl=max(60, _int_env("FLUSIA_OAUTH_LOGIN_FORM_TTL", 3600)),
            password_hash_threads=max(1, _int_env("FLUSIA_PASSWORD_HASH_THREADS", 2)),
            cimd_timeout=float(os.environ.get("FLUSIA_CIMD_TIMEOUT", 5.0)),
            cimd_max_bytes=_int_env("FLUSIA_CIMD_MAX_BYTES", 64 * 1024),
            cimd_cache_ttl=_int_env("FLUSIA_CIMD_CACHE_TTL", 3600),
            cimd_allow_loopback=os.environ.get("FLUSIA_CIMD_ALLOW_LOOPBACK") == "1",
        )


# --- secrets -------------------------------------------------------------------------------------------

def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def same_digest(stored: bytes | memoryview | None, secret: str) -> bool:
    return stored is not None and hmac.compare_digest(bytes(stored), digest(secret))


def storable(value: Any) -> bool:
    """True when every string in `value` (nested lists and dicts included) can be stored in PostgreSQL text or
    jsonb: no NUL character, no unpaired surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return True


def server_secret(conn: Any, name: str) -> bytes:
    """A key the server keeps for itself: derived from FLUSIA_SECRET when set, else generated once and stored in
    `app_secrets` under `name` (every worker and restart then shares it)."""
    configured = os.environ.get("FLUSIA_SECRET")
    if configured:
        return hmac.new(configured.encode(), name.encode(), hashlib.sha256).digest()
    conn.execute("INSERT INTO app_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                 (name, secrets.token_urlsafe(32)))
    row = conn.execute("SELECT value FROM app_secrets WHERE name = %s", (name,)).fetchone()
    value = row["value"] if isinstance(row, dict) else row[0]
    return value.encode()


# --- login forms and throttling ------------------------------------------------------------------------

def login_form_token(key: bytes, nonce: str, now: float) -> str:
    """The login form's CSRF token: when it was issued and an HMAC binding that time to the browser's nonce
    cookie. Stateless: nothing is stored before someone actually signs in."""
    issued = str(int(now))
    mac = hmac.new(key, f"login-form|{nonce}|{issued}".encode(), hashlib.sha256).digest()
    return f"{issued}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def login_form_token_valid(key: bytes, nonce: str | None, token: str | None, now: float, ttl: int) -> bool:
    if not nonce or not token or len(nonce) > 100 or len(token) > 100:
        return False
    issued, _, _mac = token.partition(".")
    if not issued.isdigit() or not now - ttl <= int(issued) <= now + 60:
        return False
    return hmac.compare_digest(login_form_token(key, nonce, int(issued)).encode(), token.encode())


def login_delay(failures_before: int, free: int, first: float, cap: float) -> float:
    """Seconds an attempt waits before its password is checked: 0 for the first `free` failures, then
    first, 2*first, 4*first ... up to `cap`."""
    over = failures_before - free
    if over < 0:
        return 0.0
    return min(cap, first * (2 ** min(over, 40)))


def account_bucket(email: str) -> str:
    """The throttle bucket of an e-mail (a digest: e-mails are not stored for throttling)."""
    return "acct:" + hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


def address_bucket(address: str) -> str:
    """The throttle bucket of a client address: IPv6 addresses by /64 (one subscriber's usual allocation)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "addr:" + address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        return "addr:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "addr:" + str(ip)


# --- PKCE ----------------------------------------------------------------------------------------------

def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def valid_verifier(verifier: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return 43 <= len(verifier) <= 128 and set(verifier) <= allowed


def pkce_matches(verifier: str, challenge: str) -> bool:
    return valid_verifier(verifier) and hmac.compare_digest(s256(verifier), challenge)


def valid_challenge(challenge: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    return len(challenge) == 43 and set(challenge) <= allowed


# --- redirect URIs -------------------------------------------------------------------------------------

def redirect_uri_problem(uri: Any) -> str | None:
    """Why a redirect URI may not be registered, or None: any https URL; http only on loopback hosts."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        return "redirect URIs must be non-empty strings"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return f"{uri!r} is not a valid URL"
    if parts.fragment or "#" in uri:
        return f"{uri!r} must not contain a fragment"
    if parts.username or parts.password:
        return f"{uri!r} must not contain credentials"
    host = (parts.hostname or "").lower()
    if not host:
        return f"{uri!r} has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        if host in LOOPBACK_HOSTS:
            return None
        return f"{uri!r}: http is allowed only for localhost, 127.0.0.1 and [::1]; use https"
    return f"{uri!r}: only https (or http on a loopback host) redirect URIs are accepted"


def redirect_host(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.netloc or uri


# --- addresses (CIMD fetches) --------------------------------------------------------------------------

def address_refused(address: str, *, allow_loopback: bool) -> bool:
    """True for addresses a server-side fetch must never reach: private, loopback, link-local, reserved..."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return not allow_loopback
    return (ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
            or not ip.is_global)


def is_metadata_document_client_id(client_id: str) -> bool:
    """A Client ID Metadata Document URL: https with a path other than '/'."""
    try:
        parts = urlsplit(client_id)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and parts.path not in ("", "/") and not parts.fragment


# --- passwords -----------------------------------------------------------------------------------------

_hasher = PasswordHasher()  # argon2id, salted, memory-hard
_DUMMY_HASH = _hasher.hash("flusia-dummy-password-for-timing")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise DomainError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long", field="password")
    return _hasher.hash(password)


def check_password(stored_hash: str | None, password: str) -> bool:
    """Constant-ish time: a missing hash still costs one argon2 verification."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def set_password(conn: Any, org_id: UUID, user_id: UUID, password: str) -> None:
    hashed = hash_password(password)
    row = conn.execute(
        "UPDATE users SET password_hash = %s WHERE id = %s AND organization_id = %s RETURNING id",
        (hashed, user_id, org_id),
    ).fetchone()
    if row is None:
        raise NotFound("user", user_id, field="user")


def login_candidates(conn: Any, email: str) -> list[dict[str, Any]]:
    """The active users with this e-mail (any organization), with their password hashes."""
    return conn.execute(
        "SELECT u.id AS user_id, u.organization_id, u.password_hash, o.name AS organization_name, u.name"
        " FROM users u JOIN organizations o ON o.id = u.organization_id"
        " WHERE lower(u.email) = lower(%s) AND u.status = 'active' ORDER BY o.name, o.id",
        (email.strip(),),
    ).fetchall()


def matching_candidates(rows: list[dict[str, Any]], password: str) -> list[dict[str, Any]]:
    """The candidates whose password matches (CPU only, no database: run it on the password-hashing threads).
    No candidate still costs one argon2 verification."""
    matched = []
    if not rows:
        check_password(None, password)
    for row in rows:
        if check_password(row["password_hash"], password):
            matched.append({"organization_id": str(row["organization_id"]), "user_id": str(row["user_id"]),
                            "organization_name": row["organization_name"], "name": row["name"]})
    return matched


def authenticate(conn: Any, email: str, password: str) -> list[dict[str, Any]]:
    """Every active (organization, user) whose e-mail and password match; [] when none do.

    The same e-mail may belong to users of several organizations; each keeps its own password."""
    return matching_candidates(login_candidates(conn, email), password)
