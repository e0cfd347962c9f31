"""Every work-management tool: another organization's ids are "not found", and a token without the
resource's read / write / delete grant is refused naming the missing permission."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid

import msgspec
import pytest

from application.errors import PermissionDenied, ToolError
from tests.inprocess import call

WORK = re.compile(r"^crm_(tasks|projects|wiki)_")
DUMMY = {"title": "x", "name": "x", "text": "x", "tag": "x", "q": "x", "kind": "comment", "mime_type": "text/plain",
         "url": "https://example.com/x", "revision": 1, "role": "member", "body": "x", "scope": "x"}


FILTERS_ONLY = {"crm_tasks_list", "crm_wiki_list_pages", "crm_wiki_search", "crm_projects_list"}


def _args(op, ids: dict[str, str]) -> dict:
    """Arguments for a tool: the ids of org A's entities, plus whatever else is required."""
    schema = op.input_schema()
    out = {}
    for field in schema.get("required", []):
        out[field] = ids.get(field, DUMMY.get(field, str(uuid.uuid4())))
    for field in schema["properties"]:
        if field in ids and field not in out and field.endswith("_id") and field != "user_id":
            out[field] = ids[field]
    return out


@pytest.fixture
def org_a_entities(runtime, make_org, database_url):
    org = make_org("IsoA")
    p = org.principal(database_url)
    project = call(runtime, p, "crm_projects_create", {"name": "A project"})
    task = call(runtime, p, "crm_tasks_create", {"title": "A task", "checklist": ["one"], "project_id": project["id"]})
    att = call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "a.txt", "mime_type": "text/plain",
                                                        "content_base64": base64.b64encode(b"hi").decode()})
    cat = call(runtime, p, "crm_wiki_create_category", {"name": "A cat"})
    page = call(runtime, p, "crm_wiki_create_page", {"title": "A page", "body": "secret words", "category_id": cat["id"]})
    ids = {"task_id": task["id"], "item_id": task["checklist"][0]["id"], "attachment_id": att["id"],
           "project_id": project["id"], "page_id": page["id"], "category_id": cat["id"], "user_id": str(org.user_id)}
    return org, ids


def test_another_organization_sees_nothing(runtime, make_org, database_url, org_a_entities):
    _, ids = org_a_entities
    other = make_org("IsoB")
    pb = other.principal(database_url)
    checked = []
    for op in runtime.registry:
        if not WORK.match(op.name):
            continue
        args = _args(op, ids)
        touches = [k for k in args if k in ids and k != "user_id"]
        if touches and op.name in FILTERS_ONLY:  # ids here only filter a list: nothing of A's comes back
            assert call(runtime, pb, op.name, args)["items"] == [], op.name
        elif touches:
            with pytest.raises(ToolError, match="not found"):
                call(runtime, pb, op.name, args)
            checked.append(op.name)
    # lists and searches of B show none of A's rows
    assert call(runtime, pb, "crm_tasks_list")["items"] == []
    assert call(runtime, pb, "crm_tasks_search", {"q": "task"})["items"] == []
    assert call(runtime, pb, "crm_tasks_list_tags")["items"] == []
    assert call(runtime, pb, "crm_projects_list")["items"] == []
    assert call(runtime, pb, "crm_wiki_list_pages")["items"] == []
    assert call(runtime, pb, "crm_wiki_search", {"q": "secret"})["items"] == []
    assert call(runtime, pb, "crm_wiki_list_categories")["items"] == []
    assert len(checked) >= 30, checked


def test_permissions_are_checked_for_every_work_tool(runtime, database_url, db, org_a_entities):
    from application import identity

    org, ids = org_a_entities
    viewer = identity.create_user(db, org.organization_id, f"viewer-{uuid.uuid4().hex[:6]}@example.com", "Viewer", "viewer")
    token, _ = identity.create_token(db, org.organization_id, viewer, None)
    reader = identity.principal_for_token(db, token)
    no_wiki_token, _ = identity.create_token(db, org.organization_id, org.user_id, {"tasks": "rwd", "projects": "rwd"})
    no_wiki = identity.principal_for_token(db, no_wiki_token)
    for op in runtime.registry:
        if not WORK.match(op.name):
            continue
        args = _args(op, ids)
        if op.kind != "query":
            with pytest.raises(PermissionDenied) as e:
                asyncio.run(runtime.runner.call(reader, op.name, args))
            assert op.permission in e.value.message
        if op.resource == "wiki":
            with pytest.raises(PermissionDenied):
                asyncio.run(runtime.runner.call(no_wiki, op.name, args))
    # reads are allowed to the viewer
    got = msgspec.to_builtins(asyncio.run(runtime.runner.call(reader, "crm_tasks_get", {"task_id": ids["task_id"]})))
    assert got["id"] == ids["task_id"]
