"""Searches the other read models do not answer on their own, for the connector's `search` tool: contact persons,
projects, activities and notes. Each reads one index (0070) and has the any-word fallback of the others."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.personal_data import ERASED
from projections.matching import Found, fallback_words, search_both

CONTACT_TEXT = "lower(f_unaccent(cc.name || ' ' || coalesce(cc.email, '')))"
"""The expression of the client_contacts_search_trgm index."""


def search_contacts(conn: Any, org_id: UUID, text: str, limit: int) -> Found:
    """Contact persons by name or e-mail, typo-tolerant (trigrams); when the whole query matches none, any word."""
    sql = (f"SELECT cc.id, cc.name, cc.role, cc.email, cc.phone, cc.client_id, c.business_name AS client_name,"
           f" round(greatest({{score}})::numeric, 4)::float AS score"
           f" FROM client_contacts cc JOIN clients c ON c.id = cc.client_id"
           f" WHERE cc.organization_id = %(org)s AND cc.name <> %(erased)s AND ({{match}})"
           f" ORDER BY score DESC, cc.created_at DESC, cc.id LIMIT %(limit)s")
    params = {"org": org_id, "erased": ERASED, "limit": limit, "q": text}
    rows = conn.execute(sql.format(score=f"word_similarity(lower(f_unaccent(%(q)s)), {CONTACT_TEXT})",
                                   match=f"lower(f_unaccent(%(q)s)) <%% {CONTACT_TEXT}"), params).fetchall()
    words = fallback_words(text)
    if rows or len(words) < 2:
        return Found(rows, "all")
    alternatives = [f"lower(f_unaccent(%(w{i})s))" for i in range(len(words))]
    return Found.some_words(conn.execute(sql.format(
        score=", ".join(f"word_similarity({w}, {CONTACT_TEXT})" for w in alternatives),
        match=" OR ".join(f"{w} <%% {CONTACT_TEXT}" for w in alternatives)),
        {**params, **{f"w{i}": w for i, w in enumerate(words)}}).fetchall())


def search_projects(conn: Any, org_id: UUID, text: str, limit: int) -> Found:
    """Projects by words of their name and description (prefixes; any word when none has every word)."""
    return search_both(lambda tsq: conn.execute(
        "SELECT p.id, p.name, p.status, p.archived, p.client_id, c.business_name AS client_name, p.start_date,"
        " p.end_date, p.created_at, round(ts_rank(t.tsv, q)::numeric, 4)::float AS score"
        " FROM projects p LEFT JOIN clients c ON c.id = p.client_id,"
        " LATERAL (SELECT to_tsvector('simple', lower(f_unaccent(p.name || ' ' || coalesce(p.description, '')))) AS tsv) t,"
        " to_tsquery('simple', lower(f_unaccent(%s))) q"
        " WHERE p.organization_id = %s"
        " AND to_tsvector('simple', lower(f_unaccent(p.name || ' ' || coalesce(p.description, '')))) @@ q"
        " ORDER BY score DESC, p.created_at DESC, p.id LIMIT %s", (tsq, org_id, limit)).fetchall(), text)


def search_activities(conn: Any, org_id: UUID, text: str, limit: int) -> Found:
    """Calls, meetings, e-mails and logged notes by words of their subject and text."""
    return search_both(lambda tsq: conn.execute(
        "SELECT a.id, a.type, a.subject, a.body, a.client_id, c.business_name AS client_name, a.deal_id,"
        " a.occurred_at, round(ts_rank(to_tsvector('simple', lower(f_unaccent(coalesce(a.subject, '') || ' '"
        " || coalesce(a.body, '')))), q)::numeric, 4)::float AS score"
        " FROM activities a LEFT JOIN clients c ON c.id = a.client_id, to_tsquery('simple', lower(f_unaccent(%s))) q"
        " WHERE a.organization_id = %s"
        " AND to_tsvector('simple', lower(f_unaccent(coalesce(a.subject, '') || ' ' || coalesce(a.body, '')))) @@ q"
        " ORDER BY score DESC, a.occurred_at DESC, a.id LIMIT %s", (tsq, org_id, limit)).fetchall(), text)


def search_notes(conn: Any, org_id: UUID, text: str, subject_types: list[str], limit: int) -> Found:
    """Notes on the given kinds of subject ('client', 'deal': only those the caller may read) by their words,
    with the name of what they are about."""
    if not subject_types:
        return Found([], "all")
    return search_both(lambda tsq: conn.execute(
        "SELECT n.id, n.subject_type, n.subject_id, n.body, n.created_at,"
        " coalesce(c.business_name, d.title) AS subject_name,"
        " round(ts_rank(to_tsvector('simple', lower(f_unaccent(n.body))), q)::numeric, 4)::float AS score"
        " FROM notes n LEFT JOIN clients c ON n.subject_type = 'client' AND c.id = n.subject_id"
        " LEFT JOIN deals d ON n.subject_type = 'deal' AND d.id = n.subject_id,"
        " to_tsquery('simple', lower(f_unaccent(%s))) q"
        " WHERE n.organization_id = %s AND n.subject_type = ANY(%s) AND n.body <> %s"
        " AND to_tsvector('simple', lower(f_unaccent(n.body))) @@ q"
        " ORDER BY score DESC, n.created_at DESC, n.id LIMIT %s",
        (tsq, org_id, subject_types, ERASED, limit)).fetchall(), text)
