"""Call recordings read model."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.clients import Client
from domain.errors import NotFound
from domain.personal_data import ERASED
from domain.recordings import Recording
from projections.base import Projection, handles
from projections.pagination import NEWEST, paginate

EXCERPT_CHARS = 280
SUMMARY_COLUMNS = (
    "id, client_id, title, media_url, duration_seconds, direction, recorded_at, created_by, created_at,"
    f" left(transcript, {EXCERPT_CHARS}) AS transcript_excerpt, transcript IS NOT NULL AS has_transcript"
)


class RecordingsProjection(Projection):
    name = "recordings"
    tables = ("recordings",)
    resources = ("clients",)

    @handles(Recording.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO recordings (id, organization_id, client_id, title, media_url, duration_seconds, transcript,"
            " direction, recorded_at, created_by, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.client_id, e.title, e.media_url, e.duration_seconds, e.transcript,
             e.direction, e.recorded_at, e.created_by, e.timestamp),
        )

    @handles(Recording.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM recordings WHERE id = %s", (e.originator_id,))

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE recordings SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))

    @handles(Client.Deleted)
    def client_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM recordings WHERE client_id = %s", (e.originator_id,))

    @handles(Client.PersonalDataErased)
    def client_erased(self, cur: Any, e: Any) -> None:
        """Transcripts of a person whose data was erased (application/personal_data.py) read as erased."""
        cur.execute("UPDATE recordings SET transcript = %s WHERE client_id = %s AND transcript IS NOT NULL",
                    (ERASED, e.originator_id))


def list_recordings(conn: Any, org_id: UUID, client_id: UUID, limit: int, cursor: str | None):
    return paginate(
        conn, SUMMARY_COLUMNS, "FROM recordings WHERE organization_id = %s AND client_id = %s",
        [org_id, client_id], NEWEST, limit, cursor,
    )


def get_recording(conn: Any, org_id: UUID, recording_id: UUID) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {SUMMARY_COLUMNS}, transcript FROM recordings WHERE organization_id = %s AND id = %s",
        (org_id, recording_id),
    ).fetchone()
    if row is None:
        raise NotFound("recording", recording_id, field="recording_id")
    return row
