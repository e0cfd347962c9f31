"""Where clients reach this server, and who the client is: never taken from what a request merely claims.

The base URL names the OAuth issuer, the `/mcp` resource and token audience, and the `resource_metadata` link of
401 challenges. It comes from, in order:

1. `FLUSIA_PUBLIC_URL` (or `flusia serve --public-url URL`, which sets it): always wins;
2. `X-Forwarded-Proto` / `X-Forwarded-Host`, only when the peer that connected is a proxy listed in
   `FLUSIA_TRUSTED_PROXIES` (comma-separated IP addresses or CIDR networks; default: none);
3. the address the server listens on (`FLUSIA_LISTEN_URL`, set by `flusia serve` from `--host`/`--port`; a
   wildcard host such as 0.0.0.0 is named as loopback there, so set a public URL when serving other machines).

The `Host` header is never used. The client address (login throttling, registration limits) is the peer address,
or, when the peer is a trusted proxy, the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
Uvicorn's own proxy-header handling is switched off by `flusia serve`, so these rules are the only ones.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

PUBLIC_URL_ENV = "FLUSIA_PUBLIC_URL"
LISTEN_URL_ENV = "FLUSIA_LISTEN_URL"
TRUSTED_PROXIES_ENV = "FLUSIA_TRUSTED_PROXIES"
ALLOWED_ORIGINS_ENV = "FLUSIA_ALLOWED_ORIGINS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_LISTEN_URL = "http://127.0.0.1:8000"

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_public_url(value: str) -> str:
    """`scheme://host[:port][/path]` without a trailing slash; ValueError says what is wrong."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a valid URL") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must not have a query, a fragment or credentials")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def listen_url(host: str, port: int) -> str:
    """The URL of a listening socket; wildcard addresses become loopback (they name no reachable host)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def parse_networks(value: str) -> tuple[Network, ...]:
    """`FLUSIA_TRUSTED_PROXIES`: comma-separated addresses or CIDR networks; ValueError names a bad entry."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ValueError(f"{TRUSTED_PROXIES_ENV}: {item!r} is not an IP address or network") from e
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[v6]:port"
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":")[0]
    try:
        ip = ipaddress.ip_address(value.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _header(scope: Any, name: bytes) -> str | None:
    """The last value of a header (the one the nearest proxy wrote), or None."""
    found = None
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            found = value.decode("latin-1")
    if found is None:
        return None
    return found.split(",")[-1].strip() or None


@dataclass(frozen=True)
class PublicUrls:
    configured: str | None
    listen: str
    trusted: tuple[Network, ...]

    @classmethod
    def from_env(cls) -> PublicUrls:
        configured = os.environ.get(PUBLIC_URL_ENV, "").strip()
        listen = os.environ.get(LISTEN_URL_ENV, "").strip()
        return cls(
            configured=normalize_public_url(configured) if configured else None,
            listen=normalize_public_url(listen) if listen else DEFAULT_LISTEN_URL,
            trusted=parse_networks(os.environ.get(TRUSTED_PROXIES_ENV, "")),
        )

    def _is_trusted(self, ip: Any) -> bool:
        return ip is not None and any(ip.version == n.version and ip in n for n in self.trusted)

    def _peer(self, scope: Any) -> Any:
        client = scope.get("client")
        return _ip(str(client[0])) if client else None

    def base(self, scope: Any) -> str:
        """The base URL (no trailing slash) for this request: see the module docstring."""
        if self.configured:
            return self.configured
        if self.trusted and self._is_trusted(self._peer(scope)):
            default = urlsplit(self.listen)
            proto = (_header(scope, b"x-forwarded-proto") or "").lower()
            host = _header(scope, b"x-forwarded-host") or ""
            scheme = proto if proto in ("http", "https") else default.scheme
            netloc = host if host and len(host) <= 255 and _HOST.match(host) else default.netloc
            return f"{scheme}://{netloc}"
        return self.listen

    def foreign_request(self, scope: Any) -> str | None:
        """Why a request to /mcp comes from somewhere it must not (DNS rebinding, another site's page driving the
        user's browser), or None. MCP requires servers to check `Origin`: a browser request is accepted from this
        server's own host names (public URL, listening address), from localhost (MCP Inspector) and from the
        origins in FLUSIA_ALLOWED_ORIGINS (comma-separated, `*` for any); requests without `Origin` (assistants'
        servers, SDK clients) are not browser requests. A connection that arrived on a loopback address must also
        name a host of this server: a page on evil.example resolving its name to 127.0.0.1 sends `Host:
        evil.example`. Behind a trusted proxy, the proxy names the host."""
        own = {urlsplit(url).hostname for url in (self.configured, self.listen) if url} | LOOPBACK_NAMES
        origin = _header(scope, b"origin")
        if origin is not None:
            allowed = {o.strip().rstrip("/").lower() for o in os.environ.get(ALLOWED_ORIGINS_ENV, "").split(",")}
            try:
                origin_host = urlsplit(origin).hostname
            except ValueError:
                origin_host = None
            if origin_host not in own and "*" not in allowed and origin.rstrip("/").lower() not in allowed:
                return (f"requests from web pages of {origin[:100]!r} may not use this server: only its own address, "
                        f"localhost and the origins in {ALLOWED_ORIGINS_ENV} may")
        server = scope.get("server")
        local = _ip(str(server[0])) if server else None
        if local is not None and local.is_loopback and not self._is_trusted(self._peer(scope)):
            try:
                host = urlsplit("//" + (_header(scope, b"host") or "")).hostname
            except ValueError:
                host = None
            if host not in own:
                return "the Host header does not name this server (set FLUSIA_PUBLIC_URL to the name clients use)"
        return None

    def client_address(self, scope: Any) -> str:
        """The client's IP address as text ("unknown" when there is no peer)."""
        peer = self._peer(scope)
        if peer is None:
            return "unknown"
        if not self.trusted or not self._is_trusted(peer):
            return str(peer)
        nearest = peer
        for value in reversed(_forwarded_for(scope)):  # right to left: each hop appended who connected to it
            ip = _ip(value)
            if ip is None:
                break  # garbage: trust nothing further left
            nearest = ip
            if not self._is_trusted(ip):
                break
        return str(nearest)


def _forwarded_for(scope: Any) -> list[str]:
    values: list[str] = []
    for key, value in scope.get("headers", []):
        if key.lower() == b"x-forwarded-for":
            values.extend(v for v in value.decode("latin-1").split(",") if v.strip())
    return values


def public_base_url(scope: Any) -> str:
    """The base URL for a request under the current environment's settings (see PublicUrls.base)."""
    return PublicUrls.from_env().base(scope)
