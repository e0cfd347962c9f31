"""The toolset kit: a group of tools (`crm_<name>_*`) declared once, its standard tools generated from it.

A `Toolset` names its group (title, description, listed by default or not) and, when it is about one kind
of entity, that entity: its aggregate, id argument, output type and presenter, and the read-model check that
it exists. From that, the shapes every resource repeats are one call each:

- `get`, `delete`, `update`, `act` (load the aggregate, call one domain method, save, present the result);
- `notes` (list/add/update/delete notes on the entity), `tags` (add/remove), `assignment` (assign/unassign);
- `require` (a read tool's check that the entity exists before reading what hangs off it).

Custom tools are declared beside them with `query` and `command`, which only add the `crm_<name>_` prefix.
Everything ends in the one registry (application/registry.py), so names, schemas, annotations and permissions
still come from one declaration per tool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application.registry import Registry, registry
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, NoteBody, Page, Removed, Tag
from application.identity import ensure_user
from domain.base import TenantAggregate
from domain.errors import NotFound
from domain.notes import Note
from projections import notes as notes_q

UserId = Annotated[UUID, Meta(description="From crm_users_list.")]
Act = Callable[[Any, Any, UnitOfWork], Any]


class NoteOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    subject_type: str
    subject_id: UUID
    body: str
    author_id: UUID | None = None
    author_name: str | None = None
    created_at: datetime
    updated_at: datetime


@dataclass
class Toolset:
    """One group of tools. `name` is the tool prefix (`crm_<name>_*`), the permission resource and the value of
    `/mcp?toolsets=`; `title` and `description` are shown in tools/list `_meta` and the README."""

    name: str
    title: str
    description: str
    default: bool = True
    """Listed when a client does not choose toolsets (`/mcp` without `?toolsets=`)."""
    meta: bool = False
    """Tools about tools (registry.META_TOOLSETS): no permission of their own, run by the runner itself."""
    always: bool = False
    """Listed whatever toolsets a client chooses, read-only mode included (`search` and `fetch`: ChatGPT needs
    them in every connection), except in discovery mode, which lists exactly the crm_tools_* tools."""
    aggregate: type[TenantAggregate] | None = None
    id_field: str | None = None
    id_type: Any = None
    output: type | None = None
    present: Callable[[QueryContext, UUID], Any] | None = None
    """The entity in full, as `crm_<name>_get` shows it."""
    row: type | None = None
    present_row: Callable[[QueryContext, UUID], Any] | None = None
    """The entity in brief, as lists show it: what a change that is not about its details answers with."""
    exists: Callable[[Any, UUID, UUID], bool] | None = None
    """The read-model check (conn, organization, id) behind `require`."""
    subject: str = ""
    """How descriptions name one entity, e.g. 'a lead/client'."""
    loader: Callable[[UnitOfWork, UUID], Any] | None = None
    """Loads the aggregate when plain `uow.get` is not enough (the default pipeline exists before its first event)."""
    registry: Registry = registry

    def __post_init__(self) -> None:
        self.registry.add_toolset(self)

    # -- naming and plain declarations ---------------------------------------------------------------------
    def tool(self, suffix: str) -> str:
        return f"crm_{self.name}_{suffix}"

    def query(self, suffix: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@toolset.query("list", output=...)`: a read tool `crm_<name>_list`, `handler(query, ctx)`."""
        return self.registry.query(self.tool(suffix), **kw)

    def command(self, suffix: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@toolset.command("create", output=..., returns=UUID, present=...)`: `handler(command, uow)`."""
        return self.registry.command(self.tool(suffix), **kw)

    # -- the entity ------------------------------------------------------------------------------------------
    @property
    def entity(self) -> str:
        return self.aggregate.entity_name if self.aggregate is not None else self.name

    def require(self, ctx: QueryContext, entity_id: UUID) -> None:
        """NotFound (naming the id argument) unless the entity is in this organization's read model."""
        if self.exists is None or not self.exists(ctx.conn, ctx.org_id, entity_id):
            raise NotFound(self.entity, entity_id, field=self.id_field)

    def entity_id(self, struct: Any) -> UUID:
        return getattr(struct, self.id_field)

    def load(self, uow: UnitOfWork, struct: Any) -> Any:
        if self.loader is not None:
            return self.loader(uow, self.entity_id(struct))
        return uow.get(self.aggregate, self.entity_id(struct), field=self.id_field)

    def get(self, input: type[Struct], *, suffix: str = "get", reads: tuple[str, ...] = ()) -> None:
        """`crm_<name>_get`: the entity as its presenter renders it."""
        self.query(suffix, input=input, output=self.output, reads=reads)(
            lambda q, ctx: self.present(ctx, self.entity_id(q)))

    def act(self, suffix: str, input: type[Struct], act: Act, *, destructive: bool = False, output: type | None = None,
            present: Callable[..., Any] | None | bool = True, returns: type = UUID, presents_entity: bool = False,
            row: bool = False, reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> None:
        """A tool that loads the entity by its id argument, calls `act(aggregate, command, uow)` and saves.

        It returns what `act` returns, or the entity's id when that is None (always the id with
        `presents_entity`); `present` (default: the toolset's; with `row`, its brief form) renders that once
        the read models caught up; `present=None` returns it as it is (then give `output` and `returns`)."""
        if row and self.present_row is not None and present is True:
            present, output = self.present_row, output or self.row
        chosen = self.present if present is True else present

        def handle(cmd: Any, uow: UnitOfWork) -> Any:
            aggregate = self.load(uow, cmd)
            result = act(aggregate, cmd, uow)
            return aggregate.id if result is None or presents_entity else result

        self.command(suffix, input=input, output=output or self.output, returns=returns, present=chosen,
                     destructive=destructive, reads=reads, writes=writes)(handle)

    def update(self, input: type[Struct], change: Callable[[Any, Any, UnitOfWork], dict[str, Any]], *,
               suffix: str = "update", reads: tuple[str, ...] = ()) -> None:
        """`crm_<name>_update`: a partial update of an `Editable` aggregate with what `change` makes of the
        command (usually `sent(cmd, FIELDS)`: the fields that were sent)."""
        self.act(suffix, input, lambda agg, cmd, uow: agg.update(change(agg, cmd, uow)), presents_entity=True,
                 row=True, reads=reads)

    def delete(self, input: type[Struct], *, suffix: str = "delete", entity: str | None = None,
               act: Act | None = None) -> None:
        """`crm_<name>_delete`: the aggregate records its deletion, plainly or by `act(aggregate, command, uow)`
        where a rule may refuse it (a pipeline with open deals) or something goes with it (attachment content)."""

        def remove(aggregate: Any, cmd: Any, uow: UnitOfWork) -> Removed:
            if act is None:
                aggregate.delete()
            else:
                act(aggregate, cmd, uow)
            return Removed(id=aggregate.id, entity=entity or self.entity)

        self.act(suffix, input, remove, destructive=True, output=Removed, present=None, returns=Removed)

    # -- shapes many resources share ------------------------------------------------------------------------
    def _struct(self, name: str, base: type[Struct], doc: str, fields: list[tuple[str, Any]]) -> type[Struct]:
        return msgspec.defstruct(name, [(self.id_field, self.id_type), *fields], bases=(base,), kw_only=True,
                                 module=f"application.toolsets.{self.name}", namespace={"__doc__": doc})

    def tags(self, *, label: str, add_hint: str = "", reads: tuple[str, ...] = ()) -> None:
        """`crm_<name>_add_tag` and `_remove_tag` for an aggregate that is `domain.shared.Taggable`."""
        add = self._struct(f"Tag{label}", Command, f"Add a tag to {self.subject} (no effect if present)."
                                                    f"{add_hint}", [("tag", Tag)])
        remove = self._struct(f"Untag{label}", Command, f"Remove a tag from {self.subject}.", [("tag", Tag)])
        self.act("add_tag", add, lambda a, cmd, uow: a.add_tag(cmd.tag), presents_entity=True, row=True, reads=reads)
        self.act("remove_tag", remove, lambda a, cmd, uow: a.remove_tag(cmd.tag), destructive=True,
                 presents_entity=True, row=True, reads=reads)

    def assignment(self, *, label: str, assign_doc: str, unassign_doc: str, reads: tuple[str, ...] = ()) -> None:
        """`crm_<name>_assign` (to an active user of the organization) and `_unassign`."""
        assign = self._struct(f"Assign{label}", Command, assign_doc, [("user_id", UserId)])
        unassign = self._struct(f"Unassign{label}", Command, unassign_doc, [])

        def do_assign(agg: Any, cmd: Any, uow: UnitOfWork) -> None:
            ensure_user(uow.conn, uow.org_id, cmd.user_id, field="user_id")
            agg.assign(cmd.user_id)

        self.act("assign", assign, do_assign, presents_entity=True, row=True, reads=reads)
        self.act("unassign", unassign, lambda a, cmd, uow: a.unassign(), destructive=True, presents_entity=True,
                 row=True, reads=reads)

    def notes(self, *, subject_type: str, add_doc: str | None = None) -> None:
        """`crm_<name>_list_notes`, `_add_note`, `_update_note`, `_delete_note`: notes on the entity, kept as
        their own aggregates (domain.notes) and read model (projections.notes)."""
        label = subject_type.capitalize()
        note_id = Annotated[UUID, Meta(description=f"From crm_{self.name}_list_notes.")]
        listing = self._struct(f"List{label}Notes", ListQuery, f"Notes on {self.subject}, newest first.", [])
        add = self._struct(f"Add{label}Note", Command, add_doc or f"Add a note to {self.subject}.",
                           [("body", NoteBody)])
        update = self._struct(f"Update{label}Note", Command, f"Replace the text of a note on {self.subject}.",
                              [("note_id", note_id), ("body", NoteBody)])
        delete = self._struct(f"Delete{label}Note", Command, f"Delete a note from {self.subject}.",
                              [("note_id", note_id)])

        def load_note(uow: UnitOfWork, cmd: Any) -> Note:
            note = uow.get(Note, cmd.note_id, field="note_id")
            note.ensure_on(subject_type, self.entity_id(cmd))
            return note

        @self.query("list_notes", input=listing, output=Page[NoteOut])
        def list_notes(q: Any, ctx: QueryContext) -> Page[NoteOut]:
            self.require(ctx, self.entity_id(q))
            rows, cursor = notes_q.list_notes(ctx.conn, ctx.org_id, subject_type, self.entity_id(q), q.limit, q.cursor)
            return Page(items=[msgspec.convert(r, NoteOut) for r in rows], next_cursor=cursor)

        @self.command("add_note", input=add, output=NoteOut, returns=UUID, present=present_note)
        def add_note(cmd: Any, uow: UnitOfWork) -> UUID:
            self.load(uow, cmd)
            note = Note(org_id=uow.org_id, subject_type=subject_type, subject_id=self.entity_id(cmd), body=cmd.body,
                        author_id=uow.principal.user_id)
            uow.add(note)
            return note.id

        @self.command("update_note", input=update, output=NoteOut, returns=UUID, present=present_note)
        def update_note(cmd: Any, uow: UnitOfWork) -> UUID:
            load_note(uow, cmd).edit(cmd.body)
            return cmd.note_id

        @self.command("delete_note", input=delete, output=Removed, destructive=True)
        def delete_note(cmd: Any, uow: UnitOfWork) -> Removed:
            load_note(uow, cmd).delete()
            return Removed(id=cmd.note_id, entity="note")


def present_note(ctx: QueryContext, note_id: UUID) -> NoteOut:
    return msgspec.convert(notes_q.get_note(ctx.conn, ctx.org_id, note_id), NoteOut)
