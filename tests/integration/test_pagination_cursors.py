"""Every list tool pages with cursors: walking all pages finds each row once, in every sort order (the second page
of users, deals sorted by close date with open deals on the page), and a tampered cursor is always the clear
"cursor is not valid" error on `cursor`, never an internal error."""

from __future__ import annotations

import base64
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from application.inventory import registry
from application.errors import ToolError
from projections import pagination
from tests.inprocess import call
from tests.tool_args import sample_args

LIST_TOOLS = [op for op in registry if "cursor" in op.input_schema()["properties"]]


def sorts_of(op: Any) -> list[str | None]:
    prop = op.input_schema()["properties"].get("sort")
    if prop is None:
        return [None]
    return next(v["enum"] for v in prop.get("anyOf", [prop]) if "enum" in v)


CASES = [(op, sort) for op in LIST_TOOLS for sort in sorts_of(op)]


def case_id(case: Any) -> str:
    op, sort = case
    return op.name + (f"-{sort}" if sort else "")


@pytest.fixture(scope="module")
def listed(runtime, database_url) -> dict[str, Any]:
    """An organization with at least three rows in every list, and the ids lists need (filters included: each
    list is asked with every id argument it takes, see tests.tool_args)."""
    import uuid

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        org = identity.create_organization(conn, f"Pages {uuid.uuid4().hex[:6]}", f"p-{uuid.uuid4().hex[:6]}@example.com",
                                           "Zoe Admin")
        for name in ("Anna Bianchi", "Bruno Verdi"):
            identity.create_user(conn, org.organization_id, f"{uuid.uuid4().hex[:6]}@example.com", name, "sales")
        admin = identity.principal_for_token(conn, org.token)

    def do(tool: str, **args: Any) -> dict[str, Any]:
        return call(runtime, admin, tool, args)

    clients = [do("crm_clients_create_lead", business_name=name) for name in ("Gamma", "Alfa", "Beta")]
    client_id = clients[0]["id"]
    today = date.today()
    deals = [do("crm_deals_create", title=f"Deal {i}", client_id=client_id, value=str(1000 * (i % 3))) for i in range(5)]
    for deal, days in zip(deals[:3], (3, 10, 10)):  # two closed the same day, one earlier; two stay open
        do("crm_deals_set_status", deal_id=deal["id"], status="accepted", close_date=(today - timedelta(days=days)).isoformat())
    for body in ("one", "two", "three"):
        do("crm_clients_add_note", client_id=client_id, body=body)
        do("crm_deals_add_note", deal_id=deals[3]["id"], body=body)
        do("crm_clients_add_recording", client_id=client_id, media_url="https://example.com/a.mp3", duration_seconds=5)
        do("crm_activities_log_call", client_id=client_id, deal_id=deals[3]["id"], subject=body)
        do("crm_services_create", name=f"Service {body}", unit_price="10")
    projects = [do("crm_projects_create", name=name, end_date=end, client_id=client_id) for name, end in
                (("Zeta", None), ("Eta", (today + timedelta(days=9)).isoformat()), ("Theta", today.isoformat()))]
    project_id = projects[0]["id"]
    do("crm_projects_add_activity", project_id=project_id, kind="comment", text="hello")
    for i, (due, priority) in enumerate(((None, "high"), (today, "low"), (today, "urgent"), (None, "normal"))):
        do("crm_tasks_create", title=f"Task {i}", project_id=project_id, client_id=client_id, deal_id=deals[3]["id"],
           priority=priority,
           **({"due_date": due.isoformat()} if due else {}))
    pages = [do("crm_wiki_create_page", title=title, body="text") for title in ("Uno", "Due", "Tre")]
    for body in ("v2", "v3"):
        do("crm_wiki_update_page", page_id=pages[0]["id"], body=body)
    ids_13 = seed_settings_and_invoice_lists(runtime, admin, do)
    ids = {"client_id": client_id, "deal_id": deals[3]["id"], "project_id": project_id, "page_id": pages[0]["id"],
           "crm_audit_entity_history.entity_id": pages[0]["id"]}
    ids.update(ids_13)
    ids.update(seed_newsletter_and_qr_lists(runtime, do))
    ids.update(seed_workflow_lists(runtime, do))
    ids.update(seed_whatsapp_lists(runtime, admin, do))
    return {"runtime": runtime, "admin": admin, "ids": ids}


def seed_workflow_lists(runtime: Any, do: Any) -> dict[str, Any]:
    """Three workflows, and three runs of the first (a lead created with its source; its only step stops the run,
    so the runs change nothing the other lists show). Waits for the runs: the e2e server's engine may run them."""
    import time

    from application.workflow_engine import WorkflowEngine

    workflows = [do("crm_workflows_create", name=name) for name in ("Zeta", "Alfa", "Beta")]
    do("crm_workflows_set_trigger", workflow_id=workflows[0]["id"], type="client_created",
       config={"source": "workflow-pages"})
    do("crm_workflows_add_step", workflow_id=workflows[0]["id"], type="stop", config={"reason": "pages"})
    do("crm_workflows_activate", workflow_id=workflows[0]["id"])
    for name in ("Uno", "Due", "Tre"):
        do("crm_clients_create_lead", business_name=f"Workflow {name}", source="workflow-pages")
    engine = WorkflowEngine(runtime)
    try:
        engine.drain_sync()
    finally:
        engine.close()
    deadline = time.monotonic() + 60
    while len(do("crm_workflows_list_runs", workflow_id=workflows[0]["id"], status="stopped")["items"]) < 3:
        assert time.monotonic() < deadline, "the workflow runs did not finish"
        time.sleep(0.1)
    do("crm_workflows_deactivate", workflow_id=workflows[0]["id"])
    return {"workflow_id": workflows[0]["id"]}


def seed_whatsapp_lists(runtime: Any, admin: Any, do: Any) -> dict[str, Any]:
    """Three WhatsApp chats (deliveries stored as the webhook stores them, applied by the worker), three messages in
    the first, three notes on it."""
    from application import whatsapp_inbox
    from tests.whatsapp_stub import delivery, text_message

    number = "106540352242888"
    messages = [text_message(wa_id, f"wamid.PAGES{wa_id}{i}", f"messaggio {i}")
                for wa_id in ("393330000011", "393330000012", "393330000013") for i in range(3 if wa_id.endswith("1") else 1)]
    with psycopg.connect(runtime.database_url, autocommit=True, row_factory=dict_row) as conn:
        whatsapp_inbox.store_delivery(conn, admin.organization_id, number, delivery(number, messages=messages))
    runtime.whatsapp.run_pending()
    runtime.settle()
    chat = next(c for c in do("crm_whatsapp_list_chats")["items"] if c["phone"] == "+393330000011")
    for body in ("uno", "due", "tre"):
        do("crm_whatsapp_add_note", chat_id=chat["id"], body=body)
    return {"chat_id": chat["id"], "crm_whatsapp_list_chats.client_id": None}


def seed_newsletter_and_qr_lists(runtime: Any, do: Any) -> dict[str, Any]:
    """Three of every newsletter and QR list: mailing lists, subscribers, campaigns, blacklist entries, QR codes,
    and scans (recorded as the /q/ endpoint records them)."""
    from interfaces.tracking import _scan

    lists = [do("crm_newsletter_create_list", name=name) for name in ("Clienti", "Fornitori", "Stampa")]
    do("crm_newsletter_add_subscribers", list_id=lists[0]["id"], consent_source="form",
       subscribers=[{"email": f"{n}@example.com"} for n in ("c", "a", "b")])
    for name in ("Marzo", "Aprile", "Maggio"):
        do("crm_newsletter_create_campaign", name=name, subject=name, from_name="Shop", from_email="n@shop.example",
           text_body="t", list_ids=[lists[0]["id"]])
    for value in ("spam.example", "x@example.com", "junk.example"):
        do("crm_newsletter_add_to_blacklist", value=value)
    codes = [do("crm_qr_codes_create", target_url=f"https://example.com/{n}") for n in ("a", "b", "c")]
    for agent in ("iPhone Mobile", "Windows NT", "Googlebot"):
        assert _scan(runtime, codes[0]["code"], agent, None, "127.0.0.1")[0] == 302
    runtime.settle()
    return {"list_id": lists[0]["id"], "qr_code_id": codes[0]["id"], "crm_qr_codes_list.client_id": None,
            "crm_qr_codes_list.deal_id": None}


def seed_settings_and_invoice_lists(runtime: Any, admin: Any, do: Any) -> dict[str, Any]:
    """Three of every settings and invoices list: templates, API tokens, invoices (imported as the sync worker
    imports them, none allocated) and sync queue items."""
    from application.invoice_sync import import_documents
    from tests.fic_stub import document

    for name in ("Welcome", "Reminder", "Offer"):
        do("crm_settings_create_template", kind="email", name=name, entity="client", subject=name, text_body="Hi")
    for name in ("Zapier", "Make"):
        do("crm_settings_create_api_token", name=name)
    do("crm_settings_update_organization", fattureincloud={"company_id": 555, "access_token": "pages-token"})
    day = date.today() - timedelta(days=20)
    docs = [document(n, day=day - timedelta(days=n % 2), net=str(100 * n), instalments=1 + n % 2) for n in (1, 2, 3)]
    with psycopg.connect(runtime.database_url, autocommit=True, row_factory=dict_row) as conn:
        import_documents(runtime.store, conn, admin.organization_id, 555, docs, requested_by=admin.user_id)
    runtime.settle()
    for months in (1, 2, 3):
        do("crm_invoices_sync", date_from=(day - timedelta(days=30 * months)).isoformat(), date_to=day.isoformat())
    return {"crm_invoices_list.client_id": None, "crm_invoices_list.deal_id": None}


def page(listed: dict[str, Any], op: Any, sort: str | None, limit: int, cursor: str | None = None) -> dict[str, Any]:
    args = {**sample_args(op, listed["ids"]), "limit": limit, **({"sort": sort} if sort else {})}
    if cursor is not None:
        args["cursor"] = cursor
    return call(listed["runtime"], listed["admin"], op.name, args)


def row_key(item: dict[str, Any]) -> Any:
    # revisions are numbered, not identified; audit entries are events (notification_id) or settings changes
    for key in ("id", "revision", "notification_id", "settings_change_id"):
        if key in item:
            return key, item[key]
    return None


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_walking_every_page_finds_every_row_once(listed, case):
    op, sort = case
    everything = [row_key(item) for item in page(listed, op, sort, 100)["items"]]
    assert len(everything) >= 3, (op.name, everything)
    for limit in (1, 2):
        walked, cursor = [], None
        while True:
            got = page(listed, op, sort, limit, cursor)
            walked += [row_key(item) for item in got["items"]]
            cursor = got.get("next_cursor")
            if cursor is None:
                break
        assert walked == everything, (op.name, sort, limit)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_VALUES = [b"\x00\x00\x00", b"\xff\xfe", b"a\x00b", b"\xed\xa0\x80", b"\xc0\x80", b"\x00" * 9, b"\xff" * 5]
"""Sort values no cursor holds, whatever the sort's type: NUL, invalid UTF-8, an encoded lone surrogate, an overlong
NUL, all of lengths no number has, nor the audit's cursors (each type's own limits: tests/unit/test_pagination_cursor.py)."""


def tampered(real: str) -> list[str]:
    """Cursors made from a real one: cut, altered or extended (the checksum refuses those), and well-sealed ones
    whose parts are what a cursor never holds (the type checks refuse those), and text that is no cursor at all."""
    raw = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
    body = raw[:-pagination.CHECK_BYTES]
    row_id, value = body[:16], body[16:]
    altered = [b64(raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:]) for i in range(0, len(raw), 3)]
    sealed = [pagination.seal(row_id + v) for v in BAD_VALUES] + [pagination.seal(b""), pagination.seal(row_id[:15])]
    mangled = [real[: len(real) // 2], real[:-1], real + "A", real + "AAAA", "%%%", "not a cursor!", "\x00", "é",
               b64(b"\xff\xfe\x00"), b64(b"[1, 2"), "x" * 600]
    return altered + sealed + mangled


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_tampered_cursor_is_refused_clearly(listed, case):
    op, sort = case
    real = page(listed, op, sort, 1).get("next_cursor")
    assert real, f"{op.name} needs two rows for a cursor"
    for cursor in tampered(real):
        with pytest.raises(ToolError) as e:
            page(listed, op, sort, 1, cursor)
        assert e.value.code in {"invalid_arguments", "rule_violation"} and e.value.field == "cursor", (op.name, cursor, e.value)
        if e.value.code == "rule_violation":
            assert e.value.message == "cursor is not valid; pass next_cursor from the previous page unchanged"
