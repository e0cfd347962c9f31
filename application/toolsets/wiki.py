"""The wiki knowledge base: the `crm_wiki_*` tools (pages, categories, revisions, moves, full-text search)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from application.runner import QueryContext, UnitOfWork
from application.organization import org_settings
from application.toolset import Toolset
from application.shapes import Command, ListQuery, Matches, Page, Query, SearchText
from domain.errors import Conflict, DomainError, NotFound
from domain.wiki import RevisionNotFound, WikiCategory, WikiPage, text_search_language
from projections import wiki as wiki_q

PageId = Annotated[UUID, Meta(description="The page id (from crm_wiki_list_pages, crm_wiki_search or crm_wiki_create_page).")]
CategoryId = Annotated[UUID, Meta(description="A category id (from crm_wiki_list_categories).")]
PageTitle = Annotated[str, Meta(min_length=1, max_length=300)]
Markdown = Annotated[str, Meta(max_length=200_000)]
MAX_DEPTH = 50


class PageSummary(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    title: str
    category_id: UUID | None = None
    category_name: str | None = None
    parent_id: UUID | None = None
    revision: int
    children_count: int
    body_length: int
    created_by: UUID | None = None
    updated_by: UUID | None = None
    created_at: datetime
    updated_at: datetime


class PageOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    title: str
    body: str
    category_id: UUID | None = None
    category_name: str | None = None
    parent_id: UUID | None = None
    child_ids: list[UUID]
    revision: Annotated[int, Meta(description="Current revision number (see crm_wiki_list_revisions).")]
    created_by: UUID | None = None
    updated_by: UUID | None = None
    created_at: datetime
    updated_at: datetime


class SearchHit(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    title: str
    title_highlight: str
    snippet: Annotated[str, Meta(description="Matching passages, matches wrapped in **bold**.")]
    category_id: UUID | None = None
    parent_id: UUID | None = None
    revision: int
    updated_at: datetime
    score: Annotated[float, Meta(description="Relevance; higher is better.")]


class SearchResult(Matches, kw_only=True, omit_defaults=True):
    items: list[SearchHit]
    language: Annotated[str, Meta(description="The text search language used (from the organization's locale).")]


class RevisionOut(Struct, kw_only=True, omit_defaults=True):
    revision: int
    change: Literal["created", "edited", "moved", "restored"]
    title: str
    category_id: UUID | None = None
    parent_id: UUID | None = None
    restored_from: int | None = None
    summary: str | None = None
    author_id: UUID | None = None
    created_at: datetime
    body_length: int


class CategoryOut(Struct, kw_only=True, omit_defaults=True):
    id: UUID
    name: str
    description: str | None = None
    pages_count: int
    created_at: datetime


class CategoryList(Struct, kw_only=True, omit_defaults=True):
    items: list[CategoryOut]


def present_page(ctx: QueryContext, page_id: UUID) -> PageOut:
    return msgspec.convert(wiki_q.get_page(ctx.conn, ctx.org_id, page_id), PageOut)


def organization_language(conn: Any, org_id: UUID) -> str:
    return text_search_language(org_settings(conn, org_id)["locale"])


wiki = Toolset(
    "wiki", title="Wiki", description="Knowledge base pages, revisions, full-text search",
    aggregate=WikiPage, id_field="page_id", id_type=PageId, output=PageOut, present=present_page,
    exists=wiki_q.page_exists, subject="a wiki page",
)


# -- queries ---------------------------------------------------------------------------------------------
class ListPages(ListQuery, kw_only=True):
    """Knowledge base pages as a tree (by category, then title) with parent_id and sub-page counts."""

    category_id: UUID | None = None
    parent_id: UUID | None = None
    top_level: bool = False


@wiki.query("list_pages", output=Page[PageSummary])
def list_pages(q: ListPages, ctx: QueryContext) -> Page[PageSummary]:
    rows, cursor = wiki_q.list_pages(ctx.conn, ctx.org_id, category_id=q.category_id, parent_id=q.parent_id,
                                     top_level=q.top_level, limit=q.limit, cursor=q.cursor)
    return Page(items=[msgspec.convert(r, PageSummary) for r in rows], next_cursor=cursor)


class GetPage(Query, kw_only=True):
    """One wiki page: markdown body, category, parent, sub-pages and current revision."""

    page_id: PageId


@wiki.query("get_page", output=PageOut)
def get_page(q: GetPage, ctx: QueryContext) -> PageOut:
    return present_page(ctx, q.page_id)


class SearchWiki(Query, kw_only=True):
    """Search the knowledge base in the organization's language ('fatture' finds 'fattura'); "quoted phrases", OR,
    -excluded words; with highlighted snippets."""

    q: SearchText
    category_id: UUID | None = None
    limit: Annotated[int, Meta(ge=1, le=50)] = 10


@wiki.query("search", output=SearchResult)
def search(q: SearchWiki, ctx: QueryContext) -> SearchResult:
    language = organization_language(ctx.conn, ctx.org_id)
    found = wiki_q.search_pages(ctx.conn, ctx.org_id, q.q, language=language, category_id=q.category_id, limit=q.limit)
    return SearchResult(items=[msgspec.convert(r, SearchHit) for r in found.rows], language=language, match=found.match)


class ListRevisions(ListQuery, kw_only=True):
    """Revisions of a page, newest first (creation, edits, moves, restores) with who and when; see
    crm_wiki_restore_revision."""

    page_id: PageId


@wiki.query("list_revisions", output=Page[RevisionOut])
def list_revisions(q: ListRevisions, ctx: QueryContext) -> Page[RevisionOut]:
    wiki_q.get_page(ctx.conn, ctx.org_id, q.page_id)
    rows, cursor = wiki_q.list_revisions(ctx.conn, ctx.org_id, q.page_id, limit=q.limit, cursor=q.cursor)
    return Page(items=[msgspec.convert(r, RevisionOut) for r in rows], next_cursor=cursor)


class ListCategories(Query, kw_only=True):
    """Wiki categories with how many pages each holds."""


@wiki.query("list_categories", output=CategoryList)
def list_categories(q: ListCategories, ctx: QueryContext) -> CategoryList:
    return CategoryList(items=[msgspec.convert(r, CategoryOut) for r in wiki_q.list_categories(ctx.conn, ctx.org_id)])


# -- commands --------------------------------------------------------------------------------------------
class CreateCategory(Command, kw_only=True):
    """Create a wiki category (e.g. 'Procedures', 'Products'). Names are unique, ignoring case."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]
    description: Annotated[str, Meta(max_length=2000)] | None = None


def present_category(ctx: QueryContext, category_id: UUID) -> CategoryOut:
    rows = [r for r in wiki_q.list_categories(ctx.conn, ctx.org_id) if r["id"] == category_id]
    if not rows:
        raise NotFound("wiki category", category_id, field="category_id")
    return msgspec.convert(rows[0], CategoryOut)


@wiki.command("create_category", output=CategoryOut, returns=UUID, present=present_category)
def create_category(cmd: CreateCategory, uow: UnitOfWork) -> UUID:
    if wiki_q.category_named(uow.conn, uow.org_id, cmd.name.strip()):
        raise Conflict(f"a category named {cmd.name!r} already exists", field="name")
    category = WikiCategory(org_id=uow.org_id, name=cmd.name.strip(), description=cmd.description)
    uow.add(category)
    return category.id


class CreatePage(Command, kw_only=True):
    """Create a wiki page in markdown, optionally in a category and under a parent page."""

    title: PageTitle
    body: Markdown = ""
    category_id: Annotated[UUID | None, Meta(description="From crm_wiki_list_categories.")] = None
    parent_id: UUID | None = None


@wiki.command("create_page", output=PageOut, returns=UUID, present=present_page)
def create_page(cmd: CreatePage, uow: UnitOfWork) -> UUID:
    if cmd.category_id is not None:
        uow.get(WikiCategory, cmd.category_id, field="category_id")
    parent = uow.get(WikiPage, cmd.parent_id, field="parent_id") if cmd.parent_id is not None else None
    page = WikiPage.create(uow.org_id, cmd.title, cmd.body, category_id=cmd.category_id, parent=parent,
                           language=organization_language(uow.conn, uow.org_id), author_id=uow.principal.user_id)
    uow.add(page)
    return page.id


class UpdatePage(Command, kw_only=True):
    """Change a page's title and/or markdown body; the previous text stays as a revision (crm_wiki_list_revisions)."""

    page_id: PageId
    title: PageTitle | UnsetType = UNSET
    body: Markdown | UnsetType = UNSET
    summary: Annotated[str, Meta(max_length=300, description="What changed, for the revision list.")] | None = None


def _edit(page: WikiPage, cmd: UpdatePage, uow: UnitOfWork) -> None:
    page.edit(title=None if cmd.title is UNSET else cmd.title, body=None if cmd.body is UNSET else cmd.body,
              summary=cmd.summary, author_id=uow.principal.user_id)


wiki.act("update_page", UpdatePage, _edit)


class MovePage(Command, kw_only=True):
    """Move a page to another category and/or parent page (null: none / top level); not under itself or its own
    sub-pages."""

    page_id: PageId
    category_id: UUID | None | UnsetType = UNSET
    parent_id: UUID | None | UnsetType = UNSET


def _ancestors(uow: UnitOfWork, page: WikiPage) -> list[UUID]:
    """Ids above `page`, nearest first, read from the event store (the source of truth, not a read model)."""
    out: list[UUID] = []
    current = page.parent_id
    while current is not None and len(out) < MAX_DEPTH:
        out.append(current)
        try:
            above = uow.store.repository.get(current)
        except Exception:
            break
        if getattr(above, "deleted", False):
            break
        current = above.parent_id
    return out


def _move(page: WikiPage, cmd: MovePage, uow: UnitOfWork) -> None:
    if cmd.category_id is UNSET and cmd.parent_id is UNSET:
        raise DomainError("give category_id and/or parent_id", field="parent_id")
    category_id = page.category_id if cmd.category_id is UNSET else cmd.category_id
    if category_id is not None and category_id != page.category_id:
        uow.get(WikiCategory, category_id, field="category_id")
    parent_id = page.parent_id if cmd.parent_id is UNSET else cmd.parent_id
    parent = None
    if parent_id is not None:
        parent = page if parent_id == page.id else uow.get(WikiPage, parent_id, field="parent_id")
    page.move(category_id=category_id, parent=parent, parent_ancestors=_ancestors(uow, parent) if parent else [],
              author_id=uow.principal.user_id)


wiki.act("move_page", MovePage, _move)


class DeletePage(Command, kw_only=True):
    """Delete a wiki page: it leaves lists and search (sub-pages move to the top level); its history stays in the audit
    trail."""

    page_id: PageId


wiki.delete(DeletePage, suffix="delete_page")


class RestoreRevision(Command, kw_only=True):
    """Make an older revision's title and text current again, as a new revision (nothing in between is lost)."""

    page_id: PageId
    revision: Annotated[int, Meta(ge=1, description="A revision number from crm_wiki_list_revisions.")]


def _restore(page: WikiPage, cmd: RestoreRevision, uow: UnitOfWork) -> None:
    if cmd.revision > page.version:
        raise RevisionNotFound(cmd.revision)
    old = uow.store.repository.get(page.id, version=cmd.revision)
    page.restore(old, author_id=uow.principal.user_id)


wiki.act("restore_revision", RestoreRevision, _restore)
