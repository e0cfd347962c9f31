"""Notes: free text attached to one subject (a client now, deals later). Shared by every resource with notes."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.errors import NotFound


class Note(TenantAggregate):
    entity_name = "note"

    @event("Created")
    def __init__(self, org_id: UUID, subject_type: str, subject_id: UUID, body: str, author_id: UUID | None) -> None:
        self.org_id = org_id
        self.subject_type = subject_type
        self.subject_id = subject_id
        self.body = body
        self.author_id = author_id
        self.deleted = False

    def ensure_on(self, subject_type: str, subject_id: UUID | None) -> None:
        """A note is addressed through its subject; a note of another subject is not found there."""
        if self.subject_type != subject_type or (subject_id is not None and self.subject_id != subject_id):
            raise NotFound("note", self.id, field="note_id")

    def edit(self, body: str) -> None:
        if body != self.body:
            self._edited(body=body)

    @event("Edited")
    def _edited(self, body: str) -> None:
        self.body = body
