"""Notes on any subject, written once: the read model, the domain calls and the four tools
(`crm_<resource>_list_notes`, `_add_note`, `_update_note`, `_delete_note`) that each resource with notes declares
with one call to `note_tools`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

from application.registry import registry
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, ListQuery, NoteBody, Page, Removed
from domain.base import TenantAggregate
from domain.notes import Note
from projections import notes as notes_q


class NoteOut(Struct, kw_only=True):
    id: UUID
    subject_type: str
    subject_id: UUID
    body: str
    author_id: UUID | None
    created_at: datetime
    updated_at: datetime


def add_note(uow: UnitOfWork, subject_type: str, subject_id: UUID, body: str) -> UUID:
    note = Note(org_id=uow.org_id, subject_type=subject_type, subject_id=subject_id, body=body,
                author_id=uow.principal.user_id)
    uow.add(note)
    return note.id


def load_note(uow: UnitOfWork, subject_type: str, subject_id: UUID, note_id: UUID) -> Note:
    note = uow.get(Note, note_id, field="note_id")
    note.ensure_on(subject_type, subject_id)
    return note


def present_note(ctx: QueryContext, note_id: UUID) -> NoteOut:
    return msgspec.convert(notes_q.get_note(ctx.conn, ctx.org_id, note_id), NoteOut)


def note_page(ctx: QueryContext, subject_type: str, subject_id: UUID, limit: int, cursor: str | None) -> Page[NoteOut]:
    rows, next_cursor = notes_q.list_notes(ctx.conn, ctx.org_id, subject_type, subject_id, limit, cursor)
    return Page(items=[msgspec.convert(r, NoteOut) for r in rows], next_cursor=next_cursor)


def note_tools(
    resource: str,
    *,
    subject_type: str,
    subject: str,
    aggregate: type[TenantAggregate],
    id_field: str,
    id_type: Any,
    require: Callable[[QueryContext, UUID], None],
    add_doc: str | None = None,
) -> None:
    """Declare the four note tools of one resource. `subject` is how descriptions name it ("a deal")."""
    module = f"application.{resource}"
    label = subject_type.capitalize()
    note_id = Annotated[UUID, Meta(description=f"From crm_{resource}_list_notes.")]

    def struct(name: str, base: type[Struct], doc: str, fields: list[tuple[str, Any]]) -> type[Struct]:
        return msgspec.defstruct(name, [(id_field, id_type), *fields], bases=(base,), kw_only=True, module=module,
                                 namespace={"__doc__": doc})

    list_notes = struct(f"List{label}Notes", ListQuery, f"Notes on {subject}, newest first.", [])
    add = struct(f"Add{label}Note", Command, add_doc or f"Add a note to {subject}.", [("body", NoteBody)])
    update = struct(f"Update{label}Note", Command, f"Replace the text of a note on {subject}.",
                    [("note_id", note_id), ("body", NoteBody)])
    delete = struct(f"Delete{label}Note", Command, f"Delete a note from {subject}.", [("note_id", note_id)])

    def list_handler(q: Any, ctx: QueryContext) -> Page[NoteOut]:
        require(ctx, getattr(q, id_field))
        return note_page(ctx, subject_type, getattr(q, id_field), q.limit, q.cursor)

    def add_handler(cmd: Any, uow: UnitOfWork) -> UUID:
        uow.get(aggregate, getattr(cmd, id_field), field=id_field)
        return add_note(uow, subject_type, getattr(cmd, id_field), cmd.body)

    def update_handler(cmd: Any, uow: UnitOfWork) -> UUID:
        load_note(uow, subject_type, getattr(cmd, id_field), cmd.note_id).edit(cmd.body)
        return cmd.note_id

    def delete_handler(cmd: Any, uow: UnitOfWork) -> Removed:
        load_note(uow, subject_type, getattr(cmd, id_field), cmd.note_id).delete()
        return Removed(id=cmd.note_id, entity="note")

    registry.query(f"crm_{resource}_list_notes", input=list_notes, output=Page[NoteOut])(list_handler)
    registry.command(f"crm_{resource}_add_note", input=add, output=NoteOut, returns=UUID, present=present_note)(add_handler)
    registry.command(f"crm_{resource}_update_note", input=update, output=NoteOut, returns=UUID,
                     present=present_note)(update_handler)
    registry.command(f"crm_{resource}_delete_note", input=delete, output=Removed, destructive=True)(delete_handler)
