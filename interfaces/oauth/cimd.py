"""Client ID Metadata Documents: a `client_id` that is an https URL names a JSON document describing the client.

Fetched with a timeout and a size cap, cached in `oauth_clients` (kind 'metadata_document'), and never from
private, loopback, link-local or otherwise non-global addresses (FLUSIA_CIMD_ALLOW_LOOPBACK=1 allows loopback,
for tests only). Every address the host resolves to is checked before connecting, and the address actually
connected to is checked again before the body is read.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

from application import oauth


class MetadataDocumentError(Exception):
    pass


def _check_host(host: str, port: int, settings: oauth.Settings) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise MetadataDocumentError(f"cannot resolve {host}") from e
    if not infos:
        raise MetadataDocumentError(f"cannot resolve {host}")
    for info in infos:
        if oauth.address_refused(info[4][0], allow_loopback=settings.cimd_allow_loopback):
            raise MetadataDocumentError(f"{host} resolves to a non-public address")


def _check_peer(response: httpx.Response, settings: oauth.Settings) -> None:
    """The address actually connected to must pass the same rules (defeats DNS rebinding between the
    check above and the connection): the body of a refused peer is never read."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer or oauth.address_refused(str(peer[0]), allow_loopback=settings.cimd_allow_loopback):
        raise MetadataDocumentError("the client metadata document's host is not a public address")


def fetch(client_id: str, settings: oauth.Settings) -> tuple[dict[str, Any], int]:
    """The validated document and how long to cache it (seconds)."""
    if not oauth.is_metadata_document_client_id(client_id):
        raise MetadataDocumentError("client_id is not an https URL with a path")
    parts = urlsplit(client_id)
    _check_host(parts.hostname or "", parts.port or 443, settings)
    try:
        with httpx.Client(timeout=settings.cimd_timeout, follow_redirects=False) as http:
            with http.stream("GET", client_id, headers={"Accept": "application/json"}) as response:
                _check_peer(response, settings)
                if response.status_code != 200:
                    raise MetadataDocumentError(f"fetching the client metadata document returned HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > settings.cimd_max_bytes:
                        raise MetadataDocumentError("the client metadata document is too large")
                cache_control = response.headers.get("cache-control", "")
    except httpx.HTTPError as e:
        raise MetadataDocumentError(f"cannot fetch the client metadata document: {e.__class__.__name__}") from e
    try:
        document = json.loads(body)
    except ValueError as e:
        raise MetadataDocumentError("the client metadata document is not JSON") from e
    if not isinstance(document, dict) or document.get("client_id") != client_id:
        raise MetadataDocumentError("the client metadata document's client_id must equal its URL")
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or any(oauth.redirect_uri_problem(u) for u in uris):
        raise MetadataDocumentError("the client metadata document has missing or invalid redirect_uris")
    if document.get("token_endpoint_auth_method", "none") != "none" or "client_secret" in document:
        raise MetadataDocumentError("metadata document clients must be public (token_endpoint_auth_method none)")
    return document, _ttl(cache_control, settings.cimd_cache_ttl)


def _ttl(cache_control: str, default: int) -> int:
    for part in cache_control.lower().split(","):
        name, _, value = part.strip().partition("=")
        if name in {"no-store", "no-cache"}:
            return 60
        if name == "max-age" and value.isdigit():
            return max(60, min(int(value), 86400))
    return default
