"""The sales core's projections, added to the catalog by one appended line (others edit the catalog too)."""

from __future__ import annotations

from collections.abc import Callable

from projections.activities import ActivitiesProjection
from projections.base import Projection
from projections.deals import DealsProjection
from projections.pipelines import PipelinesProjection
from projections.services import ServicesProjection
from projections.timeline import TimelineProjection


def sales_projections() -> list[Projection]:
    return [PipelinesProjection(), DealsProjection(), ServicesProjection(), ActivitiesProjection(), TimelineProjection()]


def with_sales(base: Callable[[], list[Projection]]) -> Callable[[], list[Projection]]:
    def all_projections() -> list[Projection]:
        return [*base(), *sales_projections()]

    all_projections.__doc__ = base.__doc__
    return all_projections
