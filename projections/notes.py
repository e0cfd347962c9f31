"""Notes read model, shared by every resource that has notes (subject_type names the resource)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.clients import Client
from domain.errors import NotFound
from domain.notes import Note
from domain.personal_data import ERASED
from projections.base import Projection, handles, touch
from projections.pagination import NEWEST, paginate

NOTE_COLUMNS = ("id, subject_type, subject_id, body, author_id,"
                " (SELECT name FROM users WHERE users.id = author_id) AS author_name, created_at, updated_at")


class NotesProjection(Projection):
    name = "notes"
    tables = ("notes",)
    resources = ("clients", "deals")

    @handles(Note.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO notes (id, organization_id, subject_type, subject_id, body, author_id, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.subject_type, e.subject_id, e.body, e.author_id, e.timestamp, e.timestamp),
        )

    @handles(Note.Edited)
    def edited(self, cur: Any, e: Any) -> None:
        touch(cur, "notes", e, "body = %s", (e.body,))

    @handles(Note.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM notes WHERE id = %s", (e.originator_id,))

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        """Notes of a merged duplicate move over to the survivor."""
        cur.execute(
            "UPDATE notes SET subject_id = %s WHERE subject_type = 'client' AND subject_id = %s",
            (e.survivor_id, e.originator_id),
        )

    @handles(Client.Deleted)
    def client_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM notes WHERE subject_type = 'client' AND subject_id = %s", (e.originator_id,))

    @handles(Client.PersonalDataErased)
    def client_erased(self, cur: Any, e: Any) -> None:
        """Notes about a person whose data was erased (application/personal_data.py) read as erased."""
        cur.execute("UPDATE notes SET body = %s WHERE subject_type = 'client' AND subject_id = %s", (ERASED, e.originator_id))


def list_notes(conn: Any, org_id: UUID, subject_type: str, subject_id: UUID, limit: int, cursor: str | None):
    return paginate(
        conn, NOTE_COLUMNS, "FROM notes WHERE organization_id = %s AND subject_type = %s AND subject_id = %s",
        [org_id, subject_type, subject_id], NEWEST, limit, cursor,
    )


def get_note(conn: Any, org_id: UUID, note_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {NOTE_COLUMNS} FROM notes WHERE organization_id = %s AND id = %s", (org_id, note_id)).fetchone()
    if row is None:
        raise NotFound("note", note_id, field="note_id")
    return row
