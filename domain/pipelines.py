"""Pipelines: an ordered list of stages a deal moves through, each with a win probability (0-100).

Every organization starts with a default pipeline (New, Qualified, Proposal, Negotiation). Its id and its
stage ids are derived from the organization id (uuid5), so the default exists *virtually* before anyone
writes it: read tools show it with those ids, and the first command that needs it records its Created
event with exactly the same ids. Two concurrent first writers collide on the same aggregate id; the
service retries the loser, which then finds the pipeline. No background job, no migration per tenant.

Rules that need the deals (a stage may be removed only when empty, a pipeline deleted only without open
deals) receive the counts from the caller: the aggregate does not hold every deal.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.errors import Conflict, DomainError, NotFound

DEFAULT_PIPELINE_NAME = "Sales"
DEFAULT_STAGES = (("New", 10), ("Qualified", 30), ("Proposal", 60), ("Negotiation", 80))


def default_pipeline_id(org_id: UUID) -> UUID:
    return uuid5(NAMESPACE_URL, f"flusia:{org_id}:default-pipeline")


def default_stages(org_id: UUID) -> list[dict[str, Any]]:
    return [
        {"id": str(uuid5(NAMESPACE_URL, f"flusia:{org_id}:default-pipeline:stage:{i}")), "name": name, "probability": p}
        for i, (name, p) in enumerate(DEFAULT_STAGES)
    ]


class StageNotFound(NotFound):
    def __init__(self, stage_id: object, field: str = "stage_id") -> None:
        super().__init__("stage", stage_id, field=field)


class StageNotEmpty(Conflict):
    code = "stage_not_empty"


class PipelineInUse(Conflict):
    code = "pipeline_has_open_deals"


def _check_probability(p: int) -> int:
    if not isinstance(p, int) or not 0 <= p <= 100:
        raise DomainError("probability must be an integer percentage 0-100", field="probability")
    return p


class Pipeline(TenantAggregate):
    entity_name = "pipeline"

    @staticmethod
    def create_id(org_id: UUID, is_default: bool) -> UUID:
        return default_pipeline_id(org_id) if is_default else uuid4()

    @event("Created")
    def __init__(self, org_id: UUID, name: str, stages: list[dict[str, Any]], is_default: bool) -> None:
        self.org_id = org_id
        self.name = name
        self.is_default = is_default
        self.stages: list[dict[str, Any]] = [dict(s) for s in stages]
        self.deleted = False

    @classmethod
    def create(cls, org_id: UUID, name: str, stages: list[tuple[str, int]]) -> Pipeline:
        if not stages:
            raise DomainError("a pipeline needs at least one stage", field="stages")
        names = [n for n, _ in stages]
        if len(set(n.lower() for n in names)) != len(names):
            raise DomainError("stage names must be unique within a pipeline", field="stages")
        rows = [{"id": str(uuid4()), "name": n, "probability": _check_probability(p)} for n, p in stages]
        return cls(org_id=org_id, name=name, stages=rows, is_default=False)

    @classmethod
    def create_default(cls, org_id: UUID) -> Pipeline:
        return cls(org_id=org_id, name=DEFAULT_PIPELINE_NAME, stages=default_stages(org_id), is_default=True)

    # -- reading -----------------------------------------------------------------------------------------
    def stage_ids(self) -> list[UUID]:
        return [UUID(s["id"]) for s in self.stages]

    def has_stage(self, stage_id: UUID) -> bool:
        return str(stage_id) in {s["id"] for s in self.stages}

    def first_stage_id(self) -> UUID:
        return UUID(self.stages[0]["id"])

    def _require_stage(self, stage_id: UUID, field: str = "stage_id") -> int:
        for i, s in enumerate(self.stages):
            if s["id"] == str(stage_id):
                return i
        raise StageNotFound(stage_id, field)

    # -- pipeline ----------------------------------------------------------------------------------------
    def rename(self, name: str) -> None:
        if name != self.name:
            self._renamed(name=name)

    @event("Renamed")
    def _renamed(self, name: str) -> None:
        self.name = name

    def delete_checked(self, open_deals: int) -> None:
        if open_deals:
            raise PipelineInUse(
                f"the pipeline has {open_deals} open deal(s); move, close or delete them first", field="pipeline_id"
            )
        self.delete()

    # -- stages ------------------------------------------------------------------------------------------
    def add_stage(self, name: str, probability: int, position: int | None = None) -> UUID:
        if any(s["name"].lower() == name.lower() for s in self.stages):
            raise Conflict(f"a stage named {name!r} already exists in this pipeline", field="name")
        _check_probability(probability)
        pos = len(self.stages) if position is None else position
        if not 0 <= pos <= len(self.stages):
            raise DomainError(f"position must be between 0 and {len(self.stages)}", field="position")
        stage_id = uuid4()
        self._stage_added(stage_id=stage_id, name=name, probability=probability, position=pos)
        return stage_id

    @event("StageAdded")
    def _stage_added(self, stage_id: UUID, name: str, probability: int, position: int) -> None:
        stages = list(self.stages)
        stages.insert(position, {"id": str(stage_id), "name": name, "probability": probability})
        self.stages = stages

    def update_stage(self, stage_id: UUID, name: str | None, probability: int | None) -> None:
        i = self._require_stage(stage_id)
        changes: dict[str, Any] = {}
        if name is not None and name != self.stages[i]["name"]:
            if any(s["name"].lower() == name.lower() for j, s in enumerate(self.stages) if j != i):
                raise Conflict(f"a stage named {name!r} already exists in this pipeline", field="name")
            changes["name"] = name
        if probability is not None and probability != self.stages[i]["probability"]:
            changes["probability"] = _check_probability(probability)
        if changes:
            self._stage_updated(stage_id=stage_id, changes=changes)

    @event("StageUpdated")
    def _stage_updated(self, stage_id: UUID, changes: dict[str, Any]) -> None:
        self.stages = [{**s, **changes} if s["id"] == str(stage_id) else s for s in self.stages]

    def reorder_stages(self, stage_ids: list[UUID]) -> None:
        current = self.stage_ids()
        if sorted(map(str, stage_ids)) != sorted(map(str, current)):
            raise DomainError("stage_ids must list every stage of the pipeline exactly once", field="stage_ids")
        if list(stage_ids) != current:
            self._stages_reordered(stage_ids=[str(s) for s in stage_ids])

    @event("StagesReordered")
    def _stages_reordered(self, stage_ids: list[str]) -> None:
        by_id = {s["id"]: s for s in self.stages}
        self.stages = [by_id[str(s)] for s in stage_ids]

    def remove_stage(self, stage_id: UUID, deals_in_stage: int) -> None:
        self._require_stage(stage_id)
        if deals_in_stage:
            raise StageNotEmpty(
                f"the stage still holds {deals_in_stage} deal(s); move them to another stage first", field="stage_id"
            )
        if len(self.stages) == 1:
            raise DomainError("a pipeline keeps at least one stage", field="stage_id")
        self._stage_removed(stage_id=stage_id)

    @event("StageRemoved")
    def _stage_removed(self, stage_id: UUID) -> None:
        self.stages = [s for s in self.stages if s["id"] != str(stage_id)]
