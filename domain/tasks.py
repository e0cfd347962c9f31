"""Tasks: something to do, by a date, for a client, deal or project."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate, apply_changes

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("open", "done")
EDITABLE_FIELDS = frozenset({"title", "description", "due_date", "priority", "client_id", "deal_id", "project_id"})


class Task(TenantAggregate):
    entity_name = "task"

    @event("Created")
    def __init__(self, org_id: UUID, fields: dict[str, Any], assignee_id: UUID | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.title = ""
        self.description = None
        self.due_date: date | None = None
        self.priority = "normal"
        self.client_id = self.deal_id = self.project_id = None
        apply_changes(self, fields, EDITABLE_FIELDS)
        self.assignee_id = assignee_id
        self.created_by = created_by
        self.status = "open"
        self.tags: list[str] = []
        self.deleted = False

    def add_tag(self, tag: str) -> None:
        if tag not in self.tags:
            self._tagged(tag=tag)

    @event("Tagged")
    def _tagged(self, tag: str) -> None:
        self.tags = [*self.tags, tag]
