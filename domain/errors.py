"""Domain errors: each names what went wrong in the CRM's own terms, and the argument it concerns."""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the CRM refused a change. `field` names the argument the caller should fix, if any."""

    code = "rule_violation"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    """The entity does not exist, was deleted, or belongs to another organization (indistinguishable on purpose)."""

    code = "not_found"

    def __init__(self, entity: str, entity_id: object, *, field: str | None = None) -> None:
        super().__init__(f"{entity} {entity_id} not found", field=field)
        self.entity = entity
        self.entity_id = entity_id


class Conflict(DomainError):
    code = "conflict"
