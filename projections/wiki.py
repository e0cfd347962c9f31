"""Wiki read model (categories, current pages, revisions) and its queries, including ranked full-text search."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from domain.errors import NotFound
from domain.wiki import WikiCategory, WikiPage
from projections.base import Projection, exists, handles, touch
from projections.matching import Found, fallback_words
from projections.pagination import Sort, paginate

PAGE_COLUMNS = ("id, title, category_id, parent_id, revision, created_by, updated_by, created_at, updated_at,"
                " length(body) AS body_length")
SEARCH_REFRESH = (
    "UPDATE wiki_pages SET search_tsv = setweight(to_tsvector(language::regconfig, title), 'A')"
    " || setweight(to_tsvector(language::regconfig, body), 'B') WHERE id = %s"
)


class WikiProjection(Projection):
    name = "wiki"
    tables = ("wiki_categories", "wiki_pages", "wiki_revisions")
    resources = ("wiki",)

    def _revision(self, cur: Any, e: Any, change: str, *, summary: str | None = None, restored_from: int | None = None,
                  author_id: Any = None) -> None:
        cur.execute(
            "INSERT INTO wiki_revisions (page_id, revision, organization_id, change, title, body, category_id, parent_id,"
            " restored_from, summary, author_id, created_at)"
            " SELECT id, %s, organization_id, %s, title, body, category_id, parent_id, %s, %s, %s, %s"
            " FROM wiki_pages WHERE id = %s",
            (e.originator_version, change, restored_from, summary, author_id, e.timestamp, e.originator_id),
        )

    def _set(self, cur: Any, e: Any, sets: str, params: tuple, author_id: Any) -> None:
        touch(cur, "wiki_pages", e, f"{sets}, revision = %s, updated_by = %s", (*params, e.originator_version, author_id))

    @handles(WikiCategory.Created)
    def category_created(self, cur: Any, e: Any) -> None:
        cur.execute("INSERT INTO wiki_categories (id, organization_id, name, description, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)", (e.originator_id, e.org_id, e.name, e.description, e.timestamp))

    @handles(WikiCategory.Deleted)
    def category_deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM wiki_categories WHERE id = %s", (e.originator_id,))

    @handles(WikiPage.Created)
    def created(self, cur: Any, e: Any) -> None:
        cur.execute(
            "INSERT INTO wiki_pages (id, organization_id, title, body, category_id, parent_id, language, revision,"
            " created_by, updated_by, created_at, updated_at, search_tsv)"
            " VALUES (%(id)s, %(org)s, %(title)s, %(body)s, %(cat)s, %(parent)s, %(lang)s, %(rev)s, %(by)s, %(by)s,"
            " %(ts)s, %(ts)s, setweight(to_tsvector(%(cfg)s::regconfig, %(title)s), 'A')"
            " || setweight(to_tsvector(%(cfg)s::regconfig, %(body)s), 'B'))",
            {"id": e.originator_id, "org": e.org_id, "title": e.title, "body": e.body, "cat": e.category_id,
             "parent": e.parent_id, "lang": e.language, "cfg": e.language, "rev": e.originator_version, "by": e.author_id,
             "ts": e.timestamp},
        )
        self._revision(cur, e, "created", author_id=e.author_id)

    @handles(WikiPage.Edited)
    def edited(self, cur: Any, e: Any) -> None:
        self._set(cur, e, "title = %s, body = %s", (e.title, e.body), e.author_id)
        cur.execute(SEARCH_REFRESH, (e.originator_id,))
        self._revision(cur, e, "edited", summary=e.summary, author_id=e.author_id)

    @handles(WikiPage.Moved)
    def moved(self, cur: Any, e: Any) -> None:
        self._set(cur, e, "category_id = %s, parent_id = %s", (e.category_id, e.parent_id), e.author_id)
        self._revision(cur, e, "moved", author_id=e.author_id)

    @handles(WikiPage.Restored)
    def restored(self, cur: Any, e: Any) -> None:
        self._set(cur, e, "title = %s, body = %s", (e.title, e.body), e.author_id)
        cur.execute(SEARCH_REFRESH, (e.originator_id,))
        self._revision(cur, e, "restored", restored_from=e.revision, author_id=e.author_id)

    @handles(WikiPage.Deleted)
    def deleted(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM wiki_pages WHERE id = %s", (e.originator_id,))
        # sub-pages move up to the top of their category rather than pointing at a page that is gone
        cur.execute("UPDATE wiki_pages SET parent_id = NULL WHERE parent_id = %s", (e.originator_id,))


# -- queries ---------------------------------------------------------------------------------------------
def list_pages(conn: Any, org_id: UUID, *, category_id: UUID | None = None, parent_id: UUID | None = None,
               top_level: bool = False, limit: int = 25, cursor: str | None = None):
    where = ["p.organization_id = %s"]
    params: list[Any] = [org_id]
    if category_id is not None:
        where.append("p.category_id = %s")
        params.append(category_id)
    if parent_id is not None:
        where.append("p.parent_id = %s")
        params.append(parent_id)
    if top_level:
        where.append("p.parent_id IS NULL")
    cols = ("id, title, category_id, category_name, parent_id, revision, created_by, updated_by, created_at, updated_at,"
            " body_length, children_count")
    inner = (
        "SELECT p.id, p.title, p.category_id, c.name AS category_name, p.parent_id, p.revision, p.created_by,"
        " p.updated_by, p.created_at, p.updated_at, length(p.body) AS body_length,"
        " (SELECT count(*) FROM wiki_pages ch WHERE ch.organization_id = p.organization_id AND ch.parent_id = p.id)::int AS children_count,"
        " coalesce(lower(c.name), '') || chr(1) || lower(p.title) AS tree_key"
        " FROM wiki_pages p LEFT JOIN wiki_categories c ON c.id = p.category_id WHERE " + " AND ".join(where)
    )
    return paginate(conn, cols, f"FROM ({inner}) t WHERE true", params, Sort("tree_key", "text"), limit, cursor)


def get_page(conn: Any, org_id: UUID, page_id: UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT p.id, p.title, p.body, p.category_id, c.name AS category_name, p.parent_id, p.revision, p.created_by,"
        " p.updated_by, p.created_at, p.updated_at,"
        " (SELECT coalesce(array_agg(ch.id ORDER BY lower(ch.title), ch.id), '{}') FROM wiki_pages ch"
        "   WHERE ch.organization_id = p.organization_id AND ch.parent_id = p.id) AS child_ids"
        " FROM wiki_pages p LEFT JOIN wiki_categories c ON c.id = p.category_id"
        " WHERE p.organization_id = %s AND p.id = %s", (org_id, page_id)).fetchone()
    if row is None:
        raise NotFound("wiki page", page_id, field="page_id")
    return row


def page_exists(conn: Any, org_id: UUID, page_id: UUID) -> bool:
    return exists(conn, "wiki_pages", org_id, page_id)


SNIPPET_WINDOW = 4000
"""Characters of a page the snippet is cut from, around the first place a query word appears: ts_headline
re-parses what it is given, and over a whole 200 KB page it costs about 200 ms per result."""
ALL_WORDS = "websearch_to_tsquery(%(lang)s::regconfig, %(q)s)"
ANY_WORD = ("(SELECT string_agg(chr(39) || replace(replace(l, chr(92), chr(92) || chr(92)), chr(39), chr(39) || chr(39))"
            " || chr(39), ' | ') FROM unnest(tsvector_to_array(to_tsvector(%(lang)s::regconfig, %(q)s))) AS l)::tsquery")
"""The query's stemmed words as alternatives ('gestion' | 'res'), each quoted as a tsquery lexeme."""
SEARCH_PAGES = """
WITH q AS (SELECT {query} AS tsq),
words AS (SELECT array(SELECT m[1] FROM q, regexp_matches(q.tsq::text, '''([^'']+)''', 'g') AS m) AS stems),
hits AS (
    SELECT p.id, p.title, p.category_id, p.parent_id, p.revision, p.updated_at, p.body,
           ts_rank_cd(p.search_tsv, q.tsq, 32) AS rank
    FROM wiki_pages p, q
    WHERE p.organization_id = %(org)s AND p.search_tsv @@ q.tsq
      AND (%(cat)s::uuid IS NULL OR p.category_id = %(cat)s)
    ORDER BY rank DESC, p.updated_at DESC, p.id
    LIMIT %(limit)s
),
placed AS (
    SELECT h.*, coalesce((SELECT min(nullif(strpos(lower(h.body), s), 0)) FROM unnest(words.stems) s), 1) AS at
    FROM hits h, words
)
SELECT h.id, h.title, h.category_id, h.parent_id, h.revision, h.updated_at,
       round(h.rank::numeric, 4)::float AS score,
       ts_headline(%(lang)s::regconfig, h.title, q.tsq, 'StartSel=**, StopSel=**, HighlightAll=true') AS title_highlight,
       ts_headline(%(lang)s::regconfig, substr(h.body, greatest(1, h.at - %(before)s), %(window)s), q.tsq,
                   'StartSel=**, StopSel=**, MaxWords=35, MinWords=15, MaxFragments=2, FragmentDelimiter=" … "')
         AS snippet
FROM placed h, q
ORDER BY h.rank DESC, h.updated_at DESC, h.id
"""


def search_pages(conn: Any, org_id: UUID, text: str, *, language: str, category_id: UUID | None = None,
                 limit: int = 10) -> Found:
    """Ranked full-text search in the organization's language; snippets only for the page of results shown,
    each from a bounded window of the page (SNIPPET_WINDOW), so a search's cost does not grow with page size.
    When no page has every word, the pages with any of them, unless the query spells out its own logic
    (quotes, OR, -word): that is obeyed as written."""
    params = {"lang": language, "q": text, "org": org_id, "cat": category_id,
              "limit": limit, "before": SNIPPET_WINDOW // 10, "window": SNIPPET_WINDOW}
    rows = conn.execute(SEARCH_PAGES.format(query=ALL_WORDS), params).fetchall()
    explicit = '"' in text or re.search(r"(^|\s)-\S|\bor\b", text, re.IGNORECASE)
    if rows or explicit or len(fallback_words(text)) < 2:
        return Found(rows, "all")
    return Found.some_words(conn.execute(SEARCH_PAGES.format(query=ANY_WORD), params).fetchall())


def list_revisions(conn: Any, org_id: UUID, page_id: UUID, *, limit: int, cursor: str | None):
    inner = ("SELECT page_id AS id, revision, change, title, category_id, parent_id, restored_from, summary, author_id,"
             " created_at, length(body) AS body_length FROM wiki_revisions WHERE organization_id = %s AND page_id = %s")
    return paginate(
        conn, "revision, change, title, category_id, parent_id, restored_from, summary, author_id, created_at, body_length",
        f"FROM ({inner}) r WHERE true", [org_id, page_id], Sort("revision", "integer", descending=True), limit, cursor,
    )


def get_revision(conn: Any, org_id: UUID, page_id: UUID, revision: int) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT revision, change, title, body, category_id, parent_id, restored_from, summary, author_id, created_at"
        " FROM wiki_revisions WHERE organization_id = %s AND page_id = %s AND revision = %s",
        (org_id, page_id, revision)).fetchone()


def list_categories(conn: Any, org_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT c.id, c.name, c.description, c.created_at,"
        " (SELECT count(*) FROM wiki_pages p WHERE p.category_id = c.id)::int AS pages_count"
        " FROM wiki_categories c WHERE c.organization_id = %s ORDER BY lower(c.name), c.id", (org_id,)).fetchall()


def category_named(conn: Any, org_id: UUID, name: str) -> dict[str, Any] | None:
    return conn.execute("SELECT id FROM wiki_categories WHERE organization_id = %s AND lower(name) = lower(%s)",
                        (org_id, name)).fetchone()
