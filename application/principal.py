"""Who is calling: the organization, user and credential behind a request, with effective grants."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID, uuid4

from application import permissions


@dataclass(frozen=True)
class Principal:
    organization_id: UUID
    user_id: UUID
    grants: dict[str, str]
    token_id: UUID | None = None
    oauth_client_id: str | None = None
    correlation_id: UUID = field(default_factory=uuid4)
    workflow_run_id: UUID | None = None
    """Set when a workflow run acts (application/workflow_engine.py): every event it causes names the run."""

    def can(self, resource: str, action: str) -> bool:
        return permissions.allows(self.grants, resource, action)
