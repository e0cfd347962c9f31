"""Call recordings of a client: metadata, a media reference and the transcript."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate


class Recording(TenantAggregate):
    entity_name = "recording"

    @event("Created")
    def __init__(
        self,
        org_id: UUID,
        client_id: UUID,
        title: str | None,
        media_url: str,
        duration_seconds: int,
        transcript: str | None,
        direction: str | None,
        recorded_at: datetime | None,
        created_by: UUID | None,
    ) -> None:
        self.org_id = org_id
        self.client_id = client_id
        self.title = title
        self.media_url = media_url
        self.duration_seconds = duration_seconds
        self.transcript = transcript
        self.direction = direction
        self.recorded_at = recorded_at
        self.created_by = created_by
        self.deleted = False
