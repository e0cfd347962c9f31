"""Deals read model (deals, deal_services, deal_contacts, deal_commissions, deal_stage_history) and queries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.clients import Client
from domain.deals import Deal
from domain.custom_fields import CustomField
from domain.errors import NotFound
from domain.personal_data import ERASED
from projections import custom_fields as custom_values
from projections.base import Projection, exists, handles, local_date
from projections.clients import name_groups
from projections.matching import FREQUENT, Found, fallback_words, prefix_tsquery
from projections.pagination import BY_CREATION, RECENTLY_UPDATED, Sort, by_date, paginate

DEAL_COLUMNS = (
    "d.id, d.client_id, d.title, d.description, d.status, d.pipeline_id, d.stage_id, d.value_cents, d.explicit_value,"
    " d.currency, d.owner_id, d.close_date, d.expected_close_date, d.lost_reason, d.created_by, d.created_at, d.updated_at,"
    " c.business_name AS client_name, p.name AS pipeline_name, s.name AS stage_name, s.probability AS stage_probability,"
    " (SELECT name FROM users u WHERE u.id = d.owner_id) AS owner_name"
)
DEAL_COLUMNS += f", d.custom_fields, {local_date('d.created_at', 'd.organization_id')} AS created_on"
DEAL_SEARCH_TEXT = ("UPDATE deals SET search_text = lower(f_unaccent(concat_ws(' ', title, f_custom_text(custom_fields))))"
                    " WHERE id = %s")
"""Title and custom field texts: what crm_deals_search matches."""
DEAL_FROM = (
    " FROM deals d LEFT JOIN clients c ON c.id = d.client_id"
    " LEFT JOIN pipelines p ON p.id = d.pipeline_id LEFT JOIN pipeline_stages s ON s.id = d.stage_id"
)
SORTS = {
    **BY_CREATION, "updated_desc": RECENTLY_UPDATED,
    "value_desc": Sort("value_cents", "bigint", descending=True),
    "value_asc": Sort("value_cents", "bigint"),
    **by_date("close_date", "close_date"),
}


STATS_COLUMNS = frozenset({"status", "close_date", "value_cents", "pipeline_id", "owner_id"})
STAT_SELECT = "organization_id, status, close_date, value_cents, pipeline_id, owner_id"
NIL = "'00000000-0000-0000-0000-000000000000'::uuid"
STATS_CTE = (
    "old AS (SELECT " + STAT_SELECT + " FROM deals WHERE id = %(_id)s),"
    " new AS ({update}),"
    " delta AS (SELECT *, -1 AS sign FROM old UNION ALL SELECT *, 1 FROM new)"
)
DELTA_UPSERT = (
    "INSERT INTO deal_daily_stats AS s (organization_id, day, pipeline_id, owner_id, won, lost, won_cents)"
    " SELECT organization_id, close_date, coalesce(pipeline_id, " + NIL + "), coalesce(owner_id, " + NIL + "),"
    " sum(sign * (status = 'accepted')::int), sum(sign * (status = 'rejected')::int),"
    " sum(CASE WHEN status = 'accepted' THEN sign * value_cents ELSE 0 END)"
    " FROM delta WHERE status IN ('accepted', 'rejected') AND close_date IS NOT NULL GROUP BY 1, 2, 3, 4"
    " ON CONFLICT (organization_id, day, pipeline_id, owner_id) DO UPDATE SET won = s.won + EXCLUDED.won,"
    " lost = s.lost + EXCLUDED.lost, won_cents = s.won_cents + EXCLUDED.won_cents"
)
STATS_UPSERT = DELTA_UPSERT


class DealsProjection(Projection):
    name = "deals"
    tables = ("deals", "deal_services", "deal_contacts", "deal_commissions", "deal_stage_history", "deal_daily_stats")
    resources = ("deals", "stats")

    def _set(self, cur: Any, e: Any, values: dict[str, Any], *, leave_stage: bool = False) -> None:
        """Update the deal row; when a column that counts in revenue stats changes, move the deal's contribution
        in deal_daily_stats from its old (day, pipeline, owner) to the new one, in the same statement."""
        sets = "".join(f"{k} = %({k})s, " for k in values)
        params = {**values, "_ts": e.timestamp, "_id": e.originator_id}
        update = f"UPDATE deals SET {sets}updated_at = %(_ts)s WHERE id = %(_id)s"  # noqa: S608 - keys are ours
        ctes = []
        if STATS_COLUMNS & set(values):
            ctes.append(STATS_CTE.format(update=update + f" RETURNING {STAT_SELECT}"))
            main = STATS_UPSERT
        else:
            main = update
        if leave_stage:
            ctes.append("h AS (UPDATE deal_stage_history SET left_at = %(_ts)s WHERE deal_id = %(_id)s AND left_at IS NULL)")
        cur.execute(("WITH " + ", ".join(ctes) + " " if ctes else "") + main, params)

    def _enter_stage(self, cur: Any, e: Any, pipeline_id: UUID, stage_id: UUID) -> None:
        cur.execute(
            "INSERT INTO deal_stage_history (organization_id, deal_id, pipeline_id, stage_id, entered_at)"
            " SELECT organization_id, id, %s, %s, %s FROM deals WHERE id = %s",
            (pipeline_id, stage_id, e.timestamp, e.originator_id),
        )

    def _leave_stage(self, cur: Any, e: Any) -> None:
        cur.execute("UPDATE deal_stage_history SET left_at = %s WHERE deal_id = %s AND left_at IS NULL",
                    (e.timestamp, e.originator_id))

    @handles(Deal.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = e.fields
        cur.execute(
            "WITH d AS (INSERT INTO deals (id, organization_id, client_id, title, description, status, pipeline_id, stage_id,"
            " value_cents, explicit_value, currency, owner_id, expected_close_date, created_by, created_at, updated_at,"
            " stage_entered_at, search_text)"
            " VALUES (%(id)s, %(org)s, %(client)s, %(title)s, %(descr)s, 'open', %(p)s, %(s)s, %(v)s, %(explicit)s,"
            " %(cur)s, %(owner)s, %(ecd)s, %(by)s, %(ts)s, %(ts)s, %(ts)s, lower(f_unaccent(%(title)s))))"
            " INSERT INTO deal_stage_history (organization_id, deal_id, pipeline_id, stage_id, entered_at)"
            " VALUES (%(org)s, %(id)s, %(p)s, %(s)s, %(ts)s)",
            {"id": e.originator_id, "org": e.org_id, "client": e.client_id, "title": e.title,
             "descr": f.get("description"), "p": e.pipeline_id, "s": e.stage_id, "v": e.explicit_value_cents or 0,
             "explicit": e.explicit_value_cents is not None, "cur": e.currency, "owner": e.owner_id,
             "ecd": f.get("expected_close_date"), "by": e.created_by, "ts": e.timestamp},
        )

    @handles(Deal.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        values = dict(e.changes)
        self._set(cur, e, values)
        if "title" in values:
            cur.execute(DEAL_SEARCH_TEXT, (e.originator_id,))

    @handles(Deal.ValueSet)
    def value_set(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"value_cents": e.value_cents, "explicit_value": e.explicit_value_cents is not None})

    @handles(Deal.StatusChanged)
    def status_changed(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"status": e.status, "close_date": e.close_date, "lost_reason": e.reason}, leave_stage=True)
        if e.status == "open":
            row = cur.execute("SELECT pipeline_id, stage_id FROM deals WHERE id = %s", (e.originator_id,)).fetchone()
            self._enter_stage(cur, e, row["pipeline_id"], row["stage_id"])

    @handles(Deal.StageMoved)
    def stage_moved(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"pipeline_id": e.pipeline_id, "stage_id": e.stage_id, "stage_entered_at": e.timestamp},
                  leave_stage=True)
        self._enter_stage(cur, e, e.pipeline_id, e.stage_id)

    @handles(Deal.Assigned)
    def assigned(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"owner_id": e.user_id})

    @handles(Deal.Unassigned)
    def unassigned(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"owner_id": None})

    def _upsert_line(self, cur: Any, e: Any) -> None:
        line = e.line
        cur.execute("DELETE FROM deal_services WHERE id = %s", (line["id"],))
        cur.execute(
            "INSERT INTO deal_services (id, organization_id, deal_id, service_id, name, code, unit, vat_rate, quantity,"
            " unit_price_cents, discount_percent, total_cents, position, created_at)"
            " SELECT %s, organization_id, id, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM deals WHERE id = %s",
            (line["id"], line["service_id"], line["name"], line.get("code"), line.get("unit"), line.get("vat_rate") or 0,
             line["quantity"], line["unit_price_cents"], line["discount_percent"], line["total_cents"],
             line["position"], e.timestamp, e.originator_id),
        )
        self._set(cur, e, {"value_cents": e.value_cents})

    @handles(Deal.ServiceAdded)
    def line_added(self, cur: Any, e: Any) -> None:
        self._upsert_line(cur, e)

    @handles(Deal.ServiceUpdated)
    def line_updated(self, cur: Any, e: Any) -> None:
        self._upsert_line(cur, e)

    @handles(Deal.ServiceRemoved)
    def line_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM deal_services WHERE id = %s", (e.line_id,))
        self._set(cur, e, {"value_cents": e.value_cents})

    @handles(Deal.ContactAdded)
    def contact_added(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO deal_contacts (organization_id, deal_id, contact_id, name, role, created_at)"
            " SELECT organization_id, id, %s, %s, %s, %s FROM deals WHERE id = %s ON CONFLICT DO NOTHING",
            (e.contact_id, e.name, e.role, e.timestamp, e.originator_id),
        )
        self._set(cur, e, {})

    @handles(Deal.ContactRemoved)
    def contact_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM deal_contacts WHERE deal_id = %s AND contact_id = %s", (e.originator_id, e.contact_id))
        self._set(cur, e, {})

    @handles(Deal.CommissionSet)
    def commission_set(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO deal_commissions (organization_id, deal_id, user_id, percent, amount_cents, updated_at)"
            " SELECT organization_id, id, %s, %s, %s, %s FROM deals WHERE id = %s"
            " ON CONFLICT (deal_id, user_id) DO UPDATE SET percent = EXCLUDED.percent,"
            " amount_cents = EXCLUDED.amount_cents, updated_at = EXCLUDED.updated_at",
            (e.user_id, e.percent, e.amount_cents, e.timestamp, e.originator_id),
        )
        self._set(cur, e, {})

    @handles(Deal.CommissionRemoved)
    def commission_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM deal_commissions WHERE deal_id = %s AND user_id = %s", (e.originator_id, e.user_id))
        self._set(cur, e, {})

    @handles(Deal.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        for table in ("deal_services", "deal_contacts", "deal_commissions", "deal_stage_history"):
            cur.execute(f"DELETE FROM {table} WHERE deal_id = %s", (e.originator_id,))  # noqa: S608
        cur.execute(
            "WITH old AS (DELETE FROM deals WHERE id = %(_id)s RETURNING " + STAT_SELECT + "),"
            " delta AS (SELECT *, -1 AS sign FROM old) " + DELTA_UPSERT,
            {"_id": e.originator_id},
        )

    @handles(Client.MergedInto)
    def client_merged(self, cur: Any, e: Any) -> None:
        """Deals of a merged duplicate move over to the survivor."""
        cur.execute("UPDATE deals SET client_id = %s WHERE client_id = %s", (e.survivor_id, e.originator_id))

    @handles(Client.PersonalDataErased)
    def client_erased(self, cur: Any, e: Any) -> None:
        """Names of a person's contacts on its deals read as erased (application/personal_data.py)."""
        cur.execute("UPDATE deal_contacts dc SET name = %s FROM deals d WHERE d.id = dc.deal_id AND d.client_id = %s"
                    " AND dc.name IS NOT NULL", (ERASED, e.originator_id))


    @handles(Deal.CustomFieldsChanged)
    def custom_fields_changed(self, cur: Any, e: Any) -> None:
        custom_values.apply(cur, "deals", e)
        cur.execute(DEAL_SEARCH_TEXT, (e.originator_id,))

    @handles(CustomField.Deleted)
    def custom_field_deleted(self, cur: Any, e: Any) -> None:
        """A deleted custom field's values leave the read model (the events keep them)."""
        for row_id in custom_values.hide(cur, "deals", "deal", e):
            cur.execute(DEAL_SEARCH_TEXT, (row_id,))


# -- queries ---------------------------------------------------------------------------------------------
def get_deal(conn: Any, org_id: UUID, deal_id: UUID) -> dict[str, Any]:
    row = conn.execute(f"SELECT {DEAL_COLUMNS}{DEAL_FROM} WHERE d.organization_id = %s AND d.id = %s",
                       (org_id, deal_id)).fetchone()
    if row is None:
        raise NotFound("deal", deal_id, field="deal_id")
    return row


def deal_exists(conn: Any, org_id: UUID, deal_id: UUID) -> bool:
    return exists(conn, "deals", org_id, deal_id)


def list_deals(conn: Any, org_id: UUID, *, filters: dict[str, Any], sort: str, limit: int, cursor: str | None):
    where = ["d.organization_id = %s"]
    params: list[Any] = [org_id]
    for column in ("status", "pipeline_id", "stage_id", "client_id", "owner_id"):
        if filters.get(column) is not None:
            where.append(f"d.{column} = %s")
            params.append(filters[column])
    for key, cond in (("value_min_cents", "d.value_cents >= %s"), ("value_max_cents", "d.value_cents <= %s"),
                      ("closed_from", "d.close_date >= %s"), ("closed_to", "d.close_date <= %s"),
                      ("created_from", "d.created_at >= %s"), ("created_to", "d.created_at < %s")):
        if filters.get(key) is not None:
            where.append(cond)
            params.append(filters[key])
    if filters.get("unassigned"):
        where.append("d.owner_id IS NULL")
    if (contains := custom_values.containment(filters.get("custom"))) is not None:
        where.append("d." + contains[0])
        params += contains[1]
    inner = f"SELECT {DEAL_COLUMNS}{DEAL_FROM} WHERE " + " AND ".join(where)
    return paginate(conn, "*", f"FROM ({inner}) d WHERE true", params, SORTS[sort], limit, cursor)


SEARCH_CANDIDATES = 300
"""Deals taken from each index (title trigrams, matching clients, matching notes) before they are scored."""
NOTE_TSV = "to_tsvector('simple', lower(f_unaccent(n.body)))"
"""The expression of the notes_search index (0070): a query must spell it the same to use it."""


def _candidates(title: str, clients_tsq: str | None, notes_tsq: str | None) -> str:
    """Ids of deals whose title, client's name or a note matches, each set from its own index (0005, 0008, 0070):
    a UNION of index scans rather than one OR that would read every deal of the organization."""
    parts = [f"(SELECT d.id FROM deals d WHERE d.organization_id = %(org)s AND ({title}) LIMIT %(cap)s)"]
    if clients_tsq is not None:
        parts.append("(SELECT d.id FROM clients c JOIN deals d ON d.organization_id = c.organization_id AND d.client_id = c.id"
                     " WHERE c.organization_id = %(org)s AND c.search_tsv @@ to_tsquery('simple', %(clients_tsq)s)"
                     " LIMIT %(cap)s)")
    if notes_tsq is not None:
        parts.append(f"(SELECT n.subject_id FROM notes n WHERE n.organization_id = %(org)s AND n.subject_type = 'deal'"
                     f" AND {NOTE_TSV} @@ to_tsquery('simple', lower(f_unaccent(%(notes_tsq)s))) LIMIT %(cap)s)")
    return " UNION ".join(parts)


def search_deals(conn: Any, org_id: UUID, text: str, limit: int) -> Found:
    """Title (typo-tolerant), client name (as crm_clients_search matches it) or note words, accent- and
    case-insensitive, best match first; when no deal has them all, the deals with any of them, rare words first."""
    groups = name_groups(conn, org_id, text)
    params = {"org": org_id, "q": text, "limit": limit, "cap": SEARCH_CANDIDATES,
              "clients_tsq": " & ".join(groups) or None, "notes_tsq": prefix_tsquery(text)}
    candidates = _candidates("lower(f_unaccent(%(q)s)) <%% d.search_text", params["clients_tsq"], params["notes_tsq"])
    rows = conn.execute(
        f"""
        WITH q AS (SELECT lower(f_unaccent(%(q)s)) AS q), candidates AS ({candidates})
        SELECT {DEAL_COLUMNS},
               round(greatest(word_similarity(q.q, d.search_text),
                              word_similarity(q.q, lower(f_unaccent(coalesce(c.business_name, '')))))::numeric, 4)::float
                 AS score
        {DEAL_FROM} JOIN candidates cd ON cd.id = d.id, q
        ORDER BY score DESC, d.created_at DESC, d.id
        LIMIT %(limit)s
        """, params).fetchall()
    words = fallback_words(text)
    if rows or len(words) < 2:
        return Found(rows, "all")
    word_params = {f"w{i}": w for i, w in enumerate(words)}
    title = " OR ".join(f"lower(f_unaccent(%(w{i})s)) <%% d.search_text" for i in range(len(words)))
    candidates = _candidates(title, " | ".join(groups) or None, prefix_tsquery(text, " | "))
    return Found.some_words(conn.execute(
        ANY_WORD_SEARCH.format(candidates=candidates),
        {**params, **word_params, "words": words, "frequent": FREQUENT,
         "clients_tsq": " | ".join(groups) or None, "notes_tsq": prefix_tsquery(text, " | ")}).fetchall())


ANY_WORD_SEARCH = f"""
WITH candidates AS ({{candidates}}),
words AS (SELECT lower(f_unaccent(w)) AS w FROM unnest(%(words)s::text[]) AS t(w)),
hits AS (
    SELECT d.id, w.w, greatest(word_similarity(w.w, d.search_text), word_similarity(w.w, cn.name), 0.5) AS sim
    FROM candidates JOIN deals d USING (id) LEFT JOIN clients c ON c.id = d.client_id,
         LATERAL (SELECT lower(f_unaccent(coalesce(c.business_name, ''))) AS name) cn, words w
    WHERE w.w <%% d.search_text OR w.w <%% cn.name
       OR EXISTS (SELECT 1 FROM notes n WHERE n.organization_id = d.organization_id AND n.subject_type = 'deal'
                  AND n.subject_id = d.id AND {NOTE_TSV} @@ to_tsquery('simple', w.w || ':*'))
),
weights AS (SELECT w, ln(1 + %(frequent)s::float / count(*)) AS weight FROM hits GROUP BY w),
total AS (SELECT sum(weight) + (cardinality(%(words)s::text[]) - count(*)) * ln(1 + %(frequent)s::float) AS weight
          FROM weights),
scored AS (SELECT h.id, sum(h.sim * ws.weight) / (SELECT weight FROM total) AS score
           FROM hits h JOIN weights ws USING (w) GROUP BY h.id)
SELECT {DEAL_COLUMNS}, round(sc.score::numeric, 4)::float AS score
{DEAL_FROM} JOIN scored sc ON sc.id = d.id
ORDER BY sc.score DESC, d.created_at DESC, d.id
LIMIT %(limit)s
"""
"""Among the candidates, a deal scores by the words it has (title, client name or notes), each weighted by how
rare it is among them."""


def list_lines(conn: Any, org_id: UUID, deal_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT ds.id, ds.service_id, ds.name, ds.code, ds.unit, ds.vat_rate, ds.quantity, ds.unit_price_cents,"
        " ds.discount_percent, ds.total_cents, coalesce(s.active, false) AS service_active"
        " FROM deal_services ds LEFT JOIN services s ON s.id = ds.service_id"
        " WHERE ds.organization_id = %s AND ds.deal_id = %s ORDER BY ds.position, ds.created_at, ds.id",
        (org_id, deal_id),
    ).fetchall()


def list_contacts(conn: Any, org_id: UUID, deal_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT dc.contact_id, coalesce(cc.name, dc.name) AS name, dc.role, cc.role AS job_title, cc.email, cc.phone"
        " FROM deal_contacts dc LEFT JOIN client_contacts cc ON cc.id = dc.contact_id"
        " WHERE dc.organization_id = %s AND dc.deal_id = %s ORDER BY dc.created_at, dc.contact_id",
        (org_id, deal_id),
    ).fetchall()


def list_commissions(conn: Any, org_id: UUID, deal_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT dc.user_id, u.name AS user_name, dc.percent, dc.amount_cents FROM deal_commissions dc"
        " LEFT JOIN users u ON u.id = dc.user_id WHERE dc.organization_id = %s AND dc.deal_id = %s"
        " ORDER BY dc.updated_at, dc.user_id",
        (org_id, deal_id),
    ).fetchall()


def count_in_stage(conn: Any, org_id: UUID, stage_id: UUID) -> int:
    return conn.execute("SELECT count(*) AS n FROM deals WHERE organization_id = %s AND stage_id = %s",
                        (org_id, stage_id)).fetchone()["n"]


def count_open_in_pipeline(conn: Any, org_id: UUID, pipeline_id: UUID) -> int:
    return conn.execute("SELECT count(*) AS n FROM deals WHERE organization_id = %s AND pipeline_id = %s AND status = 'open'",
                        (org_id, pipeline_id)).fetchone()["n"]


def count_using_service(conn: Any, org_id: UUID, service_id: UUID) -> int:
    return conn.execute("SELECT count(DISTINCT deal_id) AS n FROM deal_services WHERE organization_id = %s AND service_id = %s",
                        (org_id, service_id)).fetchone()["n"]


def board(conn: Any, org_id: UUID, pipeline_id: UUID, per_stage: int, owner_id: UUID | None) -> dict[str, Any]:
    """Open deals of a pipeline per stage: count, total value, and the `per_stage` largest deals of each stage."""
    owner_sql = " AND owner_id = %(owner)s" if owner_id is not None else ""
    totals = conn.execute(
        "SELECT stage_id, count(*) AS count, coalesce(sum(value_cents), 0)::bigint AS value_cents FROM deals"
        f" WHERE organization_id = %(org)s AND pipeline_id = %(p)s AND status = 'open'{owner_sql} GROUP BY stage_id",
        {"org": org_id, "p": pipeline_id, "owner": owner_id},
    ).fetchall()
    top = conn.execute(
        f"""
        SELECT x.* FROM pipeline_stages s CROSS JOIN LATERAL (
          SELECT d.id, d.title, d.client_id, d.value_cents, d.currency, d.owner_id, d.expected_close_date, d.stage_id,
                 d.created_at
          FROM deals d WHERE d.organization_id = %(org)s AND d.pipeline_id = %(p)s AND d.status = 'open'
            AND d.stage_id = s.id{owner_sql.replace('owner_id', 'd.owner_id')}
          ORDER BY d.value_cents DESC, d.id LIMIT %(n)s) x
        WHERE s.pipeline_id = %(p)s AND NOT s.deleted
        """,
        {"org": org_id, "p": pipeline_id, "owner": owner_id, "n": per_stage},
    ).fetchall() if per_stage else []
    return {"totals": {r["stage_id"]: r for r in totals}, "deals": top}
