"""The organization's own settings that change what a tool means: its currency and what 'today' is there."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo


def org_settings(conn: Any, org_id: UUID) -> dict[str, Any]:
    row = conn.execute("SELECT currency, timezone, locale FROM organizations WHERE id = %s", (org_id,)).fetchone()
    return row or {"currency": "EUR", "timezone": "UTC", "locale": None}


def org_today(conn: Any, org_id: UUID) -> date:
    """'Today' in the organization's timezone: what a close date of 'today' means to its users."""
    return datetime.now(ZoneInfo(org_settings(conn, org_id)["timezone"])).date()
