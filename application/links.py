"""Links from one entity to others (a task's client, deal and project; a project's client and deal), checked
once: a link must point at a live entity of the caller's organization.

The client and project are loaded from the event store (the source of truth, and a project may refuse new
tasks); the deal, which only has to exist, from its read model. A tool that checks links declares reads on
those resources (`LINKED_RESOURCES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from application.runner import UnitOfWork
from domain.clients import Client
from domain.errors import NotFound
from domain.projects import Project
from projections import deals as deals_q

LINKED_RESOURCES = {"client_id": "clients", "deal_id": "deals", "project_id": "projects"}


def check_links(uow: UnitOfWork, links: Mapping[str, UUID | None]) -> None:
    """Every given, non-null link (client_id, deal_id, project_id) points at a live entity of this organization."""
    if (client_id := links.get("client_id")) is not None:
        uow.get(Client, client_id, field="client_id")
    if (deal_id := links.get("deal_id")) is not None and not deals_q.deal_exists(uow.conn, uow.org_id, deal_id):
        raise NotFound("deal", deal_id, field="deal_id")
    if (project_id := links.get("project_id")) is not None:
        uow.get(Project, project_id, field="project_id").ensure_accepts_tasks()


def changed_links(entity: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The links a partial update sets to a different entity (unchanged and cleared ones need no check)."""
    return {k: v for k, v in changes.items() if k in LINKED_RESOURCES and v != getattr(entity, k, None)}


def link_reads(*fields: str) -> tuple[str, ...]:
    return tuple(LINKED_RESOURCES[f] for f in fields)
