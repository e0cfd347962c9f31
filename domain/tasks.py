"""Tasks: something to do, by a date, for a client, deal or project.

A task is open or done, has a priority, an optional due date (a calendar day in the organization's
timezone), an assignee, links, tags, an ordered checklist and attachments (a URL, or content stored by
the application and referenced here by its SHA-256).
"""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import apply_changes
from domain.custom_fields import HasCustomFields
from domain.errors import Conflict, DomainError, NotFound
from domain.shared import Assignable, Editable, Taggable, TagNotFound  # noqa: F401 - re-exported

PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("open", "done")
TASK_FIELDS = ("title", "description", "due_date", "priority", "client_id", "deal_id", "project_id")
"""What a task records about itself (besides assignee, tags, checklist and attachments), in display order."""
EDITABLE_FIELDS = frozenset(TASK_FIELDS)
MAX_CHECKLIST_ITEMS = 200
MAX_ATTACHMENTS = 50


class ChecklistItemNotFound(NotFound):
    def __init__(self, item_id: UUID) -> None:
        super().__init__("checklist item", item_id, field="item_id")


class AttachmentNotFound(NotFound):
    def __init__(self, attachment_id: UUID) -> None:
        super().__init__("attachment", attachment_id, field="attachment_id")


class AlreadyDone(Conflict):
    code = "already_done"


class NotDone(Conflict):
    code = "not_done"


class Task(Editable, Taggable, Assignable, HasCustomFields):
    entity_name = "task"
    editable_fields = EDITABLE_FIELDS
    assignee_field = "assignee_id"

    @event("Created")
    def __init__(self, org_id: UUID, fields: dict[str, Any], assignee_id: UUID | None, created_by: UUID | None) -> None:
        self.org_id = org_id
        self.title = ""
        self.description = None
        self.due_date: date | None = None
        self.priority = "normal"
        self.client_id = self.deal_id = self.project_id = None
        apply_changes(self, fields, EDITABLE_FIELDS)
        self.assignee_id = assignee_id
        self.created_by = created_by
        self.status = "open"
        self.tags: list[str] = []
        self.checklist: dict[str, dict[str, Any]] = {}
        self.next_position = 0
        self.attachments: dict[str, dict[str, Any]] = {}
        self.deleted = False

    # -- fields ------------------------------------------------------------------------------------------
    def check_changes(self, changes: dict[str, Any]) -> None:
        if "priority" in changes and changes["priority"] not in PRIORITIES:
            raise DomainError(f"priority must be one of {', '.join(PRIORITIES)}", field="priority")
        if "title" in changes and not (changes["title"] or "").strip():
            raise DomainError("title cannot be empty", field="title")


    # -- status ------------------------------------------------------------------------------------------
    def complete(self) -> None:
        if self.status == "done":
            raise AlreadyDone("the task is already done", field="task_id")
        self._completed()

    @event("Completed")
    def _completed(self) -> None:
        self.status = "done"

    def reopen(self) -> None:
        if self.status != "done":
            raise NotDone("the task is open; only a done task can be reopened", field="task_id")
        self._reopened()

    @event("Reopened")
    def _reopened(self) -> None:
        self.status = "open"

    # -- checklist: items keep the order they were added in ----------------------------------------------
    def add_checklist_item(self, text: str, done: bool = False) -> UUID:
        if not text.strip():
            raise DomainError("a checklist item needs some text", field="text")
        if len(self.checklist) >= MAX_CHECKLIST_ITEMS:
            raise DomainError(f"a task holds at most {MAX_CHECKLIST_ITEMS} checklist items", field="text")
        item_id = uuid4()
        self._item_added(item_id=item_id, text=text, position=self.next_position, done=done)
        return item_id

    @event("ChecklistItemAdded")
    def _item_added(self, item_id: UUID, text: str, position: int, done: bool) -> None:
        self.checklist = {**self.checklist, str(item_id): {"text": text, "position": position, "done": done}}
        self.next_position = position + 1

    def _item(self, item_id: UUID) -> dict[str, Any]:
        item = self.checklist.get(str(item_id))
        if item is None:
            raise ChecklistItemNotFound(item_id)
        return item

    def update_checklist_item(self, item_id: UUID, text: str | None = None, done: bool | None = None) -> None:
        item = self._item(item_id)
        if text is not None and not text.strip():
            raise DomainError("a checklist item needs some text", field="text")
        if text is not None and text != item["text"]:
            self._item_renamed(item_id=item_id, text=text)
        if done is not None and done != item["done"]:
            self._item_ticked(item_id=item_id, done=done)

    @event("ChecklistItemRenamed")
    def _item_renamed(self, item_id: UUID, text: str) -> None:
        self.checklist = {**self.checklist, str(item_id): {**self.checklist[str(item_id)], "text": text}}

    @event("ChecklistItemTicked")
    def _item_ticked(self, item_id: UUID, done: bool) -> None:
        self.checklist = {**self.checklist, str(item_id): {**self.checklist[str(item_id)], "done": done}}

    def remove_checklist_item(self, item_id: UUID) -> None:
        self._item(item_id)
        self._item_removed(item_id=item_id)

    @event("ChecklistItemRemoved")
    def _item_removed(self, item_id: UUID) -> None:
        self.checklist = {k: v for k, v in self.checklist.items() if k != str(item_id)}

    def checklist_in_order(self) -> list[tuple[str, dict[str, Any]]]:
        return sorted(self.checklist.items(), key=lambda kv: kv[1]["position"])

    # -- attachments -------------------------------------------------------------------------------------
    def add_attachment(self, name: str, *, url: str | None = None, sha256: str | None = None,
                       size_bytes: int | None = None, mime_type: str | None = None,
                       added_by: UUID | None = None) -> UUID:
        if (url is None) == (sha256 is None):
            raise DomainError("an attachment is either a URL or stored content, exactly one of them", field="url")
        if len(self.attachments) >= MAX_ATTACHMENTS:
            raise DomainError(f"a task holds at most {MAX_ATTACHMENTS} attachments", field="name")
        attachment_id = uuid4()
        self._attached(attachment_id=attachment_id, name=name, url=url, sha256=sha256, size_bytes=size_bytes,
                       mime_type=mime_type, added_by=added_by)
        return attachment_id

    @event("AttachmentAdded")
    def _attached(self, attachment_id: UUID, name: str, url: str | None, sha256: str | None, size_bytes: int | None,
                  mime_type: str | None, added_by: UUID | None) -> None:
        self.attachments = {**self.attachments, str(attachment_id): {"name": name, "url": url, "sha256": sha256}}

    def remove_attachment(self, attachment_id: UUID) -> None:
        if str(attachment_id) not in self.attachments:
            raise AttachmentNotFound(attachment_id)
        self._detached(attachment_id=attachment_id)

    @event("AttachmentRemoved")
    def _detached(self, attachment_id: UUID) -> None:
        self.attachments = {k: v for k, v in self.attachments.items() if k != str(attachment_id)}


# -- attachment content checks (pure) ------------------------------------------------------------------------
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
)
ZIP_BASED = {  # office documents are zip containers
    "application/zip", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
}


def sniff_mime(content: bytes) -> str | None:
    """What the bytes say they are: a known signature, text (valid UTF-8 without NULs), or unknown (None)."""
    for magic, mime in _MAGIC:
        if content.startswith(magic):
            return mime
    if content.startswith(b"RIFF") and content[8:12] == b"WEBP":
        return "image/webp"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text/plain" if "\x00" not in text else None


def check_content(content: bytes, declared_mime: str, declared_size: int | None) -> None:
    """Name, size and MIME type are recorded as given, so they must agree with the content."""
    if declared_size is not None and declared_size != len(content):
        raise DomainError(f"size is {declared_size} but the content has {len(content)} bytes", field="size_bytes")
    sniffed = sniff_mime(content)
    declared = declared_mime.split(";")[0].strip().lower()
    if sniffed is None:
        if declared.startswith("text/") or declared in {"image/png", "image/jpeg", "image/gif", "application/pdf"}:
            raise DomainError(f"the content is not {declared}", field="mime_type")
        return
    if sniffed == "text/plain":
        if declared.startswith("text/") or declared in {"application/json", "application/xml", "image/svg+xml",
                                                         "application/csv", "application/octet-stream"}:
            return
        raise DomainError(f"the content is text, not {declared}", field="mime_type")
    if sniffed == declared or (sniffed == "application/zip" and declared in ZIP_BASED) \
            or declared == "application/octet-stream":
        return
    raise DomainError(f"the content is {sniffed}, not {declared}", field="mime_type")
