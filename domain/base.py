"""What every aggregate of the CRM shares: it belongs to one organization and can be deleted.

Aggregates follow the eventsourcing library's style: a method checks invariants, then a private method
decorated with `@event` records the change. Nothing here performs I/O.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import DomainError, NotFound


class TenantAggregate(Aggregate):
    """An aggregate owned by one organization. Deleted aggregates refuse every further change."""

    # No class-level annotations here: eventsourcing would read them as constructor fields of every Created event.
    entity_name = "entity"

    def ensure_usable(self, org_id: UUID) -> None:
        """Organizations are isolated: another tenant's aggregate, or a deleted one, does not exist for the caller."""
        if self.org_id != org_id or self.deleted:
            raise NotFound(self.entity_name, self.id)

    class Deleted(Aggregate.Event):
        def apply(self, aggregate: TenantAggregate) -> None:
            aggregate.deleted = True

    def delete(self) -> None:
        # `type(self).Deleted` is the subclass's own copy (e.g. `Client.Deleted`), so each resource's deletion
        # has its own topic that only the projections of that resource subscribe to.
        self.trigger_event(type(self).Deleted)


def apply_changes(target: Any, changes: dict[str, Any], allowed: frozenset[str]) -> None:
    """Copy a partial update onto an aggregate; refusing unknown keys keeps events honest."""
    unknown = set(changes) - allowed
    if unknown:
        raise DomainError(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    for key, value in changes.items():
        setattr(target, key, value)
