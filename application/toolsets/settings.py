"""Organization settings: the `crm_settings_*` tools (profile, users, roles, templates, custom fields, API tokens).

Profile, users, roles and API tokens are the auth tables: each change runs in `admin_transaction`, which logs it
in `settings_changes` (who, when, field-level before/after without secrets) in the same transaction. Templates and
custom fields are aggregates (domain/templates.py, domain/custom_fields.py): their events say who and when.

Permissions: everything here is the `settings` resource, including the list of users with their roles (the
administrator's view; `crm_users_*` is everyone's directory). Deleting a custom field hides its values on clients,
deals, tasks and projects, so that tool also needs write on those.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from psycopg.types.json import Jsonb

from application import identity, invites
from application import secrets as sealed
from application import whatsapp_cloud
from application.logsafe import describe
from application.mail import MailError, SmtpSettings
from application.permissions import RESOURCES
from application.runner import QueryContext, UnitOfWork
from application.settings_changes import admin_transaction
from application.shapes import Command, Email, ListQuery, Page, Query, Removed, sent
from application.toolset import Toolset
from domain import settings as rules
from domain.custom_fields import ENTITY_TYPES, FIELD_TYPES, KEY_PATTERN, CustomField, KeyTaken, check_definition, field_id
from domain.errors import DomainError, NotFound
from domain.templates import ENTITIES, KINDS, TEMPLATE_FIELDS, WHATSAPP_CATEGORIES, Template, allowed_placeholders
from projections import settings as settings_q
from projections.pagination import Sort, paginate

log = logging.getLogger("flusia.settings")
FATTUREINCLOUD = "fattureincloud"

settings = Toolset(
    "settings", title="Settings",
    description="Organization profile and preferences, users and invitations, roles and permissions, e-mail/WhatsApp/"
                "quote/checklist templates, custom fields, API tokens",
)

Action = Literal["read", "write", "delete"]
Actions = Annotated[list[Action], Meta(max_length=3)]
Permissions = msgspec.defstruct(
    "Permissions", [(r, Actions | None, None) for r in RESOURCES], kw_only=True, forbid_unknown_fields=True,
    omit_defaults=True, module=__name__,
    namespace={"__doc__": "Per resource, the allowed actions, e.g. {\"clients\": [\"read\", \"write\"], "
                          "\"deals\": [\"read\"]}; a resource left out is not allowed."})
UserId = Annotated[UUID, Meta(description="A user id (from crm_settings_list_users).")]
RoleId = Annotated[UUID, Meta(description="A role id (from crm_settings_list_roles).")]
TemplateId = Annotated[UUID, Meta(description="A template id (from crm_settings_list_templates).")]
FieldId = Annotated[UUID, Meta(description="A custom field id (from crm_settings_list_custom_fields).")]
TokenId = Annotated[UUID, Meta(description="An API token id (from crm_settings_list_api_tokens).")]
PersonName = Annotated[str, Meta(min_length=1, max_length=200, description="Full name, e.g. 'Mario Rossi'.")]
RoleName = Annotated[str, Meta(min_length=1, max_length=60, description=(
    "A role: admin, sales, viewer or a custom role's name (crm_settings_list_roles)."))]
Url = Annotated[str, Meta(max_length=2000, pattern=r"^https?://\S+$", description="An http(s) URL.")]
Status = Literal["invited", "active", "inactive"]


def _grants(permissions: Any) -> dict[str, str]:
    return rules.grants_from({r: getattr(permissions, r) for r in RESOURCES}, RESOURCES)


def _within_own(uow: UnitOfWork, grants: dict[str, str], *, field: str, what: str) -> None:
    """Nobody hands out permissions they do not have: a role created, changed or given by a caller allows at most
    what the caller may do (an admin may do everything; a token's own grants count)."""
    extra = rules.beyond(grants, uow.principal.grants)
    if extra:
        listed = ", ".join(f"{r}:{a}" for r, a in extra)
        raise DomainError(f"{what} would allow what you may not do yourself: {listed}", field=field)


def _permissions(grants: dict[str, str] | None) -> Any:
    return msgspec.convert(rules.permissions_of(grants, RESOURCES), Permissions)


# == organization ============================================================================================
class OrgAddress(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    street: Annotated[str, Meta(max_length=200, description="Street and number, e.g. 'Via Roma 10'.")] | None = None
    city: Annotated[str, Meta(max_length=100)] | None = None
    postal_code: Annotated[str, Meta(max_length=20)] | None = None
    province: Annotated[str, Meta(max_length=60)] | None = None
    country: Annotated[str, Meta(max_length=60)] | None = None


class ConnectionOut(Struct, kw_only=True, omit_defaults=True):
    configured: bool
    company_id: int | None = None
    updated_at: datetime | None = None


class OrganizationOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    vat_number: str | None = None
    address: OrgAddress | None = None
    currency: str
    timezone: str
    locale: str
    logo_url: str | None = None
    today: Annotated[date, Meta(description="Today in the organization's time zone: what due dates are compared with.")]
    local_time: Annotated[datetime, Meta(description="Now, in the organization's time zone.")]
    fattureincloud: Annotated[ConnectionOut, Meta(description="The FattureInCloud connection; the access token is never shown.")]
    whatsapp: Annotated[whatsapp_cloud.WhatsappConnectionOut, Meta(description="The WhatsApp Cloud API connection; secrets are never shown.")]
    created_at: datetime
    updated_at: datetime | None = None


def present_organization(ctx: QueryContext, _: Any = None) -> OrganizationOut:
    row = ctx.conn.execute(
        "SELECT id, name, vat_number, address, currency, timezone, locale, logo_url, created_at, updated_at"
        " FROM organizations WHERE id = %s", (ctx.org_id,)).fetchone()
    conn_row = ctx.conn.execute(
        "SELECT settings, secret IS NOT NULL AS has_secret, updated_at FROM organization_connections"
        " WHERE organization_id = %s AND provider = %s", (ctx.org_id, FATTUREINCLOUD)).fetchone()
    now = datetime.now(ZoneInfo(row["timezone"]))
    fic = ConnectionOut(configured=False)
    if conn_row is not None:
        fic = ConnectionOut(configured=bool(conn_row["has_secret"]), company_id=conn_row["settings"].get("company_id"),
                            updated_at=conn_row["updated_at"])
    return msgspec.convert({**row, "today": now.date(), "local_time": now.replace(microsecond=0),
                            "fattureincloud": msgspec.to_builtins(fic),
                            "whatsapp": msgspec.to_builtins(whatsapp_cloud.present(ctx.conn, ctx.org_id))}, OrganizationOut)


class GetOrganization(Query, kw_only=True):
    """The organization's profile and preferences: name, VAT number, address, currency, time zone (what 'today'
    means for due dates), locale, logo, and whether FattureInCloud is connected."""


@settings.query("get_organization", output=OrganizationOut)
def get_organization(q: GetOrganization, ctx: QueryContext) -> OrganizationOut:
    return present_organization(ctx)


class FattureInCloudArg(Struct, kw_only=True, forbid_unknown_fields=True):
    company_id: Annotated[int, Meta(ge=1, le=2**53, description="The FattureInCloud company id (GET /user/companies).")]
    access_token: Annotated[str, Meta(min_length=8, max_length=4000, pattern=r"^\S+$", description=(
        "A FattureInCloud access token with issued_documents:r; stored encrypted, never shown again. Omit to keep "
        "the current one."))] | None = None


ORG_FIELDS = ("name", "vat_number", "address", "currency", "timezone", "locale", "logo_url")


class UpdateOrganization(Command, kw_only=True):
    """Change the organization's profile or preferences; only what you send changes. The time zone decides what
    'today' and 'overdue' mean from the next call on. fattureincloud connects invoices, whatsapp the WhatsApp Cloud
    API (null disconnects)."""

    name: Annotated[str, Meta(min_length=1, max_length=200)] | UnsetType = UNSET
    vat_number: Annotated[str, Meta(min_length=2, max_length=30, pattern=r"^[A-Za-z0-9 .\-]+$")] | None | UnsetType = UNSET
    address: OrgAddress | None | UnsetType = UNSET
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description=(
        "ISO 4217 code, e.g. EUR. Amounts already recorded are not converted."))] | UnsetType = UNSET
    timezone: Annotated[str, Meta(min_length=1, max_length=64, description="IANA time zone, e.g. 'Europe/Rome'.")] | UnsetType = UNSET
    locale: Annotated[str, Meta(pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$", description="e.g. 'it-IT'.")] | UnsetType = UNSET
    logo_url: Url | None | UnsetType = UNSET
    fattureincloud: FattureInCloudArg | None | UnsetType = UNSET
    whatsapp: whatsapp_cloud.WhatsappArg | None | UnsetType = UNSET


def _connect_fattureincloud(tx: Any, arg: FattureInCloudArg | None) -> None:
    current = tx.conn.execute(
        "SELECT settings, secret FROM organization_connections WHERE organization_id = %s AND provider = %s FOR UPDATE",
        (tx.org_id, FATTUREINCLOUD)).fetchone()
    before_company = current["settings"].get("company_id") if current else None
    if arg is None:
        if current is not None:
            tx.conn.execute("DELETE FROM organization_connections WHERE organization_id = %s AND provider = %s",
                            (tx.org_id, FATTUREINCLOUD))
            tx.record("connection", FATTUREINCLOUD, "disconnected", {
                "company_id": {"before": before_company, "after": None},
                "access_token": {"before": "(set)" if current["secret"] else None, "after": None}})
        return
    if arg.access_token is None and (current is None or not current["secret"]):
        raise DomainError("give the access_token the first time FattureInCloud is connected",
                          field="fattureincloud.access_token")
    secret = current["secret"] if arg.access_token is None else sealed.encrypt(
        sealed.server_key(tx.conn), arg.access_token, context=sealed.context_for(tx.org_id, FATTUREINCLOUD))
    tx.conn.execute(
        "INSERT INTO organization_connections (organization_id, provider, settings, secret, updated_at, updated_by)"
        " VALUES (%s, %s, %s, %s, now(), %s) ON CONFLICT (organization_id, provider) DO UPDATE SET"
        " settings = EXCLUDED.settings, secret = EXCLUDED.secret, updated_at = now(), updated_by = EXCLUDED.updated_by",
        (tx.org_id, FATTUREINCLOUD, Jsonb({"company_id": arg.company_id}), secret, tx.uow.principal.user_id))
    changes = rules.diff({"company_id": before_company}, {"company_id": arg.company_id})
    if arg.access_token is not None:
        changes["access_token"] = {"before": "(set)" if current and current["secret"] else None, "after": "(set)"}
    if changes:
        tx.record("connection", FATTUREINCLOUD, "connected" if current is None else "updated", changes)


@settings.command("update_organization", output=OrganizationOut, returns=bool, present=present_organization)
def update_organization(cmd: UpdateOrganization, uow: UnitOfWork) -> bool:
    changes = sent(cmd, ORG_FIELDS)
    if "timezone" in changes:
        rules.check_timezone(changes["timezone"])
    if "currency" in changes:
        rules.check_currency(changes["currency"])
    with admin_transaction(uow, "crm_settings_update_organization", cmd) as tx:
        current = tx.conn.execute(f"SELECT {', '.join(ORG_FIELDS)} FROM organizations WHERE id = %s",
                                  (uow.org_id,)).fetchone()
        if "timezone" in changes:  # lists compute local days in SQL: PostgreSQL must know the zone too
            known = tx.conn.execute("SELECT count(*) AS n FROM pg_timezone_names WHERE name = %s",
                                    (changes["timezone"],)).fetchone()
            if not (known["n"] if isinstance(known, dict) else known[0]):
                raise DomainError(f"time zone {changes['timezone']!r} is not known to this database; use another IANA "
                                  "name (e.g. Europe/Rome, America/New_York, UTC)", field="timezone")
        diff = rules.diff(current, changes)
        if diff:
            sets = ", ".join(f"{k} = %s" for k in diff)
            tx.conn.execute(f"UPDATE organizations SET {sets}, updated_at = now() WHERE id = %s",  # noqa: S608
                            (*(Jsonb(changes[k]) if k == "address" and changes[k] is not None else changes[k]
                               for k in diff), uow.org_id))
            tx.record("organization", uow.org_id, "updated", diff)
        if cmd.fattureincloud is not UNSET:
            _connect_fattureincloud(tx, cmd.fattureincloud)
        if cmd.whatsapp is not UNSET:
            whatsapp_cloud.connect(tx, cmd.whatsapp)
        tx.returned.append(True)
    return True


# == users ===================================================================================================
USER_SELECT = ("u.id, u.name, u.email, r.name AS role, u.role_id, u.status, u.created_at, u.updated_at,"
               " (SELECT max(i.expires_at) FROM user_invites i WHERE i.user_id = u.id AND i.used_at IS NULL"
               "   AND i.revoked_at IS NULL AND i.expires_at > now()) AS invite_expires_at")
USER_FROM = "FROM users u JOIN roles r ON r.id = u.role_id WHERE u.organization_id = %s"


class UserOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    email: str
    role: str
    role_id: UUID
    status: Status
    created_at: datetime
    updated_at: datetime | None = None
    invite_expires_at: Annotated[datetime | None, Meta(description="For an invited user: until when the link works.")] = None


def _user(conn: Any, org_id: UUID, user_id: UUID, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(f"SELECT {USER_SELECT}, r.built_in AND r.name = 'admin' AS is_admin {USER_FROM} AND u.id = %s"
                       + (" FOR UPDATE OF u" if lock else ""), (org_id, user_id)).fetchone()
    if row is None:
        raise NotFound("user", user_id, field="user_id")
    return row


def present_user(ctx: QueryContext, user_id: UUID) -> UserOut:
    return msgspec.convert(_user(ctx.conn, ctx.org_id, user_id), UserOut)


class ListUsers(ListQuery, kw_only=True):
    """Users of the organization with their role and status (invited, active, inactive), for administering them;
    to find a user id by name, crm_users_list is enough."""

    q: Annotated[str, Meta(min_length=1, max_length=200, description="Part of a name or e-mail.")] | None = None
    status: Status | None = None
    role: RoleName | None = None


@settings.query("list_users", output=Page[UserOut])
def list_users(q: ListUsers, ctx: QueryContext) -> Page[UserOut]:
    where = USER_FROM
    params: list[Any] = [ctx.org_id]
    if q.q:
        where += (" AND (lower(f_unaccent(u.name)) LIKE '%%' || lower(f_unaccent(%s)) || '%%'"
                  " OR lower(u.email) LIKE '%%' || lower(%s) || '%%')")
        params += [q.q, q.q]
    if q.status:
        where += " AND u.status = %s"
        params.append(q.status)
    if q.role:
        where += " AND lower(r.name) = lower(%s)"
        params.append(q.role)
    rows, cursor = paginate(ctx.conn, USER_SELECT, where, params, Sort("lower(u.name)", "text", row_id="u.id"),
                            q.limit, q.cursor)
    return Page(items=[msgspec.convert(r, UserOut) for r in rows], next_cursor=cursor)


def _role_by_name(conn: Any, org_id: UUID, name: str, *, field: str = "role") -> dict[str, Any]:
    row = conn.execute("SELECT id, name, built_in, grants FROM roles WHERE organization_id = %s AND lower(name) = lower(%s)",
                       (org_id, name.strip())).fetchone()
    if row is None:
        names = [r["name"] for r in conn.execute("SELECT name FROM roles WHERE organization_id = %s ORDER BY name",
                                                  (org_id,)).fetchall()]
        raise DomainError(f"no role named {name!r}; roles: {', '.join(names)}", field=field)
    return row


def _admins_besides(conn: Any, org_id: UUID, user_id: UUID) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM users u JOIN roles r ON r.id = u.role_id WHERE u.organization_id = %s"
        " AND u.id <> %s AND u.status = 'active' AND r.built_in AND r.name = 'admin'", (org_id, user_id)).fetchone()["n"]


class InviteOut(Struct, kw_only=True, omit_defaults=True):
    user: UserOut
    invite_url: Annotated[str, Meta(description="The one-time link to set a password; give it to the user.")]
    expires_at: datetime
    emailed: Annotated[bool, Meta(description="Whether the link was e-mailed to the user (the server's SMTP).")]
    email_note: Annotated[str | None, Meta(description="Why it was not e-mailed.")] = None


class SealedInvite(Struct, kw_only=True):
    """What an invitation call returns to the runner (and stores with its idempotency key): the link sealed with
    the server's key, never in clear in the database; the e-mail's outcome is read from the invitation."""

    user_id: UUID
    invite: Annotated[str, Meta(description="The invitation's digest, hex.")]
    sealed_url: str
    expires_at: datetime


def present_invite(ctx: QueryContext, ref: SealedInvite) -> InviteOut:
    url = sealed.decrypt(sealed.server_key(ctx.conn), ref.sealed_url, context=sealed.context_for(ctx.org_id, "invite"))
    mail = invites.mail_status(ctx.conn, bytes.fromhex(ref.invite)) or {}
    return InviteOut(user=present_user(ctx, ref.user_id), invite_url=url, expires_at=ref.expires_at,
                     emailed=mail.get("emailed_at") is not None, email_note=mail.get("email_note"))


class InviteUser(Command, kw_only=True):
    """Invite someone: creates the user with a role and returns a one-time link (valid 72 h) where they set their
    password; it is also e-mailed when the server has SMTP configured. Inviting an invited user again gives a new
    link."""

    email: Email
    name: PersonName
    role: RoleName


@settings.command("invite_user", output=InviteOut, returns=SealedInvite, present=present_invite)
def invite_user(cmd: InviteUser, uow: UnitOfWork) -> SealedInvite:
    email = cmd.email.strip().lower()
    with admin_transaction(uow, "crm_settings_invite_user", cmd) as tx:
        existing = tx.conn.execute("SELECT id, status FROM users WHERE organization_id = %s AND lower(email) = %s",
                                   (uow.org_id, email)).fetchone()
        if existing is not None and existing["status"] != "invited":
            raise DomainError(f"{email} is already a user of this organization ({existing['status']}); change them "
                              "with crm_settings_update_user", field="email")
        if existing is None:
            role = _role_by_name(tx.conn, uow.org_id, cmd.role)
            _within_own(uow, role["grants"], field="role", what=f"the role {role['name']!r}")
            user_id = identity.create_user(tx.conn, uow.org_id, email, cmd.name, role["name"])
            tx.conn.execute("UPDATE users SET status = 'invited' WHERE id = %s", (user_id,))
            tx.record("user", user_id, "invited", {"email": {"before": None, "after": email},
                                                   "name": {"before": None, "after": cmd.name},
                                                   "role": {"before": None, "after": role["name"]}})
        else:
            user_id = existing["id"]
            tx.record("user", user_id, "invited", {"invitation": {"before": "(replaced)", "after": "(new link)"}})
        secret, expires_at = invites.create(tx.conn, uow.org_id, user_id, uow.principal.user_id)
        names = tx.conn.execute(
            "SELECT (SELECT name FROM organizations WHERE id = %s) AS org, (SELECT name FROM users WHERE id = %s) AS by,"
            " (SELECT name FROM users WHERE id = %s) AS invitee", (uow.org_id, uow.principal.user_id, user_id)).fetchone()
        ref = SealedInvite(user_id=user_id, invite=invites.digest(secret).hex(), expires_at=expires_at,
                           sealed_url=sealed.encrypt(sealed.server_key(tx.conn), invites.link(secret),
                                                     context=sealed.context_for(uow.org_id, "invite")))
        tx.returned.append(ref)
    # Sent once the invitation is committed (a link in an e-mail always works); the outcome is recorded on it.
    note = _send_invite(to=email, user_name=names["invitee"], organization_name=names["org"], url=invites.link(secret),
                        expires_at=expires_at, invited_by=names["by"])
    with uow.pool.connection() as conn:
        invites.mailed(conn, secret, note)
    return ref


def _send_invite(**kw: Any) -> str | None:
    """E-mail the link; None when sent, else why not (a failure changes nothing else: the link works either way)."""
    try:
        smtp = SmtpSettings.from_env()
    except ValueError as e:
        return f"not e-mailed: {e}"
    if smtp is None:
        return "not e-mailed: the server has no SMTP configured (FLUSIA_SMTP_URL)"
    try:
        invites.email(smtp, **kw)
    except MailError as e:
        log.warning("invitation e-mail failed error=%s", describe(e))
        return f"not e-mailed: {e}"
    return None


class UpdateUser(Command, kw_only=True):
    """Change a user's name, role or status; only what you send changes. status 'inactive' deactivates (as
    crm_settings_deactivate_user), 'active' reactivates (their old tokens stay revoked). The last active admin
    cannot be demoted or deactivated."""

    user_id: UserId
    name: PersonName | UnsetType = UNSET
    role: RoleName | UnsetType = UNSET
    status: Literal["active", "inactive"] | UnsetType = UNSET


def _deactivate(tx: Any, user: dict[str, Any]) -> dict[str, int]:
    rules.check_keeps_an_admin(target_is_admin=user["is_admin"] and user["status"] == "active",
                               other_active_admins=_admins_besides(tx.conn, tx.org_id, user["id"]), change="deactivated")
    done = identity.deactivate_user(tx.conn, tx.org_id, user["id"])
    tx.conn.execute("UPDATE users SET updated_at = now() WHERE id = %s", (user["id"],))
    revoked = {**done["revoked"], "invitations": invites.revoke_all(tx.conn, tx.org_id, user["id"])}
    tx.record("user", user["id"], "deactivated", {"status": {"before": user["status"], "after": "inactive"},
                                                  "revoked": {"before": None, "after": revoked}})
    return revoked


@settings.command("update_user", output=UserOut, returns=UUID, present=present_user)
def update_user(cmd: UpdateUser, uow: UnitOfWork) -> UUID:
    with admin_transaction(uow, "crm_settings_update_user", cmd) as tx:
        user = _user(tx.conn, uow.org_id, cmd.user_id, lock=True)
        changes: dict[str, Any] = {}
        if cmd.name is not UNSET and cmd.name != user["name"]:
            tx.conn.execute("UPDATE users SET name = %s, updated_at = now() WHERE id = %s", (cmd.name, user["id"]))
            changes["name"] = {"before": user["name"], "after": cmd.name}
        if cmd.role is not UNSET:
            role = _role_by_name(tx.conn, uow.org_id, cmd.role)
            if role["id"] != user["role_id"]:
                _within_own(uow, role["grants"], field="role", what=f"the role {role['name']!r}")
                rules.check_keeps_an_admin(
                    target_is_admin=user["is_admin"] and user["status"] == "active",
                    other_active_admins=_admins_besides(tx.conn, uow.org_id, user["id"]), change="demoted")
                tx.conn.execute("UPDATE users SET role_id = %s, updated_at = now() WHERE id = %s", (role["id"], user["id"]))
                changes["role"] = {"before": user["role"], "after": role["name"]}
        if changes:
            tx.record("user", user["id"], "updated", changes)
        if cmd.status is not UNSET:
            action = rules.status_change(user["status"], cmd.status)
            if action == "deactivated":
                _deactivate(tx, user)
            elif action == "reactivated":
                tx.conn.execute("UPDATE users SET status = 'active', updated_at = now() WHERE id = %s", (user["id"],))
                tx.record("user", user["id"], "reactivated", {"status": {"before": user["status"], "after": "active"}})
        tx.returned.append(user["id"])
    return cmd.user_id


class DeactivateOut(Struct, kw_only=True):
    user: UserOut
    revoked: Annotated[dict[str, int], Meta(description="How many live credentials were revoked, by kind.")]


class DeactivateUser(Command, kw_only=True):
    """Deactivate a user: their API tokens, OAuth grants and pending invitation stop working at once; their data
    and history stay. Reactivate with crm_settings_update_user (status 'active'). Not the last active admin."""

    user_id: UserId


class Deactivated(Struct, kw_only=True):
    user_id: UUID
    revoked: dict[str, int]


@settings.command("deactivate_user", output=DeactivateOut, returns=Deactivated, destructive=True,
                  present=lambda ctx, r: DeactivateOut(user=present_user(ctx, r.user_id), revoked=r.revoked))
def deactivate_user(cmd: DeactivateUser, uow: UnitOfWork) -> Deactivated:
    with admin_transaction(uow, "crm_settings_deactivate_user", cmd) as tx:
        user = _user(tx.conn, uow.org_id, cmd.user_id, lock=True)
        if user["status"] == "inactive":
            result = Deactivated(user_id=user["id"], revoked={})
        else:
            result = Deactivated(user_id=user["id"], revoked=_deactivate(tx, user))
        tx.returned.append(result)
    return result


# == roles ===================================================================================================
class RoleMember(Struct, kw_only=True):
    id: UUID
    name: str
    status: Status


class RoleOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    built_in: Annotated[bool, Meta(description="admin, sales and viewer: read-only definitions.")]
    description: str | None = None
    permissions: Permissions  # type: ignore[valid-type]
    users_count: int


class RoleDetail(RoleOut, kw_only=True, omit_defaults=True):
    users: list[RoleMember]


class RoleList(Struct, kw_only=True):
    items: list[RoleOut]


ROLE_SELECT = ("r.id, r.name, r.built_in, r.description, r.grants,"
               " (SELECT count(*) FROM users u WHERE u.role_id = r.id)::int AS users_count")


def _role_row(conn: Any, org_id: UUID, role_id: UUID, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(f"SELECT {ROLE_SELECT} FROM roles r WHERE r.organization_id = %s AND r.id = %s"
                       + (" FOR UPDATE" if lock else ""), (org_id, role_id)).fetchone()
    if row is None:
        raise NotFound("role", role_id, field="role_id")
    return row


def _role_out(row: dict[str, Any], cls: type = RoleOut, **extra: Any) -> Any:
    return msgspec.convert({**{k: v for k, v in row.items() if k != "grants"},
                            "permissions": msgspec.to_builtins(_permissions(row["grants"])), **extra}, cls)


def present_role(ctx: QueryContext, role_id: UUID) -> RoleDetail:
    row = _role_row(ctx.conn, ctx.org_id, role_id)
    members = ctx.conn.execute("SELECT id, name, status FROM users WHERE organization_id = %s AND role_id = %s"
                               " ORDER BY lower(name), id LIMIT 500", (ctx.org_id, role_id)).fetchall()
    return _role_out(row, RoleDetail, users=members)


class ListRoles(Query, kw_only=True):
    """Roles with their per-resource read/write/delete permissions and how many users hold each: the built-in
    admin, sales and viewer, then custom roles."""


@settings.query("list_roles", output=RoleList)
def list_roles(q: ListRoles, ctx: QueryContext) -> RoleList:
    rows = ctx.conn.execute(f"SELECT {ROLE_SELECT} FROM roles r WHERE r.organization_id = %s"
                            " ORDER BY NOT r.built_in, lower(r.name)", (ctx.org_id,)).fetchall()
    return RoleList(items=[_role_out(r) for r in rows])


class GetRole(Query, kw_only=True):
    """One role: its permissions per resource and the users holding it."""

    role_id: RoleId


@settings.query("get_role", output=RoleDetail)
def get_role(q: GetRole, ctx: QueryContext) -> RoleDetail:
    return present_role(ctx, q.role_id)


RoleDescription = Annotated[str, Meta(max_length=500)]


class CreateRole(Command, kw_only=True):
    """Create a custom role with per-resource permissions, e.g. {"clients": ["read", "write"], "deals": ["read"]},
    at most your own. Assign it with crm_settings_update_user; tokens of its users get the change at their next call."""

    name: Annotated[str, Meta(min_length=1, max_length=60)]
    description: RoleDescription | None = None
    permissions: Permissions  # type: ignore[valid-type]


@settings.command("create_role", output=RoleDetail, returns=UUID, present=present_role)
def create_role(cmd: CreateRole, uow: UnitOfWork) -> UUID:
    grants = _grants(cmd.permissions)
    _within_own(uow, grants, field="permissions", what="the role")
    with admin_transaction(uow, "crm_settings_create_role", cmd) as tx:
        taken = [r["name"] for r in tx.conn.execute("SELECT name FROM roles WHERE organization_id = %s", (uow.org_id,))]
        name = rules.check_role_name(cmd.name, taken=taken)
        role_id = uuid4()
        tx.conn.execute("INSERT INTO roles (id, organization_id, name, grants, built_in, description)"
                        " VALUES (%s, %s, %s, %s, false, %s)", (role_id, uow.org_id, name, Jsonb(grants), cmd.description))
        tx.record("role", role_id, "created", {"name": {"before": None, "after": name},
                                              "permissions": {"before": None, "after": grants}})
        tx.returned.append(role_id)
    return role_id


class UpdateRole(Command, kw_only=True):
    """Change a custom role's name, description or permissions (permissions replace the old ones). Users holding
    it, and their live tokens, get the new permissions at their next call. Built-in roles cannot change."""

    role_id: RoleId
    name: Annotated[str, Meta(min_length=1, max_length=60)] | UnsetType = UNSET
    description: RoleDescription | None | UnsetType = UNSET
    permissions: Permissions | UnsetType = UNSET  # type: ignore[valid-type]


@settings.command("update_role", output=RoleDetail, returns=UUID, present=present_role)
def update_role(cmd: UpdateRole, uow: UnitOfWork) -> UUID:
    with admin_transaction(uow, "crm_settings_update_role", cmd) as tx:
        role = _role_row(tx.conn, uow.org_id, cmd.role_id, lock=True)
        rules.check_role_editable(role)
        after: dict[str, Any] = {}
        if cmd.name is not UNSET:
            taken = [r["name"] for r in tx.conn.execute("SELECT name FROM roles WHERE organization_id = %s AND id <> %s",
                                                        (uow.org_id, role["id"]))]
            after["name"] = rules.check_role_name(cmd.name, taken=taken)
        if cmd.description is not UNSET:
            after["description"] = cmd.description
        if cmd.permissions is not UNSET:
            after["grants"] = _grants(cmd.permissions)
            _within_own(uow, after["grants"], field="permissions", what="the role")
        diff = rules.diff(role, after)
        if diff:
            sets = ", ".join(f"{k} = %s" for k in diff)
            tx.conn.execute(f"UPDATE roles SET {sets}, updated_at = now() WHERE id = %s",  # noqa: S608
                            (*(Jsonb(after[k]) if k == "grants" else after[k] for k in diff), role["id"]))
            tx.record("role", role["id"], "updated", {("permissions" if k == "grants" else k): v for k, v in diff.items()})
        tx.returned.append(role["id"])
    return cmd.role_id


class DeleteRole(Command, kw_only=True):
    """Delete a custom role nobody holds; a role in use is refused with the users holding it."""

    role_id: RoleId


@settings.command("delete_role", output=Removed, destructive=True)
def delete_role(cmd: DeleteRole, uow: UnitOfWork) -> Removed:
    with admin_transaction(uow, "crm_settings_delete_role", cmd) as tx:
        role = _role_row(tx.conn, uow.org_id, cmd.role_id, lock=True)
        rules.check_role_editable(role)
        holders = tx.conn.execute("SELECT id, name FROM users WHERE organization_id = %s AND role_id = %s"
                                  " ORDER BY lower(name), id", (uow.org_id, role["id"])).fetchall()
        rules.check_role_unused(role, holders)
        tx.conn.execute("DELETE FROM roles WHERE id = %s", (role["id"],))
        tx.record("role", role["id"], "deleted", {"name": {"before": role["name"], "after": None},
                                                  "permissions": {"before": role["grants"], "after": None}})
        result = Removed(id=role["id"], entity="role")
        tx.returned.append(result)
    return result


# == templates ===============================================================================================
class TemplateOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    kind: Literal[KINDS]  # type: ignore[valid-type]
    name: str
    entity: Annotated[str, Meta(description="What the template is for: its placeholders come from this entity.")]
    description: str | None = None
    subject: str | None = None
    html_body: str | None = None
    text_body: str | None = None
    language: str | None = None
    category: str | None = None
    body: str | None = None
    parameters: Annotated[list[str], Meta(description="WhatsApp: the placeholder filling {{1}}, {{2}}, ... in order.")] = []
    items: list[str] = []
    placeholders: Annotated[list[str], Meta(description="The placeholders the template uses.")] = []
    created_by: UUID | None = None
    created_at: datetime
    updated_at: datetime


class TemplateDetail(TemplateOut, kw_only=True, omit_defaults=True):
    available_placeholders: Annotated[list[str], Meta(description="Every placeholder a template for this entity may use.")]


def present_template(ctx: QueryContext, template_id: UUID) -> TemplateDetail:
    row = settings_q.get_template(ctx.conn, ctx.org_id, template_id)
    available = allowed_placeholders(row["entity"], settings_q.custom_keys(ctx.conn, ctx.org_id))
    return msgspec.convert({**row, "available_placeholders": available}, TemplateDetail)


Kind = Literal[KINDS]  # type: ignore[valid-type]
Entity = Literal[ENTITIES]  # type: ignore[valid-type]


class ListTemplates(ListQuery, kw_only=True):
    """Templates of the organization (e-mail, WhatsApp, quote, task checklist), by name; filter by kind or entity."""

    kind: Kind | None = None
    entity: Entity | None = None
    q: Annotated[str, Meta(min_length=1, max_length=200, description="Part of the name.")] | None = None


@settings.query("list_templates", output=Page[TemplateOut])
def list_templates(q: ListTemplates, ctx: QueryContext) -> Page[TemplateOut]:
    rows, cursor = settings_q.list_templates(ctx.conn, ctx.org_id, kind=q.kind, entity=q.entity, q=q.q, limit=q.limit,
                                             cursor=q.cursor)
    return Page(items=[msgspec.convert(r, TemplateOut) for r in rows], next_cursor=cursor)


class GetTemplate(Query, kw_only=True):
    """One template with its content and the placeholders it may use."""

    template_id: TemplateId


@settings.query("get_template", output=TemplateDetail)
def get_template(q: GetTemplate, ctx: QueryContext) -> TemplateDetail:
    return present_template(ctx, q.template_id)


TemplateName = Annotated[str, Meta(min_length=1, max_length=200, description=(
    "The template's name; for WhatsApp the Cloud API name: lowercase letters, digits, underscores."))]
LongText = Annotated[str, Meta(max_length=100_000)]
Placeholder = Annotated[str, Meta(min_length=3, max_length=120)]
ItemText = Annotated[str, Meta(min_length=1, max_length=500)]
PLACEHOLDER_HELP = ("Placeholders are {{root.field}}, e.g. {{client.business_name}}, {{deal.title}}, "
                    "{{organization.name}}, {{user.name}}, {{client.custom.<key>}}; they are checked on save.")


class CreateTemplate(Command, kw_only=True):
    """Create a template: email (subject, html_body and/or text_body), whatsapp (name, language, body with numbered
    variables {{1}}, {{2}} and parameters naming what fills each), quote (subject, body) or task_checklist (items).
    Placeholders such as {{client.business_name}} are checked against the entity the template is for."""

    kind: Kind
    name: TemplateName
    entity: Annotated[Entity, Meta(description="What it is for: client, deal, task or project.")] | None = None
    description: Annotated[str, Meta(max_length=1000)] | None = None
    subject: Annotated[str, Meta(max_length=500)] | None = None
    html_body: LongText | None = None
    text_body: LongText | None = None
    language: Annotated[str, Meta(max_length=10, description="WhatsApp language code, e.g. 'it' or 'en_US'.")] | None = None
    category: Literal[WHATSAPP_CATEGORIES] | None = None  # type: ignore[valid-type]
    body: LongText | None = None
    parameters: Annotated[list[Placeholder], Meta(max_length=100, description=(
        "WhatsApp: placeholders for {{1}}, {{2}}, ..., e.g. ['client.contact_name', 'deal.title']."))] = []
    items: Annotated[list[ItemText], Meta(max_length=100)] = []


@settings.command("create_template", output=TemplateDetail, returns=UUID, present=present_template)
def create_template(cmd: CreateTemplate, uow: UnitOfWork) -> UUID:
    fields = {f: getattr(cmd, f) for f in TEMPLATE_FIELDS}
    if fields["entity"] is None:
        fields["entity"] = {"quote": "deal", "task_checklist": "task"}.get(cmd.kind)
        if fields["entity"] is None:
            raise DomainError(f"say which entity the {cmd.kind} template is for: {', '.join(ENTITIES)}", field="entity")
    template = Template.create(uow.org_id, cmd.kind, fields, uow.principal.user_id,
                               settings_q.custom_keys(uow.conn, uow.org_id))
    uow.add(template)
    return template.id


class UpdateTemplate(Command, kw_only=True):
    """Change a template's name or content; only what you send changes (null clears an optional field). The result
    is checked as a whole, placeholders included. Its kind and entity stay."""

    template_id: TemplateId
    name: TemplateName | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=1000)] | None | UnsetType = UNSET
    subject: Annotated[str, Meta(max_length=500)] | None | UnsetType = UNSET
    html_body: LongText | None | UnsetType = UNSET
    text_body: LongText | None | UnsetType = UNSET
    language: Annotated[str, Meta(max_length=10)] | None | UnsetType = UNSET
    category: Literal[WHATSAPP_CATEGORIES] | None | UnsetType = UNSET  # type: ignore[valid-type]
    body: LongText | None | UnsetType = UNSET
    parameters: Annotated[list[Placeholder], Meta(max_length=100)] | UnsetType = UNSET
    items: Annotated[list[ItemText], Meta(max_length=100)] | UnsetType = UNSET


@settings.command("update_template", output=TemplateDetail, returns=UUID, present=present_template)
def update_template(cmd: UpdateTemplate, uow: UnitOfWork) -> UUID:
    template = uow.get(Template, cmd.template_id, field="template_id")
    template.change(sent(cmd, TEMPLATE_FIELDS), settings_q.custom_keys(uow.conn, uow.org_id))
    return template.id


class DeleteTemplate(Command, kw_only=True):
    """Delete a template (its history stays in the audit trail)."""

    template_id: TemplateId


@settings.command("delete_template", output=Removed, destructive=True)
def delete_template(cmd: DeleteTemplate, uow: UnitOfWork) -> Removed:
    uow.get(Template, cmd.template_id, field="template_id").delete()
    return Removed(id=cmd.template_id, entity="template")


# == custom fields ===========================================================================================
FieldType = Literal[FIELD_TYPES]  # type: ignore[valid-type]
EntityType = Literal[ENTITY_TYPES]  # type: ignore[valid-type]


class CustomFieldOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    entity_type: EntityType
    key: str
    label: str
    type: FieldType
    required: bool
    choices: list[str] = []
    description: str | None = None
    position: int
    created_at: datetime


class CustomFieldList(Struct, kw_only=True):
    items: list[CustomFieldOut]


def present_field(ctx: QueryContext, field: UUID) -> CustomFieldOut:
    return msgspec.convert(settings_q.get_custom_field(ctx.conn, ctx.org_id, field), CustomFieldOut)


class ListCustomFields(Query, kw_only=True):
    """Custom fields per entity type (client, deal, task, project): key, label, type, required, choices. Their values
    go in the entity's create/update tools under custom_fields, and its list tools filter by them."""

    entity_type: EntityType | None = None


@settings.query("list_custom_fields", output=CustomFieldList)
def list_custom_fields(q: ListCustomFields, ctx: QueryContext) -> CustomFieldList:
    return CustomFieldList(items=[msgspec.convert(r, CustomFieldOut)
                                  for r in settings_q.list_custom_fields(ctx.conn, ctx.org_id, q.entity_type)])


class CreateCustomField(Command, kw_only=True):
    """Add a custom field to clients, deals, tasks or projects: a key (e.g. 'industry'), a label, a type (text,
    number, date, boolean, single_choice, multiple_choice, url, email), whether it is required on create, and the
    choices of a choice field. A key is used once: a deleted field's key is not reused."""

    entity_type: EntityType
    key: Annotated[str, Meta(pattern=KEY_PATTERN, description="1-40 lowercase letters, digits, underscores.")]
    label: Annotated[str, Meta(min_length=1, max_length=100)]
    type: FieldType
    required: bool = False
    choices: Annotated[list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(max_length=100)] = []
    description: Annotated[str, Meta(max_length=500)] | None = None


@settings.command("create_custom_field", output=CustomFieldOut, returns=UUID, present=present_field)
def create_custom_field(cmd: CreateCustomField, uow: UnitOfWork) -> UUID:
    from eventsourcing.application import AggregateNotFoundError

    existing = len(settings_q.definitions(uow.conn, uow.org_id, cmd.entity_type))
    choices = check_definition(cmd.entity_type, cmd.key, cmd.label, cmd.type, cmd.choices, existing=existing)
    try:
        previous = uow.store.repository.get(field_id(uow.org_id, cmd.entity_type, cmd.key))
    except AggregateNotFoundError:
        previous = None
    if previous is not None:
        state = "was deleted (its values are kept in the history)" if previous.deleted else "already exists"
        raise KeyTaken(f"a {cmd.entity_type} custom field with key {cmd.key!r} {state}; choose another key", field="key")
    field = CustomField(org_id=uow.org_id, entity_type=cmd.entity_type, key=cmd.key, label=cmd.label.strip(),
                        field_type=cmd.type, required=cmd.required, choices=list(choices), description=cmd.description,
                        created_by=uow.principal.user_id)
    uow.add(field)
    return field.id


class DeleteCustomField(Command, kw_only=True):
    """Remove a custom field: its values disappear from the entities' results, filters and search (their history
    keeps them)."""

    field_id: FieldId


@settings.command("delete_custom_field", output=Removed, destructive=True,
                  writes=("clients", "deals", "tasks", "projects"))
def delete_custom_field(cmd: DeleteCustomField, uow: UnitOfWork) -> Removed:
    uow.get(CustomField, cmd.field_id, field="field_id").delete()
    return Removed(id=cmd.field_id, entity="custom field")


# == API tokens ==============================================================================================
class TokenOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    user_id: UUID
    user_name: str
    permissions: Annotated[Permissions | None, Meta(  # type: ignore[valid-type]
        description="What the token allows (always within its user's role); absent: all its user's role allows.")] = None
    status: Literal["active", "revoked"]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


TOKEN_SELECT = ("t.id, t.name, t.user_id, u.name AS user_name, t.grants, t.created_at, t.last_used_at, t.revoked_at,"
                " CASE WHEN t.revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status")
TOKEN_FROM = "FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.organization_id = %s"


def _token_out(row: dict[str, Any]) -> TokenOut:
    data = {k: v for k, v in row.items() if k != "grants"}
    if row["grants"] is not None:
        data["permissions"] = msgspec.to_builtins(_permissions(row["grants"]))
    return msgspec.convert(data, TokenOut)


def present_token(ctx: QueryContext, token_id: UUID) -> TokenOut:
    row = ctx.conn.execute(f"SELECT {TOKEN_SELECT} {TOKEN_FROM} AND t.id = %s", (ctx.org_id, token_id)).fetchone()
    if row is None:
        raise NotFound("API token", token_id, field="token_id")
    return _token_out(row)


class ListApiTokens(ListQuery, kw_only=True):
    """API tokens of the organization: name, owner, permissions, created, last used, revoked. Never the secret."""

    include_revoked: bool = False
    user_id: Annotated[UUID | None, Meta(description="Only this user's tokens.")] = None


@settings.query("list_api_tokens", output=Page[TokenOut])
def list_api_tokens(q: ListApiTokens, ctx: QueryContext) -> Page[TokenOut]:
    where = TOKEN_FROM + ("" if q.include_revoked else " AND t.revoked_at IS NULL")
    params: list[Any] = [ctx.org_id]
    if q.user_id is not None:
        where += " AND t.user_id = %s"
        params.append(q.user_id)
    rows, cursor = paginate(ctx.conn, TOKEN_SELECT, where, params,
                            Sort("t.created_at", "timestamptz", descending=True, row_id="t.id"), q.limit, q.cursor)
    return Page(items=[_token_out(r) for r in rows], next_cursor=cursor)


class CreatedToken(Struct, kw_only=True):
    token: TokenOut
    secret: Annotated[str, Meta(description="The token itself (Authorization: Bearer <secret>). Shown only now: store it.")]


class SealedToken(Struct, kw_only=True):
    """The runner's record of a created token: the secret sealed with the server's key, never in clear."""

    token_id: UUID
    sealed_secret: str


def present_created_token(ctx: QueryContext, ref: SealedToken) -> CreatedToken:
    secret = sealed.decrypt(sealed.server_key(ctx.conn), ref.sealed_secret,
                            context=sealed.context_for(ctx.org_id, "api_token"))
    return CreatedToken(token=present_token(ctx, ref.token_id), secret=secret)


class CreateApiToken(Command, kw_only=True):
    """Create an API token for yourself, for another application or script, with per-resource permissions (at most
    your own; default: all of your current permissions). The secret is shown once, in this result."""

    name: Annotated[str, Meta(min_length=1, max_length=100, description="What it is for, e.g. 'Zapier'.")]
    permissions: Permissions | None = None  # type: ignore[valid-type]


@settings.command("create_api_token", output=CreatedToken, returns=SealedToken, present=present_created_token)
def create_api_token(cmd: CreateApiToken, uow: UnitOfWork) -> SealedToken:
    own = uow.principal.grants
    grants = dict(own) if cmd.permissions is None else _grants(cmd.permissions)
    rules.check_token_grants(grants, own)
    if not grants:
        raise DomainError("the token would allow nothing; give at least one permission", field="permissions")
    with admin_transaction(uow, "crm_settings_create_api_token", cmd) as tx:
        secret, token_id = identity.create_token(tx.conn, uow.org_id, uow.principal.user_id, grants, name=cmd.name)
        tx.record("api_token", token_id, "created", {"name": {"before": None, "after": cmd.name},
                                                    "permissions": {"before": None, "after": grants}})
        ref = SealedToken(token_id=token_id, sealed_secret=sealed.encrypt(
            sealed.server_key(tx.conn), secret, context=sealed.context_for(uow.org_id, "api_token")))
        tx.returned.append(ref)
    return ref


class RevokeApiToken(Command, kw_only=True):
    """Revoke an API token: the next request with it is refused (401). Revoking it again changes nothing."""

    token_id: TokenId


@settings.command("revoke_api_token", output=TokenOut, returns=UUID, destructive=True, present=present_token)
def revoke_api_token(cmd: RevokeApiToken, uow: UnitOfWork) -> UUID:
    with admin_transaction(uow, "crm_settings_revoke_api_token", cmd) as tx:
        before = tx.conn.execute("SELECT revoked_at FROM api_tokens WHERE organization_id = %s AND id = %s",
                                 (uow.org_id, cmd.token_id)).fetchone()
        identity.revoke_token(tx.conn, uow.org_id, cmd.token_id)
        if before is not None and before["revoked_at"] is None:
            tx.record("api_token", cmd.token_id, "revoked", {"status": {"before": "active", "after": "revoked"}})
        tx.returned.append(cmd.token_id)
    return cmd.token_id
