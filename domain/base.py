"""What every aggregate of the CRM shares: it belongs to one organization and can be deleted.

Aggregates follow the eventsourcing library's style: a method checks invariants, then a private method
decorated with `@event` records the change. Nothing here performs I/O.
"""

from __future__ import annotations

import copy
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

    class Reinstated(Aggregate.Event):
        """The entity brought back as it was at `to_version` (undeleted, or an earlier version of it), by the audit
        tools. History is never rewritten: this compensating event carries that version's state, and read models
        replay the entity's own events up to `to_version` (projections.projector.reinstate_entity). Named apart
        from the `Restored` events some resources already have (a wiki revision, an invoice back upstream)."""

        to_version: int
        state: dict[str, Any]

        def apply(self, aggregate: TenantAggregate) -> None:
            for name in [n for n in vars(aggregate) if not n.startswith("_")]:
                delattr(aggregate, name)
            for name, value in copy.deepcopy(self.state).items():
                setattr(aggregate, name, value)

    def reinstate(self, to_version: int, state: dict[str, Any]) -> None:
        """Back to the state it had at `to_version` (`public_state` of that version), undeleted."""
        if not 1 <= to_version < self.version:
            raise DomainError(f"to_version must be between 1 and {self.version - 1}", field="to_version")
        if state.get("deleted"):
            raise DomainError(f"version {to_version} is the entity deleted; choose an earlier version",
                              field="to_version")
        self.trigger_event(type(self).Reinstated, to_version=to_version, state=state)


def public_state(aggregate: Any) -> dict[str, Any]:
    """An aggregate's own attributes (not the library's `_id`, `_version`, ...): what a version of it holds."""
    return {name: value for name, value in vars(aggregate).items() if not name.startswith("_")}


def apply_changes(target: Any, changes: dict[str, Any], allowed: frozenset[str]) -> None:
    """Copy a partial update onto an aggregate; refusing unknown keys keeps events honest."""
    unknown = set(changes) - allowed
    if unknown:
        raise DomainError(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    for key, value in changes.items():
        setattr(target, key, value)
