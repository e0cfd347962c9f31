"""Analytics answered with SQL over the read tables (deals, deal_stage_history, clients, tasks, activities).

Nothing here replays events: each function is one or a few aggregate queries on indexed columns.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID


NIL = "'00000000-0000-0000-0000-000000000000'::uuid"


def _names(conn: Any, table: str, ids: set[Any]) -> dict[Any, str]:
    ids = {i for i in ids if i is not None}
    if not ids:
        return {}
    rows = conn.execute(f"SELECT id, name FROM {table} WHERE id = ANY(%s)", (list(ids),)).fetchall()  # noqa: S608
    return {r["id"]: r["name"] for r in rows}


def org_currency(conn: Any, org_id: UUID) -> str:
    row = conn.execute("SELECT currency FROM organizations WHERE id = %s", (org_id,)).fetchone()
    return row["currency"] if row else "EUR"


def revenue(conn: Any, org_id: UUID, start: date, end: date, pipeline_id: UUID | None, user_id: UUID | None) -> dict[str, Any]:
    """Won and lost deals closed in [start, end], overall and by pipeline, owner and month, in one pass over the
    per-day summary the deals projection maintains (deal_daily_stats)."""
    where = "organization_id = %(org)s AND day BETWEEN %(start)s AND %(end)s"
    if pipeline_id is not None:
        where += " AND pipeline_id = %(pipeline)s"
    if user_id is not None:
        where += " AND owner_id = %(owner)s"
    rows = conn.execute(
        f"""
        SELECT grouping(pipeline_id) AS gp, grouping(owner_id) AS go, grouping(month) AS gm,
               nullif(pipeline_id, {NIL}) AS pipeline_id, nullif(owner_id, {NIL}) AS owner_id, month,
               coalesce(sum(won), 0)::int AS won, coalesce(sum(lost), 0)::int AS lost,
               coalesce(sum(won_cents), 0)::bigint AS revenue_cents
        FROM (SELECT pipeline_id, owner_id, date_trunc('month', day::timestamp)::date AS month, won, lost, won_cents
              FROM deal_daily_stats WHERE {where}) x
        GROUP BY GROUPING SETS ((), (pipeline_id), (owner_id), (month))
        HAVING sum(won) + sum(lost) > 0 OR grouping(pipeline_id) + grouping(owner_id) + grouping(month) = 3
        """,
        {"org": org_id, "start": start, "end": end, "pipeline": pipeline_id, "owner": user_id},
    ).fetchall()
    total = next((r for r in rows if r["gp"] and r["go"] and r["gm"]), {"won": 0, "lost": 0, "revenue_cents": 0})
    by_pipeline = [r for r in rows if not r["gp"]]
    by_owner = [r for r in rows if not r["go"]]
    by_month = sorted((r for r in rows if not r["gm"]), key=lambda r: r["month"])
    pipelines = _names(conn, "pipelines", {r["pipeline_id"] for r in by_pipeline})
    users = _names(conn, "users", {r["owner_id"] for r in by_owner})
    for r in by_pipeline:
        r["name"] = pipelines.get(r["pipeline_id"])
    for r in by_owner:
        r["name"] = users.get(r["owner_id"])
    return {"total": total, "by_pipeline": by_pipeline, "by_owner": by_owner, "by_month": by_month}


def open_pipeline(conn: Any, org_id: UUID) -> dict[str, Any]:
    return conn.execute(
        "SELECT count(*) AS open_deals, coalesce(sum(value_cents), 0)::bigint AS open_value_cents,"
        " coalesce(round(sum(d.value_cents * coalesce(s.probability, 0)) / 100.0), 0)::bigint AS weighted_cents"
        " FROM deals d LEFT JOIN pipeline_stages s ON s.id = d.stage_id"
        " WHERE d.organization_id = %s AND d.status = 'open'",
        (org_id,),
    ).fetchone()


def leads_in_period(conn: Any, org_id: UUID, start: date, end: date) -> dict[str, Any]:
    """Leads created in the period (including those since converted) and conversions that happened in it."""
    return conn.execute(
        "SELECT count(*) FILTER (WHERE created_at::date BETWEEN %(s)s AND %(e)s AND (kind = 'lead' OR converted_at IS NOT NULL))"
        "   AS new_leads,"
        " count(*) FILTER (WHERE converted_at::date BETWEEN %(s)s AND %(e)s) AS converted"
        " FROM clients WHERE organization_id = %(org)s",
        {"org": org_id, "s": start, "e": end},
    ).fetchone()


def overdue_tasks(conn: Any, org_id: UUID, today: date) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM tasks WHERE organization_id = %s AND status = 'open' AND due_date < %s", (org_id, today)
    ).fetchone()["n"]


def pipeline_conversion(conn: Any, org_id: UUID, pipeline_id: UUID, start: date | None, end: date | None) -> list[dict[str, Any]]:
    """Per stage, in order: deals that entered it, deals now in it, average days spent in it (finished stays)."""
    period = ""
    if start is not None:
        period += " AND h.entered_at::date >= %(start)s"
    if end is not None:
        period += " AND h.entered_at::date <= %(end)s"
    return conn.execute(
        f"""
        SELECT s.id AS stage_id, s.name, s.position, s.probability,
               count(DISTINCT h.deal_id) AS entered,
               (SELECT count(*) FROM deals d WHERE d.organization_id = %(org)s AND d.stage_id = s.id AND d.status = 'open')
                 AS current_open,
               round((avg(extract(epoch FROM h.left_at - h.entered_at)) / 86400)::numeric, 2) AS avg_days_in_stage
        FROM pipeline_stages s
        LEFT JOIN deal_stage_history h ON h.stage_id = s.id AND h.organization_id = %(org)s{period}
        WHERE s.organization_id = %(org)s AND s.pipeline_id = %(p)s AND NOT s.deleted
        GROUP BY s.id ORDER BY s.position
        """,
        {"org": org_id, "p": pipeline_id, "start": start, "end": end},
    ).fetchall()


def pipeline_outcomes(conn: Any, org_id: UUID, pipeline_id: UUID, start: date | None, end: date | None) -> dict[str, Any]:
    return conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'accepted') AS won, count(*) FILTER (WHERE status = 'rejected') AS lost"
        " FROM deals WHERE organization_id = %(org)s AND pipeline_id = %(p)s"
        " AND (%(start)s::date IS NULL OR close_date >= %(start)s) AND (%(end)s::date IS NULL OR close_date <= %(end)s)",
        {"org": org_id, "p": pipeline_id, "start": start, "end": end},
    ).fetchone()


def leads_by_source(conn: Any, org_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT coalesce(source, 'unknown') AS source, count(*) AS new_leads,"
        " count(*) FILTER (WHERE converted_at IS NOT NULL) AS converted"
        " FROM clients WHERE organization_id = %s AND created_at::date BETWEEN %s AND %s"
        " AND (kind = 'lead' OR converted_at IS NOT NULL)"
        " GROUP BY 1 ORDER BY new_leads DESC, source",
        (org_id, start, end),
    ).fetchall()


def activity_by_user(conn: Any, org_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT user_id, sum(calls)::int AS calls, sum(meetings)::int AS meetings, sum(emails)::int AS emails,
               sum(notes)::int AS notes, sum(tasks_done)::int AS tasks_done
        FROM (
          SELECT user_id, (type = 'call')::int AS calls, (type = 'meeting')::int AS meetings,
                 (type = 'email')::int AS emails, (type = 'note')::int AS notes, 0 AS tasks_done
          FROM activities WHERE organization_id = %(org)s AND occurred_at::date BETWEEN %(s)s AND %(e)s
          UNION ALL
          SELECT assignee_id, 0, 0, 0, 0, 1 FROM tasks
          WHERE organization_id = %(org)s AND status = 'done' AND completed_at::date BETWEEN %(s)s AND %(e)s
        ) x GROUP BY user_id
        """,
        {"org": org_id, "s": start, "e": end},
    ).fetchall()
    names = _names(conn, "users", {r["user_id"] for r in rows})
    for r in rows:
        r["user_name"] = names.get(r["user_id"])
    return sorted(rows, key=lambda r: (-(r["calls"] + r["meetings"] + r["emails"] + r["notes"] + r["tasks_done"]),
                                       str(r["user_id"])))


def tasks_overview(conn: Any, org_id: UUID, today: date) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT assignee_id AS user_id, count(*) FILTER (WHERE status = 'open') AS open,"
        " count(*) FILTER (WHERE status = 'open' AND due_date < %(t)s) AS overdue,"
        " count(*) FILTER (WHERE status = 'open' AND due_date = %(t)s) AS due_today,"
        " count(*) FILTER (WHERE status = 'done') AS done"
        " FROM tasks WHERE organization_id = %(org)s GROUP BY assignee_id ORDER BY overdue DESC, open DESC",
        {"org": org_id, "t": today},
    ).fetchall()
    names = _names(conn, "users", {r["user_id"] for r in rows})
    for r in rows:
        r["user_name"] = names.get(r["user_id"])
    return rows


def forecast(conn: Any, org_id: UUID, pipeline_id: UUID | None, user_id: UUID | None) -> list[dict[str, Any]]:
    """Open deals by expected close month: count, value, and value weighted by the stage's win probability."""
    return conn.execute(
        "SELECT date_trunc('month', d.expected_close_date)::date AS month, count(*) AS deals,"
        " coalesce(sum(d.value_cents), 0)::bigint AS value_cents,"
        " coalesce(round(sum(d.value_cents * coalesce(s.probability, 0)) / 100.0), 0)::bigint AS weighted_cents"
        " FROM deals d LEFT JOIN pipeline_stages s ON s.id = d.stage_id"
        " WHERE d.organization_id = %(org)s AND d.status = 'open'"
        " AND (%(p)s::uuid IS NULL OR d.pipeline_id = %(p)s) AND (%(u)s::uuid IS NULL OR d.owner_id = %(u)s)"
        " GROUP BY 1 ORDER BY 1 NULLS LAST",
        {"org": org_id, "p": pipeline_id, "u": user_id},
    ).fetchall()


def newsletter_campaigns(conn: Any, org_id: UUID, start: date, end: date) -> list[dict[str, Any]] | None:
    """Campaign statistics if the newsletter read model exists in this installation, else None."""
    if conn.execute("SELECT to_regclass('newsletter_campaigns') AS t").fetchone()["t"] is None:
        return None
    try:
        return conn.execute(
            "SELECT id, name, sent_at, coalesce(recipients_count, 0) AS recipients, coalesce(delivered_count, 0) AS delivered,"
            " coalesce(opened_count, 0) AS opened, coalesce(clicked_count, 0) AS clicked FROM newsletter_campaigns"
            " WHERE organization_id = %s AND sent_at::date BETWEEN %s AND %s ORDER BY sent_at DESC",
            (org_id, start, end),
        ).fetchall()
    except Exception:  # a schema this module does not know yet: report nothing rather than guess
        conn.rollback()
        return None
