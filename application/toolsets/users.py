"""Users of the organization: the `crm_users_*` tools (read-only; users are managed in settings)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application import permissions
from application.toolset import Toolset
from application.runner import QueryContext
from application.shapes import ListQuery, Page, Query
from domain.errors import NotFound
from projections.pagination import Sort, paginate

users = Toolset("users", title="Users", description="Organization users; resolve \"Mario Rossi\" to a user_id; who am I "
                                                 "and my permissions")


USER_SELECT = "u.id, u.email, u.name, r.name AS role, u.status, u.created_at"


class UserOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    email: str
    role: str
    status: Literal["active", "invited", "inactive"]
    created_at: datetime


class UserDetail(UserOut, kw_only=True, omit_defaults=True):
    permissions: Annotated[list[str], Meta(description="What the user's role allows, e.g. 'clients:write'.")]


class OrganizationOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    currency: str
    timezone: str
    locale: str


class Calendar(Struct, kw_only=True, omit_defaults=True):
    """The organization's calendar now: what 'today', 'this week' and 'this month' mean to its people."""

    timezone: str
    today: date
    now: datetime
    week_start: date
    week_end: date
    month_start: date
    month_end: date


class Me(Struct, kw_only=True, omit_defaults=True):
    user: UserOut
    organization: OrganizationOut
    auth: Literal["api_token", "oauth"]
    permissions: list[str]
    """Effective permissions of this call: the role's grants within the token's."""
    calendar: Calendar


class ListUsers(ListQuery, kw_only=True):
    """The organization's users, searchable by name or e-mail (typo-tolerant): turns a person's name, e.g. 'Mario
    Rossi', into the user_id other tools expect."""

    q: Annotated[str, Meta(min_length=1, max_length=200, description="Part of a name or e-mail.")] | None = None
    role: Annotated[str, Meta(max_length=60)] | None = None
    status: Literal["active", "invited", "inactive"] | None = None


@users.query("list", output=Page[UserOut])
def list_users(q: ListUsers, ctx: QueryContext) -> Page[UserOut]:
    where = "FROM users u JOIN roles r ON r.id = u.role_id WHERE u.organization_id = %s"
    params: list[object] = [ctx.org_id]
    if q.q:
        where += (" AND (lower(f_unaccent(u.name)) LIKE '%%' || lower(f_unaccent(%s)) || '%%'"
                  " OR lower(u.email) LIKE '%%' || lower(%s) || '%%'"
                  " OR word_similarity(lower(f_unaccent(%s)), lower(f_unaccent(u.name))) >= 0.5)")
        params += [q.q, q.q, q.q]
    if q.role:
        where += " AND r.name = %s"
        params.append(q.role)
    if q.status:
        where += " AND u.status = %s"
        params.append(q.status)
    rows, cursor = paginate(ctx.conn, USER_SELECT, where, params,
                            Sort("lower(u.name)", "text", row_id="u.id"), q.limit, q.cursor)
    return Page(items=[msgspec.convert(r, UserOut) for r in rows], next_cursor=cursor)


def _user_row(ctx: QueryContext, user_id: UUID) -> dict:
    row = ctx.conn.execute(
        f"SELECT {USER_SELECT}, r.grants FROM users u JOIN roles r ON r.id = u.role_id"
        " WHERE u.organization_id = %s AND u.id = %s",
        (ctx.org_id, user_id),
    ).fetchone()
    if row is None:
        raise NotFound("user", user_id, field="user_id")
    return row


class GetUser(Query, kw_only=True):
    """One user of the organization with role, status and what the role allows."""

    user_id: Annotated[UUID, Meta(description="From crm_users_list.")]


@users.query("get", output=UserDetail)
def get_user(q: GetUser, ctx: QueryContext) -> UserDetail:
    row = _user_row(ctx, q.user_id)
    return msgspec.convert({**row, "permissions": permissions.as_listing(row["grants"])}, UserDetail)


class WhoAmI(Query, kw_only=True):
    """Who and where this connection is: user, role, effective permissions (why a tool is refused), the organization's
    currency, timezone, today's date and this week's and month's bounds. Any token may call it."""


@users.query("me", output=Me, free=True)
def me(q: WhoAmI, ctx: QueryContext) -> Me:
    user = _user_row(ctx, ctx.principal.user_id)
    org = ctx.conn.execute(
        "SELECT id, name, currency, timezone, locale FROM organizations WHERE id = %s", (ctx.org_id,)
    ).fetchone()
    now = datetime.now(ZoneInfo(org["timezone"]))
    today = now.date()
    week_start = today - timedelta(days=today.weekday())
    month_end = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return Me(
        user=msgspec.convert(user, UserOut),
        organization=msgspec.convert(org, OrganizationOut),
        auth="oauth" if ctx.principal.oauth_client_id else "api_token",
        permissions=permissions.as_listing(ctx.principal.grants),
        calendar=Calendar(timezone=org["timezone"], today=today, now=now.replace(microsecond=0),
                          week_start=week_start, week_end=week_start + timedelta(days=6),
                          month_start=today.replace(day=1), month_end=month_end),
    )
