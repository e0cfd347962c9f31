"""Per-resource read / write / delete grants, and the built-in roles every organization starts with.

A grant set is a mapping resource -> flags, flags a subset of "rwd". Effective permission of a call is
the role's grants intersected with the token's.
"""

from __future__ import annotations

from collections.abc import Mapping

RESOURCES = (
    "users", "clients", "deals", "tasks", "projects", "activities", "services", "pipelines", "invoices",
    "newsletter", "whatsapp", "qr_codes", "wiki", "workflows", "settings", "stats", "audit",
)
FLAG_ACTIONS = {"r": "read", "w": "write", "d": "delete"}
ACTION_FLAGS = {v: k for k, v in FLAG_ACTIONS.items()}

Grants = dict[str, str]

SALES_WRITABLE = ("clients", "deals", "tasks", "activities", "projects")
BUILT_IN_ROLES: dict[str, Grants] = {
    "admin": {r: "rwd" for r in RESOURCES},
    "sales": {r: ("rw" if r in SALES_WRITABLE else "r") for r in RESOURCES},
    "viewer": {r: "r" for r in RESOURCES},
}


class InvalidPermission(ValueError):
    pass


def normalise_flags(flags: str) -> str:
    if not flags or any(f not in FLAG_ACTIONS for f in flags):
        raise InvalidPermission(f"flags must be a non-empty subset of 'rwd', got {flags!r}")
    return "".join(f for f in "rwd" if f in flags)


def parse_permission(text: str) -> tuple[str, str]:
    """`clients:rw` -> ("clients", "rw")."""
    resource, sep, flags = text.partition(":")
    if not sep or resource not in RESOURCES:
        raise InvalidPermission(f"expected RESOURCE:FLAGS with RESOURCE one of {', '.join(RESOURCES)}; got {text!r}")
    return resource, normalise_flags(flags)


def parse_permissions(items: list[str]) -> Grants:
    grants: Grants = {}
    for item in items:
        resource, flags = parse_permission(item)
        grants[resource] = normalise_flags(grants.get(resource, "") + flags)
    return grants


def intersect(role: Mapping[str, str], token: Mapping[str, str] | None) -> Grants:
    """Effective grants: what both the role and the token allow. A token without own grants inherits the role."""
    if token is None:
        return {r: f for r, f in role.items() if f}
    out = {r: "".join(f for f in role.get(r, "") if f in token.get(r, "")) for r in RESOURCES}
    return {r: f for r, f in out.items() if f}


def allows(grants: Mapping[str, str], resource: str, action: str) -> bool:
    return ACTION_FLAGS[action] in grants.get(resource, "")


def as_listing(grants: Mapping[str, str]) -> list[str]:
    """Human-readable permission names, e.g. ["clients:read", "clients:write"]."""
    return [f"{r}:{FLAG_ACTIONS[f]}" for r in RESOURCES for f in grants.get(r, "")]
