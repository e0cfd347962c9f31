"""Projects: work for a client (often born from a won deal) with members, a brief, an activity log and tasks.

An archived project is kept for reference: it drops out of default lists and accepts no new tasks until
it is brought back.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import apply_changes
from domain.shared import Editable
from domain.custom_fields import HasCustomFields
from domain.errors import Conflict, DomainError, NotFound

STATUSES = ("planned", "active", "on_hold", "completed", "cancelled")
MEMBER_ROLES = ("manager", "member", "viewer")
LOG_KINDS = ("worklog", "milestone", "comment")
"""What people log on a project's activity log; the projection adds 'system' entries for changes that matter."""
BRIEF_SECTIONS = ("goals", "scope", "deliverables", "constraints")
PROJECT_FIELDS = ("name", "description", "client_id", "deal_id", "status", "start_date", "end_date", "budget_cents",
                  "currency")
EDITABLE_FIELDS = frozenset(PROJECT_FIELDS)


class ProjectArchived(Conflict):
    code = "project_archived"


class MemberNotFound(NotFound):
    def __init__(self, user_id: UUID) -> None:
        super().__init__("project member", user_id, field="user_id")


def _check_dates(start: date | None, end: date | None) -> None:
    if start is not None and end is not None and end < start:
        raise DomainError("end_date is before start_date", field="end_date")


class Project(Editable, HasCustomFields):
    entity_name = "project"
    editable_fields = EDITABLE_FIELDS

    @event("Created")
    def __init__(self, org_id: UUID, fields: dict[str, Any], created_by: UUID | None) -> None:
        self.org_id = org_id
        self.name = ""
        self.description = self.client_id = self.deal_id = None
        self.status = "active"
        self.start_date: date | None = None
        self.end_date: date | None = None
        self.budget_cents = None
        self.currency = None
        apply_changes(self, fields, EDITABLE_FIELDS)
        self.created_by = created_by
        self.archived = False
        self.members: dict[str, str] = {}
        self.brief: dict[str, Any] = {}
        self.deleted = False

    @classmethod
    def create(cls, org_id: UUID, fields: dict[str, Any], created_by: UUID | None) -> Project:
        if fields.get("status", "active") not in STATUSES:
            raise DomainError(f"status must be one of {', '.join(STATUSES)}", field="status")
        _check_dates(fields.get("start_date"), fields.get("end_date"))
        return cls(org_id=org_id, fields=fields, created_by=created_by)

    def _ensure_active(self) -> None:
        if self.archived:
            raise ProjectArchived("the project is archived; unarchive it first (crm_projects_unarchive)",
                                  field="project_id")

    def ensure_accepts_tasks(self) -> None:
        """Archived projects refuse new tasks."""
        if self.archived:
            raise ProjectArchived("the project is archived and accepts no new tasks; unarchive it first",
                                  field="project_id")

    def check_changes(self, changes: dict[str, Any]) -> None:
        self._ensure_active()
        if "status" in changes and changes["status"] not in STATUSES:
            raise DomainError(f"status must be one of {', '.join(STATUSES)}", field="status")
        _check_dates(changes.get("start_date", self.start_date), changes.get("end_date", self.end_date))


    # -- archive -----------------------------------------------------------------------------------------
    def archive(self) -> None:
        if self.archived:
            raise ProjectArchived("the project is already archived", field="project_id")
        self._archived()

    @event("Archived")
    def _archived(self) -> None:
        self.archived = True

    def unarchive(self) -> None:
        if not self.archived:
            raise Conflict("the project is not archived", field="project_id")
        self._unarchived()

    @event("Unarchived")
    def _unarchived(self) -> None:
        self.archived = False

    # -- members -----------------------------------------------------------------------------------------
    def assign_user(self, user_id: UUID, role: str) -> None:
        self._ensure_active()
        if role not in MEMBER_ROLES:
            raise DomainError(f"role must be one of {', '.join(MEMBER_ROLES)}", field="role")
        if self.members.get(str(user_id)) != role:
            self._member_set(user_id=user_id, role=role)

    @event("MemberAssigned")
    def _member_set(self, user_id: UUID, role: str) -> None:
        self.members = {**self.members, str(user_id): role}

    def unassign_user(self, user_id: UUID) -> None:
        if str(user_id) not in self.members:
            raise MemberNotFound(user_id)
        self._member_removed(user_id=user_id)

    @event("MemberUnassigned")
    def _member_removed(self, user_id: UUID) -> None:
        self.members = {k: v for k, v in self.members.items() if k != str(user_id)}

    # -- brief -------------------------------------------------------------------------------------------
    def update_brief(self, changes: dict[str, Any]) -> None:
        self._ensure_active()
        unknown = set(changes) - set(BRIEF_SECTIONS)
        if unknown:
            raise DomainError(f"unknown brief section {sorted(unknown)[0]}", field=sorted(unknown)[0])
        changed = {k: v for k, v in changes.items() if self.brief.get(k) != v}
        if changed:
            self._brief_updated(changes=changed)

    @event("BriefUpdated")
    def _brief_updated(self, changes: dict[str, Any]) -> None:
        self.brief = {**self.brief, **changes}

    # -- activity log ------------------------------------------------------------------------------------
    def log_activity(self, kind: str, text: str, *, minutes: int | None = None, occurred_on: date | None = None,
                     author_id: UUID | None = None) -> UUID:
        self._ensure_active()
        if kind not in LOG_KINDS:
            raise DomainError(f"kind must be one of {', '.join(LOG_KINDS)}", field="kind")
        if not text.strip():
            raise DomainError("an activity needs some text", field="text")
        if minutes is not None and kind != "worklog":
            raise DomainError("only a worklog records minutes", field="minutes")
        activity_id = uuid4()
        self._activity_logged(activity_id=activity_id, kind=kind, text=text, minutes=minutes,
                              occurred_on=occurred_on, author_id=author_id)
        return activity_id

    @event("ActivityLogged")
    def _activity_logged(self, activity_id: UUID, kind: str, text: str, minutes: int | None,
                         occurred_on: date | None, author_id: UUID | None) -> None:
        pass
