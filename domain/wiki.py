"""The wiki knowledge base: markdown pages in categories and under parent pages.

Every change of a page is an event, and the events are its revisions: revision N is the page as it was
at aggregate version N. Restoring an old revision is a new change that copies its title and body.
Pages move between categories and parents, never under themselves or their own descendants.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from domain.base import TenantAggregate
from domain.shared import Category
from domain.errors import DomainError, NotFound

LANGUAGES = ("english", "italian", "simple")


def text_search_language(locale: str | None) -> str:
    """The PostgreSQL text search configuration for an organization's locale ('it-IT' -> italian)."""
    lang = (locale or "").replace("_", "-").split("-")[0].lower()
    return {"it": "italian", "en": "english"}.get(lang, "simple")


class RevisionNotFound(NotFound):
    def __init__(self, revision: int) -> None:
        super().__init__("revision", revision, field="revision")


class PageCycle(DomainError):
    code = "invalid_move"


class WikiCategory(Category):
    entity_name = "wiki category"


class WikiPage(TenantAggregate):
    entity_name = "wiki page"

    @event("Created")
    def __init__(self, org_id: UUID, title: str, body: str, category_id: UUID | None, parent_id: UUID | None,
                 language: str, author_id: UUID | None) -> None:
        self.org_id = org_id
        self.title = title
        self.body = body
        self.category_id = category_id
        self.parent_id = parent_id
        self.language = language
        self.author_id = author_id
        self.deleted = False

    @classmethod
    def create(cls, org_id: UUID, title: str, body: str, *, category_id: UUID | None = None,
               parent: WikiPage | None = None, language: str = "simple", author_id: UUID | None = None) -> WikiPage:
        if not title.strip():
            raise DomainError("a page needs a title", field="title")
        if language not in LANGUAGES:
            raise DomainError(f"language must be one of {', '.join(LANGUAGES)}", field="language")
        return cls(org_id=org_id, title=title, body=body, category_id=category_id,
                   parent_id=parent.id if parent else None, language=language, author_id=author_id)

    def edit(self, *, title: str | None = None, body: str | None = None, summary: str | None = None,
             author_id: UUID | None = None) -> bool:
        """A change of title and/or body; no change, no revision."""
        if title is not None and not title.strip():
            raise DomainError("a page needs a title", field="title")
        new_title = self.title if title is None else title
        new_body = self.body if body is None else body
        if (new_title, new_body) == (self.title, self.body):
            return False
        self._edited(title=new_title, body=new_body, summary=summary, author_id=author_id)
        return True

    @event("Edited")
    def _edited(self, title: str, body: str, summary: str | None, author_id: UUID | None) -> None:
        self.title = title
        self.body = body

    def move(self, *, category_id: UUID | None, parent: WikiPage | None, parent_ancestors: list[UUID],
             author_id: UUID | None = None) -> None:
        """`parent_ancestors` are the ids above the new parent, nearest first: the page must not be among them."""
        parent_id = parent.id if parent else None
        if parent_id == self.id or self.id in parent_ancestors:
            raise PageCycle("a page cannot be moved under itself or one of its own sub-pages", field="parent_id")
        if (category_id, parent_id) != (self.category_id, self.parent_id):
            self._moved(category_id=category_id, parent_id=parent_id, author_id=author_id)

    @event("Moved")
    def _moved(self, category_id: UUID | None, parent_id: UUID | None, author_id: UUID | None) -> None:
        self.category_id = category_id
        self.parent_id = parent_id

    def restore(self, old: WikiPage, author_id: UUID | None = None) -> None:
        """Make an older revision (the page loaded at that version) the current text, as a new revision."""
        if old.id != self.id or old.version > self.version:
            raise RevisionNotFound(old.version)
        self._restored(revision=old.version, title=old.title, body=old.body, author_id=author_id)

    @event("Restored")
    def _restored(self, revision: int, title: str, body: str, author_id: UUID | None) -> None:
        self.title = title
        self.body = body
