"""Confirmed destructive calls: preview what a destructive tool would do, then do exactly that or nothing.

Every destructive tool (kind "destructive" in the registry, those of today and those added later) takes two more
arguments, added to its published input schema by the registry (`registry.CONFIRM_INPUTS`) and taken off by the
tool runner before the tool's own validation:

- `preview: true` runs the tool's handler in a unit of work that is never saved. The events it records are
  collected and described; the database work a handler does itself (settings tables, through
  `admin_transaction`) runs inside one transaction that is rolled back; the read-model checks it makes run as
  they would (a refusal is answered as the real call would answer it). The answer is
  `{"preview": {tool, summary, entities, events, settings_changes, counts, expires_at}, "confirmation": token}`
  and nothing changed. Every destructive tool's output schema admits that shape (`registry.CONFIRM_OUTPUTS`), so
  MCP clients that validate structured content against the output schema accept it.
- `confirmation: "<token>"` runs the call again in the same way and keeps its effect only when it is the previewed
  one: the same tool, arguments (idempotency_key aside), organization and user, before the token expires
  (`TTL_SECONDS`), every entity it loads at the version the preview saw, and the same effect (the same events
  on the same entities, the same settings changes, the same result). Anything else is refused (codes
  `confirmation_invalid`, `confirmation_mismatch`, `confirmation_expired`, `confirmation_stale`) and nothing
  changes. A concurrent writer that gets in between the check and the append makes the append conflict; the
  retry then finds the new version and refuses as stale.
- Neither: the tool behaves as it always did.

The token is `v1.<payload>.<signature>` (base64url): the payload names the tool, organization, user, a hash of
the arguments, the expiry, the (entity, version) pairs the preview saw and a hash of the effect; the signature is
HMAC-SHA256 with a key derived from the server secret that signs download links (FLUSIA_SECRET, else the one kept
in the database: application/attachments.py), so any worker accepts a token any other issued. A token holds ids
and versions of the caller's own entities, never their values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec

from application.errors import InvalidArguments, ToolError

TTL_SECONDS = 30 * 60
MAX_TOKEN_CHARS = 8192
VERSION = "v1"
LABEL_FIELDS = ("business_name", "title", "name", "subject", "label", "number", "email", "value", "domain")


class ConfirmationError(ToolError):
    code = "confirmation_invalid"


@dataclass(frozen=True)
class Confirm:
    """What the caller asked for: a preview, or the confirmed call (`token`)."""

    preview: bool = False
    token: str | None = None


def take(arguments: Any) -> tuple[Any, Confirm | None]:
    """Split `preview` / `confirmation` off a destructive tool's arguments (checked here, naming the field)."""
    if not isinstance(arguments, dict) or not ({"preview", "confirmation"} & arguments.keys()):
        return arguments, None
    rest = {k: v for k, v in arguments.items() if k not in ("preview", "confirmation")}
    preview = arguments.get("preview", False)
    token = arguments.get("confirmation")
    if preview is None:
        preview = False
    if not isinstance(preview, bool):
        raise InvalidArguments("Invalid `preview`: expected true or false", field="preview")
    if token is not None and (not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS):
        raise InvalidArguments("Invalid `confirmation`: expected the confirmation string a preview of this call "
                               "returned", field="confirmation")
    if preview and token is not None:
        raise InvalidArguments("Invalid `confirmation`: give either preview:true (to see what the call would do) or "
                               "the confirmation of an earlier preview, not both", field="confirmation")
    if not preview and token is None:
        return rest, None
    return rest, Confirm(preview=preview, token=token)


# -- running a handler in a transaction that is kept only when allowed ---------------------------------------------
class HeldPool:
    """Stands in for the tool runner's pool in a unit of work: every connection the handler borrows is one connection
    held in one open transaction (a handler's own transactions become savepoints inside it), kept open until
    `finish(commit)`: rolled back after a preview, committed after a confirmed call whose effect was checked."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._borrowed: Any = None
        self._tx: Any = None
        self.conn: Any = None
        self.mark = 0
        """The last settings change before this transaction: what the handler records comes after it."""

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        if self.conn is None:
            self._borrowed = self.pool.connection()
            self.conn = self._borrowed.__enter__()
            try:
                self._tx = self.conn.transaction()
                self._tx.__enter__()
                self.mark = self.conn.execute("SELECT coalesce(max(id), 0) AS n FROM settings_changes").fetchone()["n"]
            except BaseException:
                self._release()
                raise
        yield self.conn

    def settings_changes(self, org_id: UUID, tool: str) -> list[dict[str, Any]]:
        """The settings changes the handler recorded in this transaction (application/settings_changes.py)."""
        if self.conn is None:
            return []
        return self.conn.execute(
            "SELECT entity_type, entity_id, action, changes FROM settings_changes WHERE id > %s AND organization_id = %s"
            " AND tool = %s AND occurred_at = now() ORDER BY id", (self.mark, org_id, tool)).fetchall()

    def wrote(self) -> bool:
        """Whether the handler's own database work changed anything (a transaction id is given on the first write)."""
        if self.conn is None:
            return False
        return self.conn.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS w").fetchone()["w"]

    def finish(self, commit: bool) -> None:
        if self.conn is None:
            return
        try:
            if commit:
                self._tx.__exit__(None, None, None)
            else:
                self._tx.__exit__(_Rollback, _Rollback(), None)
        finally:
            self._release()

    def _release(self) -> None:
        borrowed, self._borrowed, self.conn, self._tx = self._borrowed, None, None, None
        if borrowed is not None:
            borrowed.__exit__(None, None, None)


class _Rollback(Exception):
    """Ends a held transaction without keeping it."""


# -- what a call would do --------------------------------------------------------------------------------------------
def _words(name: str) -> str:
    """`ContactRemoved` -> 'contact removed'."""
    out = []
    for ch in name:
        if ch.isupper() and out:
            out.append(" ")
        out.append(ch.lower())
    return "".join(out)


def _label(aggregate: Any) -> str | None:
    for attr in LABEL_FIELDS:
        value = getattr(aggregate, attr, None)
        if isinstance(value, str) and value:
            return value if len(value) <= 80 else value[:77] + "..."
    return None


@dataclass
class Effect:
    """A handler's effect, described (for the preview) and fingerprinted (for the confirmed call)."""

    entities: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    versions: list[list[Any]] = field(default_factory=list)
    fingerprint: str = ""
    other_writes: bool = False


def effect_of(uow: Any, held: HeldPool, tool: str, returned: Any) -> Effect:
    effect = Effect()
    shape: list[Any] = []
    new_ids: dict[str, str] = {}
    for aggregate in uow.pending:
        pending = list(aggregate.pending_events)
        before = aggregate.version - len(pending)
        entity = getattr(aggregate, "entity_name", type(aggregate).__name__.lower())
        ref = str(aggregate.id)
        if before == 0:
            ref = new_ids.setdefault(ref, f"new#{len(new_ids) + 1}")
        else:
            effect.versions.append([aggregate.id.hex, before])
        changes = [_words(type(e).__name__) for e in pending]
        shape.append([ref, before, entity, [type(e).__qualname__ for e in pending]])
        if not changes:
            continue  # loaded to check it, unchanged: bound by its version, not shown as a change
        label = _label(aggregate)
        row: dict[str, Any] = {"entity": entity, "id": str(aggregate.id), "changes": changes}
        if label:
            row["label"] = label
        if before:
            row["version"] = before
        effect.entities.append(row)
        named = f"{entity} {label!r} ({aggregate.id})" if label else f"{entity} {aggregate.id}"
        effect.events += [f"{named}: {c}" for c in changes]
    for change in held.settings_changes(uow.org_id, tool):
        fields = sorted((change["changes"] or {}).keys())
        text = f"{change['entity_type']} {change['entity_id']}: {change['action']}"
        effect.settings.append(text + (f" ({', '.join(fields)})" if fields else ""))
        shape.append([change["entity_type"], change["entity_id"], change["action"], change["changes"]])
    effect.other_writes = held.wrote() and not effect.settings
    result = msgspec.json.encode(returned).decode()
    for real, placeholder in new_ids.items():
        result = result.replace(real, placeholder)
    shape.append({"side_writes": len(uow.side_writes), "other_writes": effect.other_writes, "returned": result})
    effect.fingerprint = hashlib.sha256(msgspec.json.encode(shape)).hexdigest()[:32]
    return effect


def arguments_hash(params: Any) -> str:
    """The call's arguments without its idempotency key (the key protects a retry, it is not what is done)."""
    if getattr(params, "idempotency_key", None) is not None:
        params = msgspec.structs.replace(params, idempotency_key=None)
    return hashlib.sha256(msgspec.json.encode(params)).hexdigest()[:32]


def preview_answer(tool: str, effect: Effect, token: str, expires: int) -> dict[str, Any]:
    n_entities, n_events = len(effect.entities), len(effect.events)
    deleted = sum(1 for e in effect.entities if "deleted" in e["changes"])
    parts = []
    if n_events:
        parts.append(f"{n_events} change{'s' if n_events != 1 else ''} to {n_entities} "
                     f"entit{'ies' if n_entities != 1 else 'y'}" + (f" ({deleted} deleted)" if deleted else ""))
    if effect.settings:
        parts.append(f"{len(effect.settings)} settings change{'s' if len(effect.settings) != 1 else ''}")
    if effect.other_writes:
        parts.append("changes to records outside the event store")
    summary = ("Would make " + " and ".join(parts) if parts else "Would change nothing") + (
        ". Nothing was changed: to do it, repeat the same call with this confirmation (valid "
        f"{TTL_SECONDS // 60} minutes); it is refused if anything it touches changes before.")
    preview: dict[str, Any] = {
        "tool": tool, "summary": summary, "entities": effect.entities, "events": effect.events,
        "counts": {"entities": n_entities, "events": n_events, "deleted": deleted, "settings_changes": len(effect.settings)},
        "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
    }
    if effect.settings:
        preview["settings_changes"] = effect.settings
    return {"preview": preview, "confirmation": token}


# -- the token -----------------------------------------------------------------------------------------------------
class Claims(msgspec.Struct, array_like=True):
    tool: str
    organization: str
    user: str
    arguments: str
    expires: int
    versions: list[tuple[str, int]]
    effect: str


def token_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"flusia confirmation tokens v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, claims: Claims) -> str:
    payload = _b64(msgspec.json.encode(claims))
    mac = hmac.new(token_key(secret), f"{VERSION}.{payload}".encode(), hashlib.sha256).digest()
    return f"{VERSION}.{payload}.{_b64(mac)}"


def claims_for(tool: str, principal: Any, params: Any, effect: Effect, *, now: float | None = None) -> Claims:
    return Claims(tool=tool, organization=principal.organization_id.hex,
                  user=principal.user_id.hex if principal.user_id else "", arguments=arguments_hash(params),
                  expires=int((time.time() if now is None else now) + TTL_SECONDS),
                  versions=[(i, v) for i, v in effect.versions], effect=effect.fingerprint)


def verify(secret: bytes, token: str, tool: str, principal: Any, params: Any, *, now: float | None = None) -> Claims:
    """The token's claims when it is genuine, unexpired and for this very call; else a refusal saying which."""
    invalid = ConfirmationError("`confirmation` is not a confirmation this server issued (or it was altered): "
                                "call the tool with preview:true and use the confirmation it returns",
                                field="confirmation", code="confirmation_invalid")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise invalid
    try:
        mac = _unb64(parts[2])
        expected = hmac.new(token_key(secret), f"{VERSION}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise invalid
        claims = msgspec.json.decode(_unb64(parts[1]), type=Claims)
    except (binascii.Error, ValueError, msgspec.DecodeError, UnicodeError):
        raise invalid from None
    user = principal.user_id.hex if principal.user_id else ""
    if (claims.tool, claims.organization, claims.user, claims.arguments) != (
            tool, principal.organization_id.hex, user, arguments_hash(params)):
        what = ("another tool (" + claims.tool + ")" if claims.tool != tool
                else "another organization or user" if (claims.organization, claims.user) != (
                    principal.organization_id.hex, user)
                else "other arguments")
        raise ConfirmationError(f"this confirmation was issued for {what}, not for this call: a confirmation performs "
                                "only the very call that was previewed. Preview this call to confirm it.",
                                field="confirmation", code="confirmation_mismatch")
    if claims.expires < (time.time() if now is None else now):
        raise ConfirmationError(f"this confirmation expired (they last {TTL_SECONDS // 60} minutes): preview the call "
                                "again and confirm the new preview", field="confirmation", code="confirmation_expired")
    return claims


def check_unchanged(claims: Claims, effect: Effect, uow: Any) -> None:
    """Refuse (confirmation_stale) when what the call would do now is not what was previewed."""
    now = {aggregate_id: version for aggregate_id, version in effect.versions}
    names = {a.id.hex: (getattr(a, "entity_name", "entity"), a.id) for a in uow.pending}
    for aggregate_id, version in claims.versions:
        if now.get(aggregate_id) != version:
            entity, real_id = names.get(aggregate_id, ("entity", aggregate_id))
            then = f"version {version}, now {now[aggregate_id]}" if aggregate_id in now else "it is no longer involved"
            raise ConfirmationError(
                f"the {entity} {real_id} changed since the preview ({then}); nothing was done. Preview the call again "
                "and confirm the new preview.", field="confirmation", code="confirmation_stale",
                details={"changed": [str(real_id)]})
    if claims.effect != effect.fingerprint:
        raise ConfirmationError(
            "what this call would do changed since the preview (other entities, events or settings changes); nothing "
            "was done. Preview the call again and confirm the new preview.", field="confirmation",
            code="confirmation_stale")


def signing_secret(pool: Any) -> bytes:
    from application.attachments import link_secret

    with pool.connection() as conn:
        return link_secret(conn)
