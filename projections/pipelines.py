"""Pipelines read model (pipelines + pipeline_stages) and its queries.

The organization's default pipeline exists virtually until its first event (see domain.pipelines): the
queries here add it, with its deterministic ids, when no row for it has ever been written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.pipelines import DEFAULT_PIPELINE_NAME, Pipeline, default_pipeline_id, default_stages
from projections.base import Projection, handles, touch

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class PipelinesProjection(Projection):
    name = "pipelines"
    tables = ("pipelines", "pipeline_stages")
    resources = ("pipelines",)

    def _write_positions(self, cur: Any, pipeline_id: UUID, stage_ids: list[str]) -> None:
        for pos, sid in enumerate(stage_ids):
            cur.execute("UPDATE pipeline_stages SET position = %s WHERE id = %s", (pos, sid))

    def _live_stage_ids(self, cur: Any, pipeline_id: UUID) -> list[str]:
        cur.execute("SELECT id FROM pipeline_stages WHERE pipeline_id = %s AND NOT deleted ORDER BY position, id",
                    (pipeline_id,))
        return [str(r["id"] if isinstance(r, dict) else r[0]) for r in cur.fetchall()]

    @handles(Pipeline.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO pipelines (id, organization_id, name, is_default, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (e.originator_id, e.org_id, e.name, e.is_default, e.timestamp, e.timestamp),
        )
        for pos, s in enumerate(e.stages):
            cur.execute(
                "INSERT INTO pipeline_stages (id, organization_id, pipeline_id, name, position, probability)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (s["id"], e.org_id, e.originator_id, s["name"], pos, s["probability"]),
            )

    @handles(Pipeline.Renamed)
    def renamed(self, cur: Any, e: Any) -> None:
        touch(cur, "pipelines", e, "name = %s", (e.name,))

    @handles(Pipeline.StageAdded)
    def stage_added(self, cur: Any, e: Any) -> None:
        ids = self._live_stage_ids(cur, e.originator_id)
        cur.execute(
            "INSERT INTO pipeline_stages (id, organization_id, pipeline_id, name, position, probability)"
            " SELECT %s, organization_id, id, %s, %s, %s FROM pipelines WHERE id = %s",
            (e.stage_id, e.name, e.position, e.probability, e.originator_id),
        )
        ids.insert(e.position, str(e.stage_id))
        self._write_positions(cur, e.originator_id, ids)
        touch(cur, "pipelines", e)

    @handles(Pipeline.StageUpdated)
    def stage_updated(self, cur: Any, e: Any) -> None:
        for key in ("name", "probability"):
            if key in e.changes:
                cur.execute(f"UPDATE pipeline_stages SET {key} = %s WHERE id = %s", (e.changes[key], e.stage_id))  # noqa: S608
        touch(cur, "pipelines", e)

    @handles(Pipeline.StagesReordered)
    def reordered(self, cur: Any, e: Any) -> None:
        self._write_positions(cur, e.originator_id, list(e.stage_ids))
        touch(cur, "pipelines", e)

    @handles(Pipeline.StageRemoved)
    def stage_removed(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE pipeline_stages SET deleted = true, position = -1 WHERE id = %s", (e.stage_id,))
        self._write_positions(cur, e.originator_id, self._live_stage_ids(cur, e.originator_id))
        touch(cur, "pipelines", e)

    @handles(Pipeline.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        touch(cur, "pipelines", e, "deleted = true")


# -- queries ---------------------------------------------------------------------------------------------
def _virtual_default(org_id: UUID) -> dict[str, Any]:
    return {"id": default_pipeline_id(org_id), "name": DEFAULT_PIPELINE_NAME, "is_default": True,
            "created_at": EPOCH, "updated_at": EPOCH,
            "stages": [{"id": UUID(s["id"]), "name": s["name"], "position": i, "probability": s["probability"]}
                       for i, s in enumerate(default_stages(org_id))]}


def default_materialised(conn: Any, org_id: UUID) -> bool:
    return conn.execute("SELECT 1 FROM pipelines WHERE id = %s", (default_pipeline_id(org_id),)).fetchone() is not None


def list_stages(conn: Any, org_id: UUID, pipeline_ids: list[UUID]) -> dict[UUID, list[dict[str, Any]]]:
    rows = conn.execute(
        "SELECT id, pipeline_id, name, position, probability FROM pipeline_stages"
        " WHERE organization_id = %s AND pipeline_id = ANY(%s) AND NOT deleted ORDER BY pipeline_id, position",
        (org_id, pipeline_ids),
    ).fetchall()
    out: dict[UUID, list[dict[str, Any]]] = {p: [] for p in pipeline_ids}
    for r in rows:
        out[r.pop("pipeline_id")].append(r)
    return out


def list_pipelines(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, name, is_default, created_at, updated_at FROM pipelines"
        " WHERE organization_id = %s AND NOT deleted ORDER BY is_default DESC, created_at, id",
        (org_id,),
    ).fetchall()
    stages = list_stages(conn, org_id, [r["id"] for r in rows])
    for r in rows:
        r["stages"] = stages[r["id"]]
    if not default_materialised(conn, org_id):
        rows.insert(0, _virtual_default(org_id))
    return rows


def get_pipeline(conn: Any, org_id: UUID, pipeline_id: UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, name, is_default, created_at, updated_at FROM pipelines"
        " WHERE organization_id = %s AND id = %s AND NOT deleted",
        (org_id, pipeline_id),
    ).fetchone()
    if row is None:
        if pipeline_id == default_pipeline_id(org_id) and not default_materialised(conn, org_id):
            return _virtual_default(org_id)
        raise NotFound("pipeline", pipeline_id, field="pipeline_id")
    row["stages"] = list_stages(conn, org_id, [pipeline_id])[pipeline_id]
    return row


def stage_home(conn: Any, org_id: UUID, stage_id: UUID) -> dict[str, Any] | None:
    """The pipeline a stage belongs to (name and id) and the stage's name, or None."""
    return conn.execute(
        "SELECT s.name AS stage_name, p.id AS pipeline_id, p.name AS pipeline_name FROM pipeline_stages s"
        " JOIN pipelines p ON p.id = s.pipeline_id WHERE s.organization_id = %s AND s.id = %s AND NOT s.deleted",
        (org_id, stage_id)).fetchone()
