"""The services/products catalog and its categories.

An archived service cannot be added to new deals but stays, with its name and price, on the deals that
already have it. A service used by a deal cannot be deleted and a category with services cannot be
deleted: the caller passes the usage counts (from the read model) because the aggregate does not hold them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import apply_changes
from domain.shared import Category, Editable
from domain.errors import Conflict, DomainError

SERVICE_FIELDS = frozenset({"name", "code", "description", "unit_price_cents", "vat_rate", "unit", "category_id"})


class ServiceInUse(Conflict):
    code = "service_in_use"


class ServiceArchived(DomainError):
    code = "service_archived"


class CategoryNotEmpty(Conflict):
    code = "category_not_empty"


class CatalogService(Editable):
    """A sellable service or product (named CatalogService to avoid confusion with the application Service)."""

    entity_name = "service"
    editable_fields = SERVICE_FIELDS

    @event("Created")
    def __init__(self, org_id: UUID, fields: dict[str, Any]) -> None:
        self.org_id = org_id
        self.name = ""
        self.code = self.description = self.unit = self.category_id = None
        self.unit_price_cents = 0
        self.vat_rate = "0"
        apply_changes(self, fields, SERVICE_FIELDS)
        self.archived = False
        self.deleted = False



    def archive(self) -> None:
        if not self.archived:
            self._archived()

    @event("Archived")
    def _archived(self) -> None:
        self.archived = True

    def ensure_sellable(self) -> None:
        if self.archived:
            raise ServiceArchived("this service is archived and cannot be added to deals", field="service_id")

    def delete_unused(self, deals_using: int) -> None:
        if deals_using:
            raise ServiceInUse(
                f"the service is used by {deals_using} deal(s); archive it instead (crm_services_archive)",
                field="service_id",
            )
        self.delete()


class ServiceCategory(Category):
    entity_name = "category"

    def delete_empty(self, services_in_category: int) -> None:
        if services_in_category:
            raise CategoryNotEmpty(
                f"the category still has {services_in_category} service(s); move or delete them first",
                field="category_id",
            )
        self.delete()
