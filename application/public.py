"""Where people and assistants reach this server, for links the application writes (invitations, tracking
links, webhooks, citation URLs): FLUSIA_PUBLIC_URL, else the listening address `flusia serve` sets. Never a
request's Host header (interfaces/public_url.py explains why)."""

from __future__ import annotations

import os

PUBLIC_URL_ENV = "FLUSIA_PUBLIC_URL"
LISTEN_URL_ENV = "FLUSIA_LISTEN_URL"


def public_base() -> str:
    for name in (PUBLIC_URL_ENV, LISTEN_URL_ENV):
        value = os.environ.get(name, "").strip().rstrip("/")
        if value:
            return value
    return "http://127.0.0.1:8000"
