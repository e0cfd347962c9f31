"""Domain rules of tasks, projects and the wiki: given some history, when a command, then events or an error."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest

from domain.errors import Conflict, DomainError, NotFound
from domain.projects import Project, ProjectArchived
from domain.tasks import AlreadyDone, NotDone, Task, check_content, sniff_mime
from domain.wiki import PageCycle, WikiPage, text_search_language

ORG = uuid4()


def new_task(**fields) -> Task:
    return Task(org_id=ORG, fields={"title": "Call", **fields}, assignee_id=None, created_by=None)


def names(agg) -> list[str]:
    return [type(e).__qualname__ for e in agg.collect_events()]


# -- tasks -------------------------------------------------------------------------------------------------
def test_task_complete_and_reopen():
    task = new_task()
    task.complete()
    with pytest.raises(AlreadyDone):
        task.complete()
    task.reopen()
    with pytest.raises(NotDone):
        task.reopen()
    assert names(task) == ["Task.Created", "Task.Completed", "Task.Reopened"]
    assert task.status == "open"


def test_task_update_records_only_changes_and_checks_priority():
    task = new_task(priority="normal", due_date=date(2030, 1, 1))
    task.collect_events()
    task.update({"priority": "normal", "due_date": date(2030, 1, 2)})
    assert [e.changes for e in task.collect_events()] == [{"due_date": date(2030, 1, 2)}]
    with pytest.raises(DomainError) as e:
        task.update({"priority": "whenever"})
    assert e.value.field == "priority"


def test_checklist_keeps_order_through_rename_tick_and_remove():
    task = new_task()
    a = task.add_checklist_item("Draft")
    b = task.add_checklist_item("Review")
    c = task.add_checklist_item("Send")
    task.update_checklist_item(b, text="Review with Anna", done=True)
    task.remove_checklist_item(a)
    d = task.add_checklist_item("Archive")
    assert [(k, v["text"], v["done"]) for k, v in task.checklist_in_order()] == [
        (str(b), "Review with Anna", True), (str(c), "Send", False), (str(d), "Archive", False)]
    with pytest.raises(NotFound) as e:
        task.update_checklist_item(a, done=True)
    assert e.value.field == "item_id"
    with pytest.raises(DomainError):
        task.add_checklist_item("   ")


def test_tags_and_assignment():
    task = new_task()
    task.add_tag("x")
    task.add_tag("x")
    assert task.tags == ["x"]
    task.remove_tag("x")
    with pytest.raises(NotFound):
        task.remove_tag("x")
    user = uuid4()
    task.assign(user)
    assert task.assignee_id == user
    task.unassign()
    assert task.assignee_id is None


def test_attachment_is_url_or_content_and_checked():
    task = new_task()
    with pytest.raises(DomainError):
        task.add_attachment("a.pdf")
    att = task.add_attachment("a.pdf", url="https://x.test/a.pdf")
    task.remove_attachment(att)
    with pytest.raises(NotFound):
        task.remove_attachment(att)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 10
    assert sniff_mime(png) == "image/png"
    check_content(png, "image/png", len(png))
    with pytest.raises(DomainError) as e:
        check_content(png, "image/png", 3)
    assert e.value.field == "size_bytes"
    with pytest.raises(DomainError) as e:
        check_content(png, "application/pdf", None)
    assert e.value.field == "mime_type"
    with pytest.raises(DomainError):
        check_content(b"hello", "image/jpeg", None)
    check_content(b"a,b\n1,2\n", "text/csv", None)
    check_content(b"PK\x03\x04rest", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", None)


# -- projects ----------------------------------------------------------------------------------------------
def new_project() -> Project:
    return Project.create(ORG, {"name": "Site", "start_date": date(2030, 1, 1)}, None)


def test_project_dates_and_status_are_checked():
    with pytest.raises(DomainError) as e:
        Project.create(ORG, {"name": "X", "start_date": date(2030, 2, 1), "end_date": date(2030, 1, 1)}, None)
    assert e.value.field == "end_date"
    project = new_project()
    with pytest.raises(DomainError):
        project.update({"status": "sleeping"})


def test_archived_project_refuses_tasks_and_changes_until_unarchived():
    project = new_project()
    project.archive()
    with pytest.raises(ProjectArchived):
        project.ensure_accepts_tasks()
    with pytest.raises(ProjectArchived):
        project.log_activity("comment", "hi")
    with pytest.raises(ProjectArchived):
        project.archive()
    project.unarchive()
    project.ensure_accepts_tasks()
    with pytest.raises(Conflict):
        project.unarchive()


def test_members_brief_and_activity_log():
    project = new_project()
    user = uuid4()
    project.assign_user(user, "member")
    project.assign_user(user, "manager")
    assert project.members == {str(user): "manager"}
    with pytest.raises(DomainError):
        project.assign_user(user, "boss")
    project.unassign_user(user)
    with pytest.raises(NotFound):
        project.unassign_user(user)
    project.update_brief({"goals": ["More leads"]})
    project.update_brief({"scope": "Five pages"})
    assert project.brief == {"goals": ["More leads"], "scope": "Five pages"}
    with pytest.raises(DomainError):
        project.update_brief({"mood": "good"})
    project.log_activity("worklog", "Design", minutes=30)
    with pytest.raises(DomainError) as e:
        project.log_activity("comment", "x", minutes=5)
    assert e.value.field == "minutes"


# -- wiki --------------------------------------------------------------------------------------------------
def test_wiki_revisions_are_events_and_restore_is_a_new_change():
    page = WikiPage.create(ORG, "Guide", "one")
    assert page.edit(body="two") is True
    assert page.edit(body="two") is False  # no change, no revision
    old = WikiPage.create(ORG, "Guide", "one")  # stand-in for the page loaded at version 1
    old._id = page.id  # noqa: SLF001 - same page, older version
    page.restore(old)
    assert (page.body, page.version) == ("one", 3)


def test_wiki_moves_refuse_cycles():
    root = WikiPage.create(ORG, "Root", "")
    child = WikiPage.create(ORG, "Child", "", parent=root)
    with pytest.raises(PageCycle):
        root.move(category_id=None, parent=child, parent_ancestors=[root.id])
    with pytest.raises(PageCycle):
        root.move(category_id=None, parent=root, parent_ancestors=[])
    category = uuid4()
    child.move(category_id=category, parent=None, parent_ancestors=[])
    assert (child.category_id, child.parent_id) == (category, None)


def test_language_from_locale():
    assert text_search_language("it-IT") == "italian"
    assert text_search_language("en_US") == "english"
    assert text_search_language("de-DE") == "simple"
