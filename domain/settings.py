"""Organization settings: the rules of the profile, users, roles and API tokens.

These live in plain auth tables (see the README's deviation from DESIGN.md), so there is no aggregate here: the
application reads the current rows, asks these functions whether a change is allowed, and writes the change and
its `settings_changes` row in one transaction. Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from domain.errors import Conflict, DomainError

BUILT_IN_ROLES = ("admin", "sales", "viewer")
ADMIN_ROLE = "admin"
USER_STATUSES = ("invited", "active", "inactive")
ACTIONS = ("read", "write", "delete")
CURRENCIES = (
    "EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON", "BGN",
    "HRK", "ISK", "TRY", "RUB", "UAH", "CNY", "HKD", "SGD", "INR", "KRW", "BRL", "MXN", "ARS", "CLP", "COP", "PEN",
    "ZAR", "AED", "SAR", "ILS", "EGP", "MAD", "TND", "THB", "MYR", "IDR", "PHP", "VND",
)
"""Currencies an organization may keep its money in (ISO 4217)."""
INVITE_HOURS = 72


class LastAdmin(Conflict):
    code = "last_admin"


class BuiltInRole(DomainError):
    code = "built_in_role"


class RoleInUse(Conflict):
    code = "role_in_use"


@cache
def timezones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    if name not in timezones():
        hint = " (e.g. Europe/Rome, America/New_York, UTC)"
        raise DomainError(f"unknown time zone {name!r}: use an IANA name{hint}", field="timezone")
    return name


def check_currency(code: str) -> str:
    if code not in CURRENCIES:
        raise DomainError(f"unknown currency {code!r}; one of {', '.join(CURRENCIES)}", field="currency")
    return code


# -- permissions as tools show them: {"clients": ["read", "write"], ...} <-> grants {"clients": "rw"} ---------
def grants_from(permissions: Mapping[str, Iterable[str] | None], resources: Iterable[str]) -> dict[str, str]:
    """Grants from per-resource action lists; unknown resources or actions are refused naming them."""
    known = set(resources)
    grants: dict[str, str] = {}
    for resource, actions in permissions.items():
        if resource not in known:
            raise DomainError(f"unknown resource {resource!r}", field=f"permissions.{resource}")
        if not actions:
            continue
        for action in actions:
            if action not in ACTIONS:
                raise DomainError(f"unknown action {action!r}; one of read, write, delete",
                                  field=f"permissions.{resource}")
        flags = "".join(a[0] for a in ACTIONS if a in actions)
        grants[resource] = flags
    return grants


def permissions_of(grants: Mapping[str, str] | None, resources: Iterable[str]) -> dict[str, list[str]]:
    """{"clients": ["read", "write"]} for each resource with any grant, in the resources' order."""
    grants = grants or {}
    names = {"r": "read", "w": "write", "d": "delete"}
    return {r: [names[f] for f in "rwd" if f in grants.get(r, "")] for r in resources if grants.get(r)}


def beyond(requested: Mapping[str, str], own: Mapping[str, str]) -> list[tuple[str, str]]:
    """What `requested` grants that `own` does not: (resource, action) pairs, in order. A token's grants are capped
    by its creator's own effective permissions."""
    names = {"r": "read", "w": "write", "d": "delete"}
    return [(r, names[f]) for r, flags in requested.items() for f in flags if f not in own.get(r, "")]


def check_token_grants(requested: Mapping[str, str], own: Mapping[str, str]) -> None:
    extra = beyond(requested, own)
    if extra:
        listed = ", ".join(f"{r}:{a}" for r, a in extra)
        raise DomainError(f"a token cannot grant more than its creator may do; you do not have {listed}",
                          field=f"permissions.{extra[0][0]}")


# -- roles ------------------------------------------------------------------------------------------------
def check_role_name(name: str, *, taken: Iterable[str]) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise DomainError("a role needs a name", field="name")
    if cleaned.lower() in BUILT_IN_ROLES:
        raise DomainError(f"{cleaned!r} is a built-in role's name; choose another", field="name")
    if cleaned.lower() in {t.lower() for t in taken}:
        raise Conflict(f"a role named {cleaned!r} already exists", field="name")
    return cleaned


def check_role_editable(role: Mapping[str, Any], *, field: str = "role_id") -> None:
    if role.get("built_in"):
        raise BuiltInRole(f"{role['name']!r} is a built-in role and cannot be changed or deleted; create a custom role",
                          field=field)


def check_role_unused(role: Mapping[str, Any], holders: list[Mapping[str, Any]]) -> None:
    if holders:
        names = ", ".join(f"{h['name']} ({h['id']})" for h in holders[:20])
        more = f" and {len(holders) - 20} more" if len(holders) > 20 else ""
        raise RoleInUse(f"role {role['name']!r} is held by {len(holders)} user(s): {names}{more}; give them another "
                        "role first (crm_settings_update_user)", field="role_id")


# -- users ------------------------------------------------------------------------------------------------
def check_keeps_an_admin(*, target_is_admin: bool, other_active_admins: int, change: str) -> None:
    """The organization always keeps one active admin: the last one cannot be deactivated or demoted."""
    if target_is_admin and other_active_admins == 0:
        raise LastAdmin(f"this is the organization's last active admin and cannot be {change}; make another user "
                        "admin first", field="user_id")


def status_change(current: str, wanted: str) -> str | None:
    """The action a status change records (deactivated, reactivated), or None when nothing changes."""
    if wanted not in ("active", "inactive"):
        raise DomainError("status must be active or inactive", field="status")
    if current == wanted or (current == "invited" and wanted == "active"):
        return None
    return "deactivated" if wanted == "inactive" else "reactivated"


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Field-level changes for the settings log: {field: {"before": x, "after": y}} for fields that differ."""
    return {k: {"before": before.get(k), "after": v} for k, v in after.items() if before.get(k) != v}
