"""Every projection the product runs, in one list (serve, `flusia project`, rebuild and tests use it)."""

from __future__ import annotations

from projections.activities import ActivitiesProjection
from projections.base import Projection
from projections.clients import ClientsProjection
from projections.deals import DealsProjection
from projections.invoices import InvoicesProjection
from projections.notes import NotesProjection
from projections.pipelines import PipelinesProjection
from projections.newsletter import NewsletterProjection
from projections.projects import ProjectsProjection
from projections.qr_codes import QrCodesProjection
from projections.recordings import RecordingsProjection
from projections.services import ServicesProjection
from projections.settings import SettingsProjection
from projections.tasks import TasksProjection
from projections.timeline import TimelineProjection
from projections.whatsapp import WhatsappProjection
from projections.wiki import WikiProjection
from projections.workflows import WorkflowsProjection, WorkflowTriggers


def all_projections() -> list[Projection]:
    return [
        ClientsProjection(), NotesProjection(), RecordingsProjection(), TasksProjection(), ProjectsProjection(),
        WikiProjection(), PipelinesProjection(), DealsProjection(), ServicesProjection(), ActivitiesProjection(),
        TimelineProjection(), NewsletterProjection(), QrCodesProjection(), WorkflowsProjection(),
        SettingsProjection(), InvoicesProjection(), WhatsappProjection(),
        WorkflowTriggers(),  # last: the read models a run's first step reads have applied its event by then
    ]
