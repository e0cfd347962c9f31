"""Shapes many aggregates share, written once: partial updates, tags and assignment to a user.

Events are declared as nested classes and triggered through `type(self)`, so each aggregate gets its own
copy and topic (`Client.Tagged`, `Task.Tagged`): projections subscribe to exactly their resource's events.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.base import TenantAggregate, apply_changes
from domain.errors import NotFound


class Editable(TenantAggregate):
    """Partial updates: only fields that really change are recorded, and only `editable_fields` may change.
    Aggregates with extra rules override `check_changes`."""

    editable_fields: ClassVar[frozenset[str]] = frozenset()

    class Updated(Aggregate.Event):
        changes: dict[str, Any]

        def apply(self, aggregate: Editable) -> None:
            apply_changes(aggregate, self.changes, type(aggregate).editable_fields)

    def check_changes(self, changes: dict[str, Any]) -> None:
        """Invariants of a change, checked before anything is recorded."""

    def update(self, changes: dict[str, Any]) -> None:
        self.check_changes(changes)
        changed = {k: v for k, v in changes.items() if getattr(self, k, None) != v}
        if changed:
            self.trigger_event(type(self).Updated, changes=changed)


class TagNotFound(NotFound):
    def __init__(self, tag: str) -> None:
        super().__init__("tag", repr(tag), field="tag")


class Taggable(TenantAggregate):
    """Tags: adding one twice changes nothing; removing a missing one is an error."""

    class Tagged(Aggregate.Event):
        tag: str

        def apply(self, aggregate: Taggable) -> None:
            aggregate.tags = [*aggregate.tags, self.tag]

    class Untagged(Aggregate.Event):
        tag: str

        def apply(self, aggregate: Taggable) -> None:
            aggregate.tags = [t for t in aggregate.tags if t != self.tag]

    def add_tag(self, tag: str) -> None:
        if tag not in self.tags:
            self.trigger_event(type(self).Tagged, tag=tag)

    def remove_tag(self, tag: str) -> None:
        if tag not in self.tags:
            raise TagNotFound(tag)
        self.trigger_event(type(self).Untagged, tag=tag)


class Assignable(TenantAggregate):
    """Assignment to one user; `assignee_field` names the attribute (assigned_to, assignee_id, owner_id)."""

    assignee_field: ClassVar[str] = "assigned_to"

    class Assigned(Aggregate.Event):
        user_id: UUID

        def apply(self, aggregate: Assignable) -> None:
            setattr(aggregate, type(aggregate).assignee_field, self.user_id)

    class Unassigned(Aggregate.Event):
        def apply(self, aggregate: Assignable) -> None:
            setattr(aggregate, type(aggregate).assignee_field, None)

    @property
    def assignee(self) -> UUID | None:
        return getattr(self, type(self).assignee_field)

    def assign(self, user_id: UUID) -> None:
        if user_id != self.assignee:
            self.trigger_event(type(self).Assigned, user_id=user_id)

    def unassign(self) -> None:
        if self.assignee is not None:
            self.trigger_event(type(self).Unassigned)


class Category(TenantAggregate):
    """A named group of one resource's entities (catalog services, wiki pages). Each resource subclasses it, so
    its events keep the subclass's own topic (`ServiceCategory.Created`, `WikiCategory.Created`)."""

    @event("Created")
    def __init__(self, org_id: UUID, name: str, description: str | None) -> None:
        self.org_id = org_id
        self.name = name
        self.description = description
        self.deleted = False
