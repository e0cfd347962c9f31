"""Analytics: the `crm_stats_*` tools. Every number comes from SQL over read tables (projections/stats.py),
never from replaying events. Money is integer cents rendered as Money; rates are fraction and percent."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated
from uuid import UUID

from msgspec import Meta, Struct

from application.toolset import Toolset
from application.money import Money, money, percentage
from application.newsletter_sending import delivery_totals
from application.organization import org_settings, org_today
from application.runner import QueryContext
from application.shapes import Query
from domain.errors import DomainError
from domain.pipelines import default_pipeline_id
from projections import pipelines as pipelines_q
from projections import newsletter as newsletter_q
from projections import stats as stats_q

StartDate = date
EndDate = date  # inclusive: the tools say start_date..end_date

stats = Toolset("stats", title="Statistics", description="KPI snapshot, revenue, conversion, forecast")



class Rate(Struct, kw_only=True, omit_defaults=True):
    fraction: Annotated[float, Meta(description="0..1, e.g. 0.34")]
    percent: Annotated[float, Meta(description="0..100, e.g. 34.0")]


def rate(part: int, whole: int) -> Rate:
    f, p = percentage(part, whole)
    return Rate(fraction=f, percent=p)


def _period(start: date, end: date) -> None:
    if end < start:
        raise DomainError("end_date must not be before start_date", field="end_date")
    if (end - start).days > 3660:
        raise DomainError("the period can span at most 10 years", field="end_date")


def _month_bounds(today: date) -> tuple[date, date]:
    start = today.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return start, end


# -- revenue ---------------------------------------------------------------------------------------------
class RevenueGroup(Struct, kw_only=True, omit_defaults=True):
    key: str | None = None
    name: str | None = None
    revenue: Money
    won: int
    lost: int
    win_rate: Rate


class Revenue(Struct, kw_only=True, omit_defaults=True):
    start_date: date
    end_date: date
    currency: str
    total_revenue: Annotated[Money, Meta(description="Sum of the values of deals accepted (won) with close date in the period.")]
    win_rate: Annotated[Rate, Meta(description="won / (won + lost) among deals closed in the period.")]
    deals_won: int
    deals_lost: int
    average_won_value: Money
    by_pipeline: list[RevenueGroup]
    by_owner: list[RevenueGroup]
    by_month: list[RevenueGroup]


class GetRevenue(Query, kw_only=True):
    """Revenue of deals won in start_date..end_date: total, win rate, won/lost counts, average won value, by pipeline,
    owner and month. The deals: crm_deals_list(status='accepted', closed_from, closed_to)."""

    start_date: StartDate
    end_date: EndDate
    pipeline_id: UUID | None = None
    user_id: UUID | None = None


def _group(rows: list[dict], key: str, currency: str, name=None) -> list[RevenueGroup]:
    out = [RevenueGroup(key=None if r[key] is None else str(r[key]), name=name(r) if name else r.get("name"),
                        revenue=money(r["revenue_cents"], currency), won=r["won"], lost=r["lost"],
                        win_rate=rate(r["won"], r["won"] + r["lost"])) for r in rows]
    return out


@stats.query("revenue", output=Revenue, reads=("pipelines",))  # pipeline names
def revenue(q: GetRevenue, ctx: QueryContext) -> Revenue:
    _period(q.start_date, q.end_date)
    cur = org_settings(ctx.conn, ctx.org_id)["currency"]
    data = stats_q.revenue(ctx.conn, ctx.org_id, q.start_date, q.end_date, q.pipeline_id, q.user_id)
    t = data["total"]
    by_pipeline = sorted(_group(data["by_pipeline"], "pipeline_id", cur), key=lambda g: (-g.revenue.cents, g.key or ""))
    by_owner = sorted(_group(data["by_owner"], "owner_id", cur), key=lambda g: (-g.revenue.cents, g.key or ""))
    by_month = _group(data["by_month"], "month", cur, name=lambda r: r["month"].strftime("%Y-%m"))
    for g in by_month:
        g.key = g.name
    return Revenue(
        start_date=q.start_date, end_date=q.end_date, currency=cur, total_revenue=money(t["revenue_cents"], cur),
        win_rate=rate(t["won"], t["won"] + t["lost"]), deals_won=t["won"], deals_lost=t["lost"],
        average_won_value=money(round(t["revenue_cents"] / t["won"]) if t["won"] else 0, cur),
        by_pipeline=by_pipeline, by_owner=by_owner, by_month=by_month,
    )


# -- KPI snapshot ----------------------------------------------------------------------------------------
class KpiSnapshot(Struct, kw_only=True, omit_defaults=True):
    start_date: date
    end_date: date
    currency: str
    open_deals: int
    open_value: Money
    weighted_open_value: Money
    won_deals: int
    won_value: Money
    lost_deals: int
    win_rate: Rate
    new_leads: int
    leads_converted: int
    lead_conversion_rate: Rate
    tasks_overdue: int


class GetKpis(Query, kw_only=True):
    """KPIs: open deals and (weighted) value now; won/lost, new leads and conversion in the period (default this month);
    overdue tasks."""

    start_date: StartDate | None = None
    end_date: EndDate | None = None


@stats.query("kpi_snapshot", output=KpiSnapshot)
def kpi_snapshot(q: GetKpis, ctx: QueryContext) -> KpiSnapshot:
    today = org_today(ctx.conn, ctx.org_id)
    start, end = _month_bounds(today)
    start, end = q.start_date or start, q.end_date or end
    _period(start, end)
    cur = org_settings(ctx.conn, ctx.org_id)["currency"]
    open_ = stats_q.open_pipeline(ctx.conn, ctx.org_id)
    t = stats_q.revenue(ctx.conn, ctx.org_id, start, end, None, None)["total"]
    leads = stats_q.leads_in_period(ctx.conn, ctx.org_id, start, end)
    return KpiSnapshot(
        start_date=start, end_date=end, currency=cur, open_deals=open_["open_deals"],
        open_value=money(open_["open_value_cents"], cur), weighted_open_value=money(open_["weighted_cents"], cur),
        won_deals=t["won"], won_value=money(t["revenue_cents"], cur), lost_deals=t["lost"],
        win_rate=rate(t["won"], t["won"] + t["lost"]), new_leads=leads["new_leads"], leads_converted=leads["converted"],
        lead_conversion_rate=rate(leads["converted"], leads["new_leads"]),
        tasks_overdue=stats_q.overdue_tasks(ctx.conn, ctx.org_id, today),
    )


# -- pipeline conversion ---------------------------------------------------------------------------------
class StageConversion(Struct, kw_only=True, omit_defaults=True):
    stage_id: UUID
    name: str
    position: int
    probability: int
    entered: Annotated[int, Meta(description="Deals that entered this stage (in the period, if given).")]
    current_open: int
    conversion_to_next: Annotated[Rate | None, Meta(description="Share of deals entering this stage that entered the next.")]
    avg_days_in_stage: Annotated[float | None, Meta(description="Average days deals stayed here (finished stays only).")]


class PipelineConversion(Struct, kw_only=True, omit_defaults=True):
    pipeline_id: UUID
    pipeline_name: str
    won: int
    lost: int
    win_rate: Rate
    stages: list[StageConversion]


class GetConversion(Query, kw_only=True):
    """Stage-to-stage conversion of a pipeline: per stage, deals that entered, moved on, average days in it; won/lost
    and win rate. Optionally only deals entering stages in start_date..end_date."""

    pipeline_id: Annotated[UUID | None, Meta(description="Default: the organization's default pipeline.")] = None
    start_date: StartDate | None = None
    end_date: EndDate | None = None


@stats.query("pipeline_conversion", output=PipelineConversion, reads=("pipelines",))
def pipeline_conversion(q: GetConversion, ctx: QueryContext) -> PipelineConversion:
    pipeline = pipelines_q.get_pipeline(ctx.conn, ctx.org_id, q.pipeline_id or default_pipeline_id(ctx.org_id))
    rows = stats_q.pipeline_conversion(ctx.conn, ctx.org_id, pipeline["id"], q.start_date, q.end_date)
    stages = []
    for i, r in enumerate(rows):
        nxt = rows[i + 1]["entered"] if i + 1 < len(rows) else None
        stages.append(StageConversion(
            stage_id=r["stage_id"], name=r["name"], position=r["position"], probability=r["probability"],
            entered=r["entered"], current_open=r["current_open"],
            conversion_to_next=None if nxt is None else rate(min(nxt, r["entered"]), r["entered"]),
            avg_days_in_stage=None if r["avg_days_in_stage"] is None else float(r["avg_days_in_stage"]),
        ))
    o = stats_q.pipeline_outcomes(ctx.conn, ctx.org_id, pipeline["id"], q.start_date, q.end_date)
    return PipelineConversion(pipeline_id=pipeline["id"], pipeline_name=pipeline["name"], won=o["won"], lost=o["lost"],
                              win_rate=rate(o["won"], o["won"] + o["lost"]), stages=stages)


# -- leads by source -------------------------------------------------------------------------------------
class SourceRow(Struct, kw_only=True, omit_defaults=True):
    source: str
    new_leads: int
    converted: int
    conversion_rate: Rate


class LeadsBySource(Struct, kw_only=True, omit_defaults=True):
    start_date: date
    end_date: date
    total_new_leads: int
    sources: list[SourceRow]


class GetLeadsBySource(Query, kw_only=True):
    """New leads created in start_date..end_date per source (website, referral, ...), with how many became clients and
    the conversion rate."""

    start_date: StartDate
    end_date: EndDate


@stats.query("leads_by_source", output=LeadsBySource, reads=("clients",))  # the sources are client fields
def leads_by_source(q: GetLeadsBySource, ctx: QueryContext) -> LeadsBySource:
    _period(q.start_date, q.end_date)
    rows = stats_q.leads_by_source(ctx.conn, ctx.org_id, q.start_date, q.end_date)
    return LeadsBySource(start_date=q.start_date, end_date=q.end_date, total_new_leads=sum(r["new_leads"] for r in rows),
                         sources=[SourceRow(source=r["source"], new_leads=r["new_leads"], converted=r["converted"],
                                            conversion_rate=rate(r["converted"], r["new_leads"])) for r in rows])


# -- activity by user ------------------------------------------------------------------------------------
class UserActivity(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID | None = None
    user_name: str | None = None
    calls: int
    meetings: int
    emails: int
    notes: int
    tasks_done: int


class ActivityByUser(Struct, kw_only=True, omit_defaults=True):
    start_date: date
    end_date: date
    users: list[UserActivity]


class GetActivityByUser(Query, kw_only=True):
    """Per user, in start_date..end_date: calls, meetings, e-mails and notes logged, and tasks completed."""

    start_date: StartDate
    end_date: EndDate


@stats.query("activity_by_user", output=ActivityByUser)
def activity_by_user(q: GetActivityByUser, ctx: QueryContext) -> ActivityByUser:
    _period(q.start_date, q.end_date)
    rows = stats_q.activity_by_user(ctx.conn, ctx.org_id, q.start_date, q.end_date)
    return ActivityByUser(start_date=q.start_date, end_date=q.end_date, users=[UserActivity(**r) for r in rows])


# -- tasks overview --------------------------------------------------------------------------------------
class AssigneeTasks(Struct, kw_only=True, omit_defaults=True):
    user_id: UUID | None = None
    user_name: str | None = None
    open: int
    overdue: int
    due_today: int
    done: int


class TasksOverview(Struct, kw_only=True, omit_defaults=True):
    today: date
    open: int
    overdue: int
    done: int
    by_assignee: list[AssigneeTasks]


class GetTasksOverview(Query, kw_only=True):
    """Tasks per assignee: open, overdue (past due in the organization's timezone), due today, done."""


@stats.query("tasks_overview", output=TasksOverview)
def tasks_overview(q: GetTasksOverview, ctx: QueryContext) -> TasksOverview:
    today = org_today(ctx.conn, ctx.org_id)
    rows = [AssigneeTasks(**r) for r in stats_q.tasks_overview(ctx.conn, ctx.org_id, today)]
    return TasksOverview(today=today, open=sum(r.open for r in rows), overdue=sum(r.overdue for r in rows),
                         done=sum(r.done for r in rows), by_assignee=rows)


# -- forecast --------------------------------------------------------------------------------------------
class ForecastMonth(Struct, kw_only=True, omit_defaults=True):
    month: Annotated[str | None, Meta(description="YYYY-MM of the expected close date; null: no expected date.")]
    deals: int
    value: Money
    weighted_value: Annotated[Money, Meta(description="Sum of value x stage win probability.")]


class Forecast(Struct, kw_only=True, omit_defaults=True):
    currency: str
    total_value: Money
    total_weighted_value: Money
    months: list[ForecastMonth]


class GetForecast(Query, kw_only=True):
    """Weighted forecast: open deals by expected close month, with total value and value weighted by each stage's win
    probability. Optionally for one pipeline or owner."""

    pipeline_id: UUID | None = None
    user_id: UUID | None = None


@stats.query("forecast", output=Forecast)
def forecast(q: GetForecast, ctx: QueryContext) -> Forecast:
    cur = org_settings(ctx.conn, ctx.org_id)["currency"]
    rows = stats_q.forecast(ctx.conn, ctx.org_id, q.pipeline_id, q.user_id)
    months = [ForecastMonth(month=r["month"].strftime("%Y-%m") if r["month"] else None, deals=r["deals"],
                            value=money(r["value_cents"], cur), weighted_value=money(r["weighted_cents"], cur)) for r in rows]
    return Forecast(currency=cur, total_value=money(sum(m.value.cents for m in months), cur),
                    total_weighted_value=money(sum(m.weighted_value.cents for m in months), cur), months=months)


# -- newsletter ------------------------------------------------------------------------------------------
NO_CAMPAIGNS = ("no newsletter campaign has been sent by this organization yet, so there are no delivery, open or "
                "click figures (this is not a 0% rate)")


class CampaignStats(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    started_at: datetime
    recipients: int
    delivered: Annotated[int, Meta(description="Accepted by the mail server.")]
    bounced: int
    unique_opens: int
    unique_clicks: int
    unsubscribes: int
    delivery_rate: Rate
    open_rate: Annotated[Rate, Meta(description="unique opens / delivered (a lower bound: many clients block images).")]
    click_rate: Annotated[Rate, Meta(description="unique clicks / delivered.")]


class NewsletterPerformance(Struct, kw_only=True, omit_defaults=True):
    start_date: date
    end_date: date
    available: Annotated[bool, Meta(description=(
        "false when there is nothing to measure: then `reason` says why and no figures are given at all."))]
    reason: str | None = None
    campaigns: list[CampaignStats] = []
    recipients: int | None = None
    delivered: int | None = None
    delivery_rate: Rate | None = None
    open_rate: Rate | None = None
    click_rate: Rate | None = None


class GetNewsletterPerformance(Query, kw_only=True):
    """Newsletter campaigns started in start_date..end_date: delivered, bounced, opens, clicks, unsubscribes and rates,
    per campaign and overall. Nothing to measure: `available` false, a `reason`, no figures."""

    start_date: StartDate
    end_date: EndDate


@stats.query("newsletter_performance", output=NewsletterPerformance, reads=("newsletter",))
def newsletter_performance(q: GetNewsletterPerformance, ctx: QueryContext) -> NewsletterPerformance:
    _period(q.start_date, q.end_date)
    if not newsletter_q.has_campaigns(ctx.conn, ctx.org_id):
        return NewsletterPerformance(start_date=q.start_date, end_date=q.end_date, available=False, reason=NO_CAMPAIGNS)
    rows = newsletter_q.campaign_performance(ctx.conn, ctx.org_id, q.start_date, q.end_date)
    if not rows:
        return NewsletterPerformance(start_date=q.start_date, end_date=q.end_date, available=False,
                                     reason="no campaign started sending in this period; try a wider one")
    totals = delivery_totals(ctx.conn, ctx.org_id, [r["id"] for r in rows])
    campaigns = []
    for r in rows:
        d = totals.get(r["id"], {"sent": 0, "bounced": 0})
        campaigns.append(CampaignStats(
            id=r["id"], name=r["name"], started_at=r["started_at"], recipients=r["recipients_count"],
            delivered=d["sent"], bounced=d["bounced"], unique_opens=r["unique_opens"], unique_clicks=r["unique_clicks"],
            unsubscribes=r["unsubscribes"], delivery_rate=rate(d["sent"], r["recipients_count"]),
            open_rate=rate(r["unique_opens"], d["sent"]), click_rate=rate(r["unique_clicks"], d["sent"])))
    recipients, delivered = sum(c.recipients for c in campaigns), sum(c.delivered for c in campaigns)
    return NewsletterPerformance(
        start_date=q.start_date, end_date=q.end_date, available=True, campaigns=campaigns, recipients=recipients,
        delivered=delivered, delivery_rate=rate(delivered, recipients),
        open_rate=rate(sum(c.unique_opens for c in campaigns), delivered),
        click_rate=rate(sum(c.unique_clicks for c in campaigns), delivered),
    )
