"""Notes on any subject, written once and reused by every resource with notes (clients now, deals later)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from msgspec import Struct

from application.service import QueryContext, UnitOfWork
from application.shapes import Page
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
    import msgspec

    return msgspec.convert(notes_q.get_note(ctx.conn, ctx.org_id, note_id), NoteOut)


def note_page(ctx: QueryContext, subject_type: str, subject_id: UUID, limit: int, cursor: str | None) -> Page[NoteOut]:
    import msgspec

    rows, next_cursor = notes_q.list_notes(ctx.conn, ctx.org_id, subject_type, subject_id, limit, cursor)
    return Page(items=[msgspec.convert(r, NoteOut) for r in rows], next_cursor=next_cursor)
