"""Every projection the product runs, in one list (serve, `flusia project`, rebuild and tests use it)."""

from __future__ import annotations

from projections.base import Projection
from projections.clients import ClientsProjection
from projections.notes import NotesProjection
from projections.recordings import RecordingsProjection
from projections.tasks import TasksProjection
from projections.projects import ProjectsProjection  # noqa: E402
from projections.wiki import WikiProjection  # noqa: E402


def all_projections() -> list[Projection]:
    return [ClientsProjection(), NotesProjection(), RecordingsProjection(), TasksProjection(), ProjectsProjection(), WikiProjection()]
all_projections = __import__("projections.sales", fromlist=["with_sales"]).with_sales(all_projections)  # sales core
