"""Tool shapes several resources share, declared once: tags (add/remove) and assignment (assign/unassign).

A resource calls `tag_tools(...)` / `assignment_tools(...)` with its aggregate, id field and wording; the
inputs are generated Structs, so every such tool has the same arguments, validation and behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application.handlers import entity_command
from application.identity import ensure_user
from application.runner import UnitOfWork
from application.shapes import Command, Tag
from domain.base import TenantAggregate

UserId = Annotated[UUID, Meta(description="A user id of this organization (resolve names with crm_users_list).")]


def _input(resource: str, name: str, doc: str, fields: list[tuple[str, Any]]) -> type[Struct]:
    return msgspec.defstruct(name, fields, bases=(Command,), kw_only=True, module=f"application.{resource}",
                             namespace={"__doc__": doc})


def tag_tools(resource: str, *, label: str, aggregate: type[TenantAggregate], id_field: str, id_type: Any,
              subject: str, output: type, present: Callable[..., Any], add_hint: str = "",
              reads: tuple[str, ...] = ()) -> None:
    """crm_<resource>_add_tag and crm_<resource>_remove_tag for an aggregate that is `domain.shared.Taggable`;
    `reads`: other resources the presented output shows."""
    add = _input(resource, f"Tag{label}", f"Add a tag to {subject} (no effect if it already has it).{add_hint}",
                 [(id_field, id_type), ("tag", Tag)])
    remove = _input(resource, f"Untag{label}", f"Remove a tag from {subject}.", [(id_field, id_type), ("tag", Tag)])
    entity_command(f"crm_{resource}_add_tag", add, aggregate, id_field, lambda a, cmd, uow: a.add_tag(cmd.tag),
                   output=output, present=present, presents_aggregate=True, reads=reads)
    entity_command(f"crm_{resource}_remove_tag", remove, aggregate, id_field, lambda a, cmd, uow: a.remove_tag(cmd.tag),
                   output=output, present=present, destructive=True, presents_aggregate=True, reads=reads)


def assignment_tools(resource: str, *, label: str, aggregate: type[TenantAggregate], id_field: str, id_type: Any,
                     assign_doc: str, unassign_doc: str, output: type, present: Callable[..., Any],
                     reads: tuple[str, ...] = ()) -> None:
    """crm_<resource>_assign (to an active user of the organization) and crm_<resource>_unassign; `reads`: other
    resources the presented output shows."""
    assign = _input(resource, f"Assign{label}", assign_doc, [(id_field, id_type), ("user_id", UserId)])
    unassign = _input(resource, f"Unassign{label}", unassign_doc, [(id_field, id_type)])

    def do_assign(agg: Any, cmd: Any, uow: UnitOfWork) -> None:
        ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
        agg.assign(cmd.user_id)

    entity_command(f"crm_{resource}_assign", assign, aggregate, id_field, do_assign, output=output, present=present,
                   presents_aggregate=True, reads=reads)
    entity_command(f"crm_{resource}_unassign", unassign, aggregate, id_field, lambda a, cmd, uow: a.unassign(),
                   output=output, present=present, destructive=True, presents_aggregate=True, reads=reads)
