"""Pipelines and their stages: the `crm_pipelines_*` tools.

Every organization has a default pipeline 'Sales' (New 10%, Qualified 30%, Proposal 60%, Negotiation 80%).
It is created lazily and deterministically (see domain.pipelines): read tools show it with fixed ids
before it was ever written, and `load_pipeline` records it, with the same ids, the first time a command
needs it. That needs no change to organization creation and is safe under concurrent first use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError
from msgspec import UNSET, Meta, Struct, UnsetType

from application.toolset import Toolset
from application.money import Money, money
from application.organization import org_settings
from application.runner import QueryContext, UnitOfWork
from application.shapes import Command, Query
from domain.pipelines import Pipeline, default_pipeline_id
from projections import deals as deals_q
from projections import pipelines as pipelines_q

PipelineId = Annotated[UUID, Meta(description="From crm_pipelines_list.")]
StageId = Annotated[UUID, Meta(description="From crm_pipelines_get.")]
PipelineName = Annotated[str, Meta(min_length=1, max_length=100)]
StageName = Annotated[str, Meta(min_length=1, max_length=100)]
Probability = Annotated[int, Meta(ge=0, le=100, description="Win probability, percent.")]


class StageOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    position: int
    probability: int


class PipelineOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    is_default: bool
    stages: list[StageOut]
    created_at: datetime
    updated_at: datetime


class PipelineList(Struct, kw_only=True, omit_defaults=True):
    items: list[PipelineOut]


class StageList(Struct, kw_only=True, omit_defaults=True):
    pipeline_id: UUID
    items: list[StageOut]


def load_pipeline(uow: UnitOfWork, pipeline_id: UUID, *, field: str = "pipeline_id") -> Pipeline:
    """The pipeline, recording the organization's default pipeline first if this is its first use."""
    if pipeline_id == default_pipeline_id(uow.org_id):
        try:
            uow.store.repository.get(pipeline_id)
        except AggregateNotFoundError:
            pipeline = Pipeline.create_default(uow.org_id)
            uow.add(pipeline)
            return pipeline
    return uow.get(Pipeline, pipeline_id, field=field)


def present_pipeline(ctx: QueryContext, pipeline_id: UUID) -> PipelineOut:
    return msgspec.convert(pipelines_q.get_pipeline(ctx.conn, ctx.org_id, pipeline_id), PipelineOut)


pipelines = Toolset(
    "pipelines", title="Pipelines", description="Pipelines, stages with win probability, the kanban board",
    aggregate=Pipeline, id_field="pipeline_id", id_type=PipelineId, output=PipelineOut, present=present_pipeline,
    loader=load_pipeline, subject="a pipeline",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListPipelines(Query, kw_only=True):
    """The sales pipelines with their stages in order (default pipeline first); ids for crm_deals_create,
    crm_pipelines_board and crm_stats_revenue."""


@pipelines.query("list", output=PipelineList)
def list_pipelines(q: ListPipelines, ctx: QueryContext) -> PipelineList:
    return PipelineList(items=[msgspec.convert(r, PipelineOut) for r in pipelines_q.list_pipelines(ctx.conn, ctx.org_id)])


class GetPipeline(Query, kw_only=True):
    """One pipeline with its stages in order and each stage's win probability."""

    pipeline_id: PipelineId


@pipelines.query("get", output=PipelineOut)
def get_pipeline(q: GetPipeline, ctx: QueryContext) -> PipelineOut:
    return present_pipeline(ctx, q.pipeline_id)


class ListStages(Query, kw_only=True):
    """The stages of a pipeline in order, with win probability (percent)."""

    pipeline_id: PipelineId


@pipelines.query("list_stages", output=StageList)
def list_stages(q: ListStages, ctx: QueryContext) -> StageList:
    p = present_pipeline(ctx, q.pipeline_id)
    return StageList(pipeline_id=p.id, items=p.stages)


class BoardDeal(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    title: str
    client_id: UUID | None = None
    value: Money
    owner_id: UUID | None = None
    expected_close_date: str | None = None


class BoardColumn(Struct, kw_only=True, omit_defaults=True):
    stage_id: UUID
    name: str
    position: int
    probability: int
    count: int
    total_value: Money
    weighted_value: Money
    deals: list[BoardDeal]


class Board(Struct, kw_only=True, omit_defaults=True):
    pipeline_id: UUID
    pipeline_name: str
    currency: str
    open_deals: int
    total_value: Money
    weighted_value: Money
    stages: list[BoardColumn]


class GetBoard(Query, kw_only=True):
    """Kanban board of a pipeline: open deals by stage, with count, total and probability-weighted value per stage, and
    each stage's largest deals."""

    pipeline_id: UUID | None = None
    owner_id: UUID | None = None
    deals_per_stage: Annotated[int, Meta(ge=0, le=100)] = 10


@pipelines.query("board", output=Board, reads=("deals",))
def board(q: GetBoard, ctx: QueryContext) -> Board:
    pipeline = present_pipeline(ctx, q.pipeline_id or default_pipeline_id(ctx.org_id))
    currency = org_settings(ctx.conn, ctx.org_id)["currency"]
    data = deals_q.board(ctx.conn, ctx.org_id, pipeline.id, q.deals_per_stage, q.owner_id)
    columns = []
    for s in pipeline.stages:
        t = data["totals"].get(s.id, {"count": 0, "value_cents": 0})
        deals = [BoardDeal(id=d["id"], title=d["title"], client_id=d["client_id"], value=money(d["value_cents"], currency),
                           owner_id=d["owner_id"],
                           expected_close_date=d["expected_close_date"].isoformat() if d["expected_close_date"] else None)
                 for d in data["deals"] if d["stage_id"] == s.id]
        columns.append(BoardColumn(stage_id=s.id, name=s.name, position=s.position, probability=s.probability,
                                   count=t["count"], total_value=money(t["value_cents"], currency),
                                   weighted_value=money(round(t["value_cents"] * s.probability / 100), currency),
                                   deals=deals))
    total = sum(c.total_value.cents for c in columns)
    weighted = sum(c.weighted_value.cents for c in columns)
    return Board(pipeline_id=pipeline.id, pipeline_name=pipeline.name, currency=currency,
                 open_deals=sum(c.count for c in columns), total_value=money(total, currency),
                 weighted_value=money(weighted, currency), stages=columns)


# -- commands --------------------------------------------------------------------------------------------
class NewStage(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: StageName
    probability: Probability = 0


class CreatePipeline(Command, kw_only=True):
    """Create a sales pipeline with its stages in order, e.g. stages=[{"name": "Lead", "probability": 10}, {"name":
    "Offer", "probability": 50}]. Returns the stage ids for crm_deals_create."""

    name: PipelineName
    stages: Annotated[list[NewStage], Meta(min_length=1, max_length=30)]


@pipelines.command("create", output=PipelineOut, returns=UUID, present=present_pipeline)
def create_pipeline(cmd: CreatePipeline, uow: UnitOfWork) -> UUID:
    pipeline = Pipeline.create(uow.org_id, cmd.name, [(s.name, s.probability) for s in cmd.stages])
    uow.add(pipeline)
    return pipeline.id


class UpdatePipeline(Command, kw_only=True):
    """Rename a pipeline (stages are changed with the crm_pipelines_*_stage tools)."""

    pipeline_id: PipelineId
    name: PipelineName | UnsetType = UNSET


pipelines.act("update", UpdatePipeline,
              lambda p, cmd, uow: p.rename(cmd.name) if cmd.name is not UNSET else None, presents_entity=True)


class DeletePipeline(Command, kw_only=True):
    """Delete a pipeline without open deals (move, close or delete them first); closed deals keep their history and
    still count in statistics."""

    pipeline_id: PipelineId


pipelines.delete(DeletePipeline, act=lambda pipeline, cmd, uow: pipeline.delete_checked(
    deals_q.count_open_in_pipeline(uow.conn, uow.org_id, pipeline.id)))


class AddStage(Command, kw_only=True):
    """Add a stage to a pipeline at a position (0 = first; omit to append at the end)."""

    pipeline_id: PipelineId
    name: StageName
    probability: Probability = 0
    position: Annotated[int, Meta(ge=0, le=100)] | None = None


pipelines.act("add_stage", AddStage, lambda p, cmd, uow: p.add_stage(cmd.name, cmd.probability, cmd.position),
              presents_entity=True)


class UpdateStage(Command, kw_only=True):
    """Rename a stage or change its win probability."""

    pipeline_id: PipelineId
    stage_id: StageId
    name: StageName | UnsetType = UNSET
    probability: Probability | UnsetType = UNSET


pipelines.act("update_stage", UpdateStage, lambda p, cmd, uow: p.update_stage(
    cmd.stage_id, None if cmd.name is UNSET else cmd.name, None if cmd.probability is UNSET else cmd.probability),
    presents_entity=True)


class ReorderStages(Command, kw_only=True):
    """Set the order of a pipeline's stages: list every stage id exactly once, in the new order."""

    pipeline_id: PipelineId
    stage_ids: Annotated[list[UUID], Meta(min_length=1, max_length=30)]


pipelines.act("reorder_stages", ReorderStages, lambda p, cmd, uow: p.reorder_stages(cmd.stage_ids),
              presents_entity=True)


class RemoveStage(Command, kw_only=True):
    """Remove an empty stage (move its deals first with crm_deals_move_stage)."""

    pipeline_id: PipelineId
    stage_id: StageId


pipelines.act("remove_stage", RemoveStage, lambda p, cmd, uow: p.remove_stage(
    cmd.stage_id, deals_q.count_in_stage(uow.conn, uow.org_id, cmd.stage_id)), destructive=True, presents_entity=True)
