"""The services/products catalog and its categories: the `crm_services_*` tools."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.toolset import Toolset
from application.money import AmountArg, Money, money
from application.values import decimal_range
from application.organization import org_settings
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, Page, Query, Removed, SearchText, sent
from domain.errors import NotFound
from domain.money import decimal_in, to_cents
from domain.services import CatalogService, ServiceCategory
from projections import deals as deals_q
from projections import services as services_q

ServiceId = Annotated[UUID, Meta(description="From crm_services_search or _list.")]
CategoryId = Annotated[UUID, Meta(description="From crm_services_list_categories.")]
ServiceName = Annotated[str, Meta(min_length=1, max_length=200)]
Code = Annotated[str, Meta(min_length=1, max_length=60, description="SKU, e.g. 'WEB-01'.")]
VatRate = Annotated[Decimal, Meta(description="Percent, e.g. \"22\".",
                                  **decimal_range(0, 100))]
Unit = Annotated[str, Meta(min_length=1, max_length=30, description="Unit of sale, e.g. 'hour', 'piece', 'month'.")]


class ServiceOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    code: str | None = None
    description: str | None = None
    unit_price: Money
    vat_rate: Decimal
    unit: str | None = None
    category_id: UUID | None = None
    category_name: str | None = None
    active: bool
    created_at: datetime
    updated_at: datetime


class CategoryOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    description: str | None = None
    services_count: int
    created_at: datetime


class CategoryList(Struct, kw_only=True, omit_defaults=True):
    items: list[CategoryOut]


class ServiceSearchResult(Struct, kw_only=True, omit_defaults=True):
    items: list[ServiceOut]


def _service_out(row: dict[str, Any], currency: str) -> ServiceOut:
    row = dict(row)
    row["unit_price"] = money(row.pop("unit_price_cents"), currency)
    row.pop("score", None)
    return msgspec.convert(row, ServiceOut)


def present_service(ctx: QueryContext, service_id: UUID) -> ServiceOut:
    return _service_out(services_q.get_service(ctx.conn, ctx.org_id, service_id),
                        org_settings(ctx.conn, ctx.org_id)["currency"])


def present_category(ctx: QueryContext, category_id: UUID) -> CategoryOut:
    for c in services_q.list_categories(ctx.conn, ctx.org_id):
        if c["id"] == category_id:
            return msgspec.convert(c, CategoryOut)
    raise NotFound("category", category_id, field="category_id")


def _ensure_category(uow: UnitOfWork, category_id: UUID | None) -> None:
    if category_id is not None:
        uow.get(ServiceCategory, category_id, field="category_id")  # unchanged, so saving it appends nothing


services = Toolset(
    "services", title="Services catalog", description="Service/product catalog and categories",
    aggregate=CatalogService, id_field="service_id", id_type=ServiceId, output=ServiceOut, present=present_service,
    subject="a catalog service",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListServices(ListQuery, kw_only=True):
    """The service/product catalog by name. Filter by category and by active (false = archived only)."""

    category_id: UUID | None = None
    active: Annotated[bool | None, Meta(description="true: sellable only; false: archived only; omit: all.")] = None


@services.query("list", output=Page[ServiceOut])
def list_services(q: ListServices, ctx: QueryContext) -> Page[ServiceOut]:
    currency = org_settings(ctx.conn, ctx.org_id)["currency"]
    rows, cursor = services_q.list_services(ctx.conn, ctx.org_id, category_id=q.category_id, active=q.active,
                                            limit=q.limit, cursor=q.cursor)
    return Page(items=[_service_out(r, currency) for r in rows], next_cursor=cursor)


class GetService(Query, kw_only=True):
    """One catalog service with price, VAT rate, unit and category."""

    service_id: ServiceId


@services.query("get", output=ServiceOut)
def get_service(q: GetService, ctx: QueryContext) -> ServiceOut:
    return present_service(ctx, q.service_id)


class SearchServices(Query, kw_only=True):
    """Search the catalog by name (typo-tolerant) or code: the service_id for crm_deals_add_service."""

    q: SearchText
    active: Annotated[bool | None, Meta(description="true: sellable only (default); omit or false to include archived.")] = True
    limit: Annotated[int, Meta(ge=1, le=100)] = 25


@services.query("search", output=ServiceSearchResult)
def search_services(q: SearchServices, ctx: QueryContext) -> ServiceSearchResult:
    currency = org_settings(ctx.conn, ctx.org_id)["currency"]
    rows = services_q.search_services(ctx.conn, ctx.org_id, q.q, q.active, q.limit)
    return ServiceSearchResult(items=[_service_out(r, currency) for r in rows])


class ListCategories(Query, kw_only=True):
    """The catalog's categories with how many services each holds."""


@services.query("list_categories", output=CategoryList)
def list_categories(q: ListCategories, ctx: QueryContext) -> CategoryList:
    return CategoryList(items=[msgspec.convert(r, CategoryOut) for r in services_q.list_categories(ctx.conn, ctx.org_id)])


# -- commands --------------------------------------------------------------------------------------------
class CreateService(Command, kw_only=True):
    """Create a catalog service/product: name, unit price (organization's currency), VAT rate, unit, optional code and
    category; its id goes to crm_deals_add_service."""

    name: ServiceName
    unit_price: AmountArg
    vat_rate: VatRate = Decimal(0)
    unit: Unit | None = None
    code: Code | None = None
    description: Annotated[str, Meta(max_length=5000)] | None = None
    category_id: Annotated[UUID | None, Meta(description="Category id (crm_services_list_categories).")] = None


def _vat(v: Decimal) -> str:
    return str(decimal_in(v, field="vat_rate", low=Decimal(0), high=Decimal(100)))


@services.command("create", output=ServiceOut, returns=UUID, present=present_service)
def create_service(cmd: CreateService, uow: UnitOfWork) -> UUID:
    _ensure_category(uow, cmd.category_id)
    fields = {"name": cmd.name, "code": cmd.code, "description": cmd.description, "unit": cmd.unit,
              "unit_price_cents": to_cents(cmd.unit_price, field="unit_price"), "vat_rate": _vat(cmd.vat_rate),
              "category_id": cmd.category_id}
    service = CatalogService(org_id=uow.org_id, fields=fields)
    uow.add(service)
    return service.id


class UpdateService(Command, kw_only=True):
    """Change a catalog service; deals that have it keep their price."""

    service_id: ServiceId
    name: ServiceName | UnsetType = UNSET
    unit_price: AmountArg | UnsetType = UNSET
    vat_rate: VatRate | UnsetType = UNSET
    unit: Unit | None | UnsetType = UNSET
    code: Code | None | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=5000)] | None | UnsetType = UNSET
    category_id: UUID | None | UnsetType = UNSET


def _update_service(s: CatalogService, cmd: UpdateService, uow: UnitOfWork) -> None:
    changes: dict[str, Any] = sent(cmd, ("name", "unit", "code", "description"))
    if cmd.unit_price is not UNSET:
        changes["unit_price_cents"] = to_cents(cmd.unit_price, field="unit_price")
    if cmd.vat_rate is not UNSET:
        changes["vat_rate"] = _vat(cmd.vat_rate)
    if cmd.category_id is not UNSET:
        _ensure_category(uow, cmd.category_id)
        changes["category_id"] = cmd.category_id
    s.update(changes)


services.act("update", UpdateService, _update_service, presents_entity=True)


class ArchiveService(Command, kw_only=True):
    """Archive a service: no longer addable to deals, but it stays, with its price, on existing ones."""

    service_id: ServiceId


services.act("archive", ArchiveService, lambda s, cmd, uow: s.archive(), destructive=True, presents_entity=True)


class DeleteService(Command, kw_only=True):
    """Delete a catalog service no deal uses (archive it otherwise)."""

    service_id: ServiceId


services.delete(DeleteService, act=lambda service, cmd, uow: service.delete_unused(
    deals_q.count_using_service(uow.conn, uow.org_id, service.id)))


class CreateCategory(Command, kw_only=True):
    """Create a catalog category, e.g. 'Consulting' or 'Hardware'."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]
    description: Annotated[str, Meta(max_length=2000)] | None = None


@services.command("create_category", output=CategoryOut, returns=UUID, present=present_category)
def create_category(cmd: CreateCategory, uow: UnitOfWork) -> UUID:
    category = ServiceCategory(org_id=uow.org_id, name=cmd.name, description=cmd.description)
    uow.add(category)
    return category.id


class DeleteCategory(Command, kw_only=True):
    """Delete an empty catalog category."""

    category_id: CategoryId


@services.command("delete_category", output=Removed, destructive=True)
def delete_category(cmd: DeleteCategory, uow: UnitOfWork) -> Removed:
    category = uow.get(ServiceCategory, cmd.category_id, field="category_id")
    category.delete_empty(services_q.count_in_category(uow.conn, uow.org_id, category.id))
    return Removed(id=cmd.category_id, entity="category")
