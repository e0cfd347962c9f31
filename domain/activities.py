"""Activities: what happened with a client or deal — a call, a meeting, an e-mail or a free note — by whom, when.

An activity links to a client and/or a deal (at least one) and to a user. Type-specific details (call
direction and duration, meeting end and attendees, e-mail subject) live in `details`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.errors import DomainError

TYPES = ("call", "meeting", "email", "note")
ACTIVITY_FIELDS = ("subject", "body", "occurred_at", "user_id", "details")
EDITABLE_FIELDS = frozenset(ACTIVITY_FIELDS)


class Activity(TenantAggregate):
    entity_name = "activity"

    @event("Created")
    def __init__(self, org_id: UUID, type: str, client_id: UUID | None, deal_id: UUID | None, user_id: UUID | None,
                 occurred_at: datetime, subject: str | None, body: str | None, details: dict[str, Any],
                 created_by: UUID | None) -> None:
        self.org_id = org_id
        self.type = type
        self.client_id = client_id
        self.deal_id = deal_id
        self.user_id = user_id
        self.occurred_at = occurred_at
        self.subject = subject
        self.body = body
        self.details = dict(details)
        self.created_by = created_by
        self.deleted = False

    @classmethod
    def log(cls, org_id: UUID, type: str, *, client_id: UUID | None, deal_id: UUID | None, user_id: UUID | None,
            occurred_at: datetime, subject: str | None = None, body: str | None = None,
            details: dict[str, Any] | None = None, created_by: UUID | None = None) -> Activity:
        if type not in TYPES:
            raise DomainError(f"type must be one of {', '.join(TYPES)}", field="type")
        if client_id is None and deal_id is None:
            raise DomainError("link the activity to a client_id and/or a deal_id", field="client_id")
        details = {k: v for k, v in (details or {}).items() if v is not None}
        if type == "meeting" and "end" in details and details["end"] < occurred_at.isoformat():
            raise DomainError("a meeting cannot end before it starts", field="end")
        return cls(org_id=org_id, type=type, client_id=client_id, deal_id=deal_id, user_id=user_id,
                   occurred_at=occurred_at, subject=subject, body=body, details=details, created_by=created_by)

    def update(self, changes: dict[str, Any]) -> None:
        if "details" in changes:
            changes = {**changes, "details": {**self.details, **changes["details"]}}
        changed = {k: v for k, v in changes.items() if getattr(self, k, None) != v}
        if changed:
            self._updated(changes=changed)

    @event("Updated")
    def _updated(self, changes: dict[str, Any]) -> None:
        unknown = set(changes) - EDITABLE_FIELDS
        if unknown:
            raise DomainError(f"cannot change {sorted(unknown)[0]}", field=sorted(unknown)[0])
        for k, v in changes.items():
            setattr(self, k, v)
