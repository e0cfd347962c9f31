"""Every work-management tool end to end in-process: tasks, checklist, attachments, projects, wiki."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from application.errors import ToolError
from tests.inprocess import call

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_tasks_checklist_tags_attachments(runtime, make_org, database_url):
    org = make_org("Work")
    p = org.principal(database_url)
    task = call(runtime, p, "crm_tasks_create", {"title": "Prepare offer", "tags": ["sales"],
                                                 "checklist": ["Draft", "Review"]})
    assert [i["text"] for i in task["checklist"]] == ["Draft", "Review"] and task["checklist_total"] == 2
    item = call(runtime, p, "crm_tasks_add_checklist_item", {"task_id": task["id"], "text": "Send"})
    call(runtime, p, "crm_tasks_update_checklist_item", {"task_id": task["id"], "item_id": item["id"], "done": True,
                                                         "text": "Send by e-mail"})
    first = task["checklist"][0]["id"]
    removed = call(runtime, p, "crm_tasks_remove_checklist_item", {"task_id": task["id"], "item_id": first})
    assert removed["removed"] is True
    items = call(runtime, p, "crm_tasks_list_checklist", {"task_id": task["id"]})["items"]
    assert [(i["text"], i["done"]) for i in items] == [("Review", False), ("Send by e-mail", True)]
    call(runtime, p, "crm_tasks_add_tag", {"task_id": task["id"], "tag": "urgent"})
    call(runtime, p, "crm_tasks_create", {"title": "Other", "tags": ["sales"]})
    tags = call(runtime, p, "crm_tasks_list_tags")["items"]
    assert tags[0] == {"tag": "sales", "count": 2} and {"tag": "urgent", "count": 1} in tags
    call(runtime, p, "crm_tasks_remove_tag", {"task_id": task["id"], "tag": "urgent"})
    att = call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "logo.png",
                                                        "mime_type": "image/png",
                                                        "content_base64": base64.b64encode(PNG).decode()})
    assert att["size_bytes"] == len(PNG) and att["download_url"].startswith("/attachments/")
    ref = call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "brief", "mime_type": "text/html",
                                                        "url": "https://example.com/brief"})
    assert "download_url" not in ref
    with pytest.raises(ToolError) as e:
        call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "x.pdf", "mime_type": "application/pdf",
                                                      "content_base64": base64.b64encode(PNG).decode()})
    assert e.value.field == "mime_type"
    with pytest.raises(ToolError) as e:
        call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "l.png", "mime_type": "image/png",
                                                      "size_bytes": 3, "content_base64": base64.b64encode(PNG).decode()})
    assert e.value.field == "size_bytes"
    assert len(call(runtime, p, "crm_tasks_list_attachments", {"task_id": task["id"]})["items"]) == 2
    call(runtime, p, "crm_tasks_remove_attachment", {"task_id": task["id"], "attachment_id": ref["id"]})
    done = call(runtime, p, "crm_tasks_complete", {"task_id": task["id"]})
    assert done["status"] == "done" and call(runtime, p, "crm_tasks_get", {"task_id": done["id"]})["completed_at"]
    assert call(runtime, p, "crm_tasks_reopen", {"task_id": task["id"]})["status"] == "open"
    upd = call(runtime, p, "crm_tasks_update", {"task_id": task["id"], "title": "Prepare the offer", "priority": "high",
                                                "due_date": "2030-01-02"})
    assert upd["priority"] == "high" and upd["due_date"] == "2030-01-02"
    assert call(runtime, p, "crm_tasks_get", {"task_id": task["id"]})["attachments_count"] == 1
    assert call(runtime, p, "crm_tasks_search", {"q": "offer"})["items"][0]["id"] == task["id"]
    assigned = call(runtime, p, "crm_tasks_assign", {"task_id": task["id"], "user_id": str(org.user_id)})
    assert assigned["assignee_name"] and "assignee_id" not in assigned  # rows name people; crm_tasks_get has the id
    assert call(runtime, p, "crm_tasks_get", {"task_id": task["id"]})["assignee_id"] == str(org.user_id)
    assert "assignee_name" not in call(runtime, p, "crm_tasks_unassign", {"task_id": task["id"]})
    call(runtime, p, "crm_tasks_delete", {"task_id": task["id"]})
    with pytest.raises(ToolError, match="was deleted on"):
        call(runtime, p, "crm_tasks_get", {"task_id": task["id"]})


def test_projects(runtime, make_org, database_url):
    org = make_org("Proj")
    p = org.principal(database_url)
    proj = call(runtime, p, "crm_projects_create", {"name": "Website", "start_date": "2030-01-01",
                                                    "budget_cents": 150000, "currency": "EUR"})
    assert call(runtime, p, "crm_projects_get", {"project_id": proj["id"]})["members"][0]["role"] == "manager"
    brief = call(runtime, p, "crm_projects_update_brief", {"project_id": proj["id"], "goals": ["More leads"],
                                                           "scope": "Five pages"})
    assert brief["brief"] == {"goals": ["More leads"], "scope": "Five pages"}
    assert call(runtime, p, "crm_projects_get_brief", {"project_id": proj["id"]})["brief"]["scope"] == "Five pages"
    act = call(runtime, p, "crm_projects_add_activity", {"project_id": proj["id"], "kind": "worklog", "text": "Kickoff",
                                                         "minutes": 90})
    assert act["minutes"] == 90
    got = call(runtime, p, "crm_projects_get", {"project_id": proj["id"]})
    assert got["logged_minutes"] == 90 and "goals: More leads" in got["brief_summary"]
    kinds = [a["kind"] for a in call(runtime, p, "crm_projects_list_activities", {"project_id": proj["id"]})["items"]]
    assert "worklog" in kinds and "system" in kinds
    call(runtime, p, "crm_tasks_create", {"title": "Design", "project_id": proj["id"]})
    assert len(call(runtime, p, "crm_projects_list_tasks", {"project_id": proj["id"]})["items"]) == 1
    call(runtime, p, "crm_projects_unassign_user", {"project_id": proj["id"], "user_id": str(org.user_id)})
    assert call(runtime, p, "crm_projects_list_assignments", {"project_id": proj["id"]})["items"] == []
    call(runtime, p, "crm_projects_assign_user", {"project_id": proj["id"], "user_id": str(org.user_id), "role": "member"})
    assert call(runtime, p, "crm_projects_list", {"member_id": str(org.user_id)})["items"][0]["id"] == proj["id"]
    call(runtime, p, "crm_projects_archive", {"project_id": proj["id"]})
    assert call(runtime, p, "crm_projects_list")["items"] == []
    assert [x["id"] for x in call(runtime, p, "crm_projects_list", {"archived": True})["items"]] == [proj["id"]]
    with pytest.raises(ToolError) as e:
        call(runtime, p, "crm_tasks_create", {"title": "Late", "project_id": proj["id"]})
    assert e.value.code == "project_archived" and e.value.field == "project_id"
    call(runtime, p, "crm_projects_unarchive", {"project_id": proj["id"]})
    assert call(runtime, p, "crm_projects_update", {"project_id": proj["id"], "status": "completed"})["status"] == "completed"
    call(runtime, p, "crm_projects_delete", {"project_id": proj["id"]})
    with pytest.raises(ToolError, match="was deleted on"):
        call(runtime, p, "crm_projects_get", {"project_id": proj["id"]})


def test_wiki_pages_revisions_moves(runtime, make_org, database_url):
    org = make_org("Wiki")
    p = org.principal(database_url)
    cat = call(runtime, p, "crm_wiki_create_category", {"name": "Procedures"})
    with pytest.raises(ToolError):
        call(runtime, p, "crm_wiki_create_category", {"name": "procedures"})
    root = call(runtime, p, "crm_wiki_create_page", {"title": "Onboarding", "body": "Welcome", "category_id": cat["id"]})
    child = call(runtime, p, "crm_wiki_create_page", {"title": "Accounts", "body": "Create accounts",
                                                      "parent_id": root["id"], "category_id": cat["id"]})
    grandchild = call(runtime, p, "crm_wiki_create_page", {"title": "E-mail", "body": "Mailbox", "parent_id": child["id"]})
    with pytest.raises(ToolError) as e:
        call(runtime, p, "crm_wiki_move_page", {"page_id": root["id"], "parent_id": grandchild["id"]})
    assert e.value.field == "parent_id"
    with pytest.raises(ToolError):
        call(runtime, p, "crm_wiki_move_page", {"page_id": root["id"], "parent_id": root["id"]})
    moved = call(runtime, p, "crm_wiki_move_page", {"page_id": grandchild["id"], "parent_id": root["id"]})
    assert moved["parent_id"] == root["id"] and moved["revision"] == 2
    call(runtime, p, "crm_wiki_update_page", {"page_id": root["id"], "body": "Welcome aboard", "summary": "wording"})
    restored = call(runtime, p, "crm_wiki_restore_revision", {"page_id": root["id"], "revision": 1})
    assert restored["body"] == "Welcome" and restored["revision"] == 3
    revs = call(runtime, p, "crm_wiki_list_revisions", {"page_id": root["id"]})["items"]
    assert [(r["revision"], r["change"]) for r in revs] == [(3, "restored"), (2, "edited"), (1, "created")]
    assert revs[0]["restored_from"] == 1
    tree = call(runtime, p, "crm_wiki_list_pages", {"category_id": cat["id"]})["items"]
    assert {t["title"] for t in tree} == {"Onboarding", "Accounts"}
    assert call(runtime, p, "crm_wiki_get_page", {"page_id": root["id"]})["child_ids"] == sorted(
        [child["id"], grandchild["id"]], key=lambda i: {child["id"]: "accounts", grandchild["id"]: "e-mail"}[i])
    assert call(runtime, p, "crm_wiki_list_categories")["items"][0]["pages_count"] == 2
    call(runtime, p, "crm_wiki_delete_page", {"page_id": child["id"]})
    with pytest.raises(ToolError, match="was deleted on"):
        call(runtime, p, "crm_wiki_get_page", {"page_id": child["id"]})
    with pytest.raises(ToolError):
        call(runtime, p, "crm_wiki_restore_revision", {"page_id": root["id"], "revision": 9})
    _ = dt
