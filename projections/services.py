"""Services catalog read model (services, service_categories) and its queries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.services import CatalogService, ServiceCategory
from projections.base import Projection, exists, handles, set_columns, touch
from projections.pagination import Sort, paginate

SERVICE_COLUMNS = (
    "s.id, s.name, s.code, s.description, s.unit_price_cents, s.vat_rate, s.unit, s.category_id,"
    " c.name AS category_name, s.active, s.created_at, s.updated_at"
)
SERVICE_FROM = " FROM services s LEFT JOIN service_categories c ON c.id = s.category_id"


class ServicesProjection(Projection):
    name = "services"
    tables = ("service_categories", "services")
    resources = ("services",)

    @handles(CatalogService.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "INSERT INTO services (id, organization_id, name, code, description, unit_price_cents, vat_rate, unit,"
            " category_id, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, f["name"], f.get("code"), f.get("description"), f.get("unit_price_cents", 0),
             f.get("vat_rate") or 0, f.get("unit"), f.get("category_id"), e.timestamp, e.timestamp),
        )

    @handles(CatalogService.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        set_columns(cur, "services", e, dict(e.changes))

    @handles(CatalogService.Archived)
    def archived(self, cur: Any, e: Any) -> None:
        touch(cur, "services", e, "active = false")

    @handles(CatalogService.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM services WHERE id = %s", (e.originator_id,))

    @handles(ServiceCategory.Created)
    def category_created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO service_categories (id, organization_id, name, description, created_at) VALUES (%s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.name, e.description, e.timestamp),
        )

    @handles(ServiceCategory.Deleted)
    def category_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM service_categories WHERE id = %s", (e.originator_id,))


def get_service(conn: Any, org_id: UUID, service_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {SERVICE_COLUMNS}{SERVICE_FROM} WHERE s.organization_id = %s AND s.id = %s",
                       (org_id, service_id)).fetchone()
    if row is None:
        raise NotFound("service", service_id, field="service_id")
    return row


def list_services(conn: Any, org_id: UUID, *, category_id: UUID | None, active: bool | None, limit: int,
                  cursor: str | None):
    where = ["s.organization_id = %s"]
    params: list[Any] = [org_id]
    if category_id is not None:
        where.append("s.category_id = %s")
        params.append(category_id)
    if active is not None:
        where.append("s.active = %s")
        params.append(active)
    inner = f"SELECT {SERVICE_COLUMNS}{SERVICE_FROM} WHERE " + " AND ".join(where)
    return paginate(conn, "*", f"FROM ({inner}) s WHERE true", params, Sort("lower(name)", "text"), limit, cursor)


def search_services(conn: Any, org_id: UUID, text: str, active: bool | None, limit: int) -> list[dict[str, Any]]:
    return conn.execute(
        f"""
        WITH q AS (SELECT lower(f_unaccent(%(q)s)) AS q)
        SELECT {SERVICE_COLUMNS},
               round(greatest(word_similarity(q.q, lower(f_unaccent(s.name))),
                              CASE WHEN lower(s.code) = q.q THEN 2 ELSE 0 END)::numeric, 4)::float AS score
        {SERVICE_FROM}, q
        WHERE s.organization_id = %(org)s AND (%(active)s::boolean IS NULL OR s.active = %(active)s)
          AND (q.q <%% lower(f_unaccent(s.name)) OR lower(coalesce(s.code, '')) LIKE q.q || '%%'
               OR lower(f_unaccent(s.name)) LIKE '%%' || q.q || '%%')
        ORDER BY score DESC, lower(s.name), s.id LIMIT %(limit)s
        """,
        {"org": org_id, "q": text, "active": active, "limit": limit},
    ).fetchall()


def list_categories(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT c.id, c.name, c.description, c.created_at,"
        " (SELECT count(*) FROM services s WHERE s.category_id = c.id) AS services_count"
        " FROM service_categories c WHERE c.organization_id = %s ORDER BY lower(c.name), c.id",
        (org_id,),
    ).fetchall()


def category_exists(conn: Any, org_id: UUID, category_id: UUID) -> bool:
    return exists(conn, "service_categories", org_id, category_id)


def count_in_category(conn: Any, org_id: UUID, category_id: UUID) -> int:
    return conn.execute("SELECT count(*) AS n FROM services WHERE organization_id = %s AND category_id = %s",
                        (org_id, category_id)).fetchone()["n"]
