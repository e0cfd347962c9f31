"""Attachment download links: valid, expired and tampered, served by the real server."""

from __future__ import annotations

import base64
import time
from uuid import uuid4

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from application import attachments as blobs
from tests.inprocess import call

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _attach(runtime, org, database_url):
    p = org.principal(database_url)
    task = call(runtime, p, "crm_tasks_create", {"title": "Contract"})
    att = call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "contratto firmato.pdf",
                                                        "mime_type": "application/pdf", "size_bytes": len(PDF),
                                                        "content_base64": base64.b64encode(PDF).decode()})
    return task, att


def test_valid_link_downloads_the_content(runtime, make_org, database_url, server):
    _, att = _attach(runtime, make_org("Att"), database_url)
    r = httpx.get(server.base_url + att["download_url"])
    assert r.status_code == 200 and r.content == PDF
    assert r.headers["content-type"].startswith("application/pdf")
    assert "contratto%20firmato.pdf" in r.headers["content-disposition"]


def test_expired_and_tampered_links_are_refused(runtime, make_org, database_url, server):
    _, att = _attach(runtime, make_org("Att2"), database_url)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        secret = blobs.link_secret(conn)
    old, _ = blobs.download_link(secret, att["id"], now=time.time() - 3600)
    assert httpx.get(server.base_url + old).status_code == 410
    url = att["download_url"]
    sig = url.rsplit("sig=", 1)[1]
    tampered_sig = url[: -len(sig)] + ("A" if sig[0] != "A" else "B") + sig[1:]
    assert httpx.get(server.base_url + tampered_sig).status_code == 403
    expires = int(url.split("expires=")[1].split("&")[0])
    longer = url.replace(f"expires={expires}", f"expires={expires + 86400}")
    assert httpx.get(server.base_url + longer).status_code == 403
    other = url.replace(att["id"], str(uuid4()))
    assert httpx.get(server.base_url + other).status_code == 403
    assert httpx.get(server.base_url + url.split("?")[0]).status_code == 403


def test_link_checks_unit():
    secret = b"s3cret"
    link, expires = blobs.download_link(secret, "abc", now=1000, ttl=60)
    assert blobs.check_link(secret, "abc", expires, link.rsplit("sig=", 1)[1], now=1030) is None
    assert blobs.check_link(secret, "abc", expires, link.rsplit("sig=", 1)[1], now=1061) == "expired"
    assert blobs.check_link(b"other", "abc", expires, link.rsplit("sig=", 1)[1], now=1030) == "invalid"
    assert blobs.check_link(secret, "abc", "soon", "x", now=1030) == "invalid"


@pytest.mark.parametrize("size", [blobs.MAX_INLINE_BYTES + 1])
def test_inline_limit_is_in_the_schema_and_enforced(runtime, make_org, database_url, size):
    """The published schema says the limit in words (schemas are published lean); the server enforces it."""
    from application.errors import ToolError

    op = runtime.registry.get("crm_tasks_add_attachment")
    assert "2 MiB" in op.description or str(blobs.MAX_INLINE_BYTES) in op.description
    p = make_org("Limit").principal(database_url)
    task = call(runtime, p, "crm_tasks_create", {"title": "Too big"})
    with pytest.raises(ToolError) as e:
        call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "big.pdf", "mime_type": "application/pdf",
                                                      "content_base64": base64.b64encode(b"x" * size).decode()})
    assert e.value.field == "content_base64"


def test_content_is_kept_exactly_as_long_as_an_attachment_references_it(runtime, make_org, database_url):
    """Seen: a refused add kept 5 MB with no event; removing an attachment or deleting its task kept its bytes."""
    from application.errors import ToolError

    org = make_org("Bytes")
    p = org.principal(database_url)

    def stored_bytes() -> int:
        with psycopg.connect(database_url) as conn:
            return conn.execute("SELECT coalesce(sum(length(content)), 0) FROM attachment_blobs WHERE organization_id = %s",
                                (org.organization_id,)).fetchone()[0]

    task = call(runtime, p, "crm_tasks_create", {"title": "Bytes"})
    big = base64.b64encode(b"%PDF-1.4\n" + b"x" * 1_000_000).decode()
    with pytest.raises(ToolError):  # refused after the content was decoded: wrong MIME type for PDF bytes
        call(runtime, p, "crm_tasks_add_attachment", {"task_id": task["id"], "name": "a.png", "mime_type": "image/png",
                                                     "content_base64": big})
    assert stored_bytes() == 0
    args = {"task_id": task["id"], "name": "a.pdf", "mime_type": "application/pdf", "content_base64": big}
    first = call(runtime, p, "crm_tasks_add_attachment", args)
    second = call(runtime, p, "crm_tasks_add_attachment", {**args, "name": "copy.pdf"})  # same content: kept once
    other = call(runtime, p, "crm_tasks_create", {"title": "Other"})
    third = call(runtime, p, "crm_tasks_add_attachment", {**args, "task_id": other["id"]})
    assert stored_bytes() == 1_000_009
    call(runtime, p, "crm_tasks_remove_attachment", {"task_id": task["id"], "attachment_id": first["id"]})
    call(runtime, p, "crm_tasks_delete", {"task_id": task["id"]})  # still referenced by the other task
    assert stored_bytes() == 1_000_009 and second["id"] and third["id"]
    call(runtime, p, "crm_tasks_remove_attachment", {"task_id": other["id"], "attachment_id": third["id"]})
    assert stored_bytes() == 0
