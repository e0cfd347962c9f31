"""Invoices from FattureInCloud on PostgreSQL, against a local FattureInCloud API (tests/fic_stub.py) that the
official SDK talks to: paginated sync, idempotency (twice, and across a worker killed mid-sync), upstream changes
and removals as events, 429 Retry-After, back-off and failure, 401, the queue tools, progress while running,
reading, totals, allocation never above the invoice, suggestions, and a deal's invoiced and paid amounts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from application.invoice_sync import InvoiceSyncWorker, SyncSettings
from tests.conftest import ROOT
from tests.fic_stub import FattureInCloudStub, document
from tests.inprocess import Caller

YEAR = dt.date.today().year - 1
DAY = dt.date(YEAR, 3, 1)


@pytest.fixture
def database_url(fresh_database_url):
    """A database of this test's own: the server another test module may be running on the shared one has an
    invoice sync worker too, which must not take these tests' queue items."""
    return fresh_database_url


@pytest.fixture
def runtime(iso_runtime):
    return iso_runtime


@pytest.fixture
def stub():
    with FattureInCloudStub(company_id=12345, token="fic-test-token") as s:
        yield s


@pytest.fixture
def fic(runtime, make_org, database_url, stub):
    """An organization connected to the stub, a caller for its admin, and a worker pointed at the stub."""
    org = make_org("Invoices")
    call = Caller(runtime, org.principal(database_url))
    call("crm_settings_update_organization", {"fattureincloud": {"company_id": stub.company_id, "access_token": stub.token}})
    settings = dataclasses.replace(SyncSettings.from_env(), base_url=stub.url, page_size=100, backoff=2, max_attempts=3)
    worker = InvoiceSyncWorker(database_url, runtime.store, settings=settings)
    yield org, call, worker
    worker.close()


def events(db, org_id, topic_like: str = "%Invoice%") -> int:
    return db.execute("SELECT count(*) AS n FROM stored_events WHERE organization_id = %s AND topic LIKE %s",
                      (org_id, topic_like)).fetchone()["n"]


def item(call, item_id):
    return next(i for i in call("crm_invoices_list_queue", {"limit": 100})["items"] if i["id"] == item_id)


def sync(call, worker, runtime, **args):
    queued = call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31", **args})
    worker.run_pending()
    runtime.settle()
    return item(call, queued["id"])


def test_paginated_sync_is_idempotent_and_upstream_changes_become_events(fic, stub, runtime, db):
    org, call, worker = fic
    stub.add(*[document(i, day=DAY + dt.timedelta(days=i % 300), client=f"Cliente {i % 7}", vat=f"IT{i % 7:011d}",
                        instalments=1 + i % 2) for i in range(1, 251)])
    done = sync(call, worker, runtime)
    assert done["state"] == "done" and done["attempts"] == 0
    assert done["progress"] == {"pages_done": 3, "pages_total": 3, "documents_done": 250, "documents_total": 250,
                                "created": 250}
    assert [r["query"]["page"] for r in stub.requests] == ["1", "2", "3"]
    assert stub.requests[0]["query"]["q"] == f"date >= '{YEAR}-01-01' and date <= '{YEAR}-12-31'"
    assert stub.requests[0]["query"]["fieldset"] == "detailed" and stub.requests[0]["query"]["type"] == "invoice"
    assert events(db, org.organization_id) == 250
    page = call("crm_invoices_list", {"limit": 100})
    assert len(page["items"]) == 100 and page["next_cursor"]
    again = sync(call, worker, runtime)
    assert again["progress"]["unchanged"] == 250 and again["progress"].get("created", 0) == 0
    assert events(db, org.organization_id) == 250  # synced twice: still one invoice each, nothing appended

    stub.add(document(7, day=DAY + dt.timedelta(days=7), client="Cliente 0", vat="IT00000000000", paid=True,
                      instalments=2))
    stub.add(document(8, day=DAY + dt.timedelta(days=8), client="Cliente 1", vat="IT00000000001", net="2000"))
    stub.remove(9)
    third = sync(call, worker, runtime)
    assert (third["progress"]["updated"], third["progress"]["unchanged"], third["progress"]["removed"]) == (2, 247, 1)
    topics = [r["topic"].rsplit(".", 1)[-1] for r in db.execute(
        "SELECT topic FROM stored_events WHERE organization_id = %s AND topic LIKE '%%Invoice%%'"
        " ORDER BY notification_id DESC LIMIT 3", (org.organization_id,))]
    assert sorted(topics) == ["RemovedUpstream", "UpstreamChanged", "UpstreamChanged"]
    found = {i["fattureincloud_id"]: i for i in call("crm_invoices_list", {"client_vat": "IT00000000000", "limit": 100})["items"]}
    assert found[7]["status"] == "paid" and found[7]["outstanding"]["cents"] == 0
    eight = call("crm_invoices_search", {"q": "8"})["items"][0]
    assert eight["fattureincloud_id"] == 8 and eight["gross"]["amount"] == "2440.00"
    nine = call("crm_invoices_list", {"status": "cancelled"})["items"]
    assert [i["fattureincloud_id"] for i in nine] == [9]
    stub.add(document(9, day=DAY + dt.timedelta(days=9), client="Cliente 2", vat="IT00000000002", instalments=2))
    assert sync(call, worker, runtime)["progress"]["updated"] == 1
    assert call("crm_invoices_get", {"invoice_id": nine[0]["id"]})["status"] == "unpaid"  # restored


def test_reading_an_invoice_search_filters_and_totals(fic, stub, runtime):
    org, call, worker = fic
    today = dt.date.today()
    stub.add(document(1, day=DAY, client="Studio Dentistico Bianchi", vat="IT11111111111", net="1000", instalments=2,
                      numeration="/A", subject="Impianto"),
             document(2, day=DAY + dt.timedelta(days=1), client="Rossi Srl", vat="IT22222222222", net="500", paid=True),
             document(3, day=today - dt.timedelta(days=400) if today.year - 1 == YEAR else DAY, client="Verdi",
                      vat=None, net="100"))
    sync(call, worker, runtime)
    hit = call("crm_invoices_search", {"q": "1/A"})["items"][0]
    assert hit["number"] == "1/A" and hit["client_name"] == "Studio Dentistico Bianchi"
    assert [i["number"] for i in call("crm_invoices_search", {"q": "dentist"})["items"]] == ["1/A"]
    assert [i["number"] for i in call("crm_invoices_search", {"q": "IT 22222222222"})["items"]] == ["2"]
    one = call("crm_invoices_get", {"invoice_id": hit["id"]})
    assert (one["net"]["amount"], one["vat"]["amount"], one["gross"]["amount"]) == ("1000.00", "220.00", "1220.00")
    assert [p["amount"]["amount"] for p in one["payments"]] == ["610.00", "610.00"]
    assert one["lines"][0]["vat_percent"] == "22" and one["vat_breakdown"][0]["taxable"]["cents"] == 100000
    assert one["pdf_url"].endswith("/1.pdf") and one["remaining"]["cents"] == 122000
    assert {i["number"] for i in call("crm_invoices_list", {"status": "open"})["items"]} == {"1/A", "3"}
    assert [i["number"] for i in call("crm_invoices_list", {"status": "paid"})["items"]] == ["2"]
    assert [i["number"] for i in call("crm_invoices_list", {"client": "rossi"})["items"]] == ["2"]
    assert [i["number"] for i in call("crm_invoices_list", {"client_vat": "11111111111"})["items"]] == ["1/A"]
    overdue = {i["number"] for i in call("crm_invoices_list", {"overdue": True})["items"]}
    assert overdue == {"1/A", "3"}  # due dates in the past, unpaid
    totals = call("crm_invoices_totals", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})["totals"]
    assert len(totals) == 1 and totals[0]["currency"] == "EUR" and totals[0]["invoices"] == 3
    assert (totals[0]["invoiced"]["amount"], totals[0]["paid"]["amount"], totals[0]["outstanding"]["amount"],
            totals[0]["overdue"]["amount"]) == ("1952.00", "610.00", "1342.00", "1342.00")
    per_client = call("crm_invoices_totals", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31",
                                              "by_client": True})["totals"]
    assert [(r["client_name"], r["invoiced"]["amount"]) for r in per_client] == [
        ("Studio Dentistico Bianchi", "1220.00"), ("Rossi Srl", "610.00"), ("Verdi", "122.00")]
    assert call("crm_invoices_totals", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31",
                                        "client_vat": "IT22222222222"})["totals"][0]["paid"]["amount"] == "610.00"


def test_429_retry_after_backoff_failures_401_and_the_queue_tools(fic, stub, runtime, db):
    org, call, worker = fic
    stub.add(document(1, day=DAY))
    queued = call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
    assert queued["state"] == "queued" and "already_queued" not in queued
    assert call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})["already_queued"]
    stub.fail_next(429, retry_after="120")
    assert worker.run_pending() == 1
    waiting = db.execute("SELECT state, attempts, last_error, next_attempt_at - updated_at AS wait FROM invoice_sync_queue"
                         " WHERE id = %s", (queued["id"],)).fetchone()
    assert waiting["state"] == "queued" and waiting["attempts"] == 0 and "429" in waiting["last_error"]
    assert dt.timedelta(seconds=119) <= waiting["wait"] <= dt.timedelta(seconds=121)  # as Retry-After asked
    assert worker.run_pending() == 0  # not due yet
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=121)
    stub.fail_next(503)
    assert worker.run_pending(now=later, limit=1) == 1
    backoff = db.execute("SELECT state, attempts, last_error, next_attempt_at - updated_at AS wait FROM invoice_sync_queue"
                         " WHERE id = %s", (queued["id"],)).fetchone()
    assert (backoff["state"], backoff["attempts"]) == ("queued", 1) and "(503)" in backoff["last_error"]
    assert dt.timedelta(seconds=1.5) <= backoff["wait"] <= dt.timedelta(seconds=2.5)
    stub.fail_next(503, times=2)
    assert worker.run_pending(now=later + dt.timedelta(seconds=60)) == 2  # attempts 2 and 3, each after its back-off
    failed = item(call, queued["id"])
    assert failed["state"] == "failed" and failed["attempts"] == 3 and "gave up after 3 attempts" in failed["last_error"]
    retried = call("crm_invoices_retry_queue_item", {"queue_item_id": queued["id"]})
    assert (retried["state"], retried["attempts"]) == ("queued", 0)
    assert call.error("crm_invoices_retry_queue_item", {"queue_item_id": queued["id"]}).field == "queue_item_id"
    call("crm_settings_update_organization", {"fattureincloud": {"company_id": stub.company_id, "access_token": "stale-token-x"}})
    worker.run_pending()
    unauthorized = item(call, queued["id"])
    assert unauthorized["state"] == "failed" and "401" in unauthorized["last_error"]
    assert "stale-token-x" not in unauthorized["last_error"]
    call("crm_settings_update_organization", {"fattureincloud": {"company_id": stub.company_id, "access_token": stub.token}})
    call("crm_invoices_retry_queue_item", {"queue_item_id": queued["id"]})
    worker.run_pending()
    assert item(call, queued["id"])["state"] == "done"
    runtime.settle()
    assert len(call("crm_invoices_list")["items"]) == 1
    pending = call("crm_invoices_sync", {"document_id": 1})
    cancelled = call("crm_invoices_cancel_queue_item", {"queue_item_id": pending["id"]})
    assert cancelled["state"] == "cancelled" and worker.run_pending() == 0
    assert call.error("crm_invoices_cancel_queue_item", {"queue_item_id": pending["id"]}).code == "rule_violation"
    assert {i["state"] for i in call("crm_invoices_list_queue", {"state": "cancelled"})["items"]} == {"cancelled"}


def test_single_document_sync_and_a_document_gone_upstream(fic, stub, runtime):
    org, call, worker = fic
    stub.add(document(41, day=DAY, net="10"))
    call("crm_invoices_sync", {"document_id": 41})
    worker.run_pending()
    runtime.settle()
    (listed,) = call("crm_invoices_list")["items"]
    assert listed["fattureincloud_id"] == 41 and stub.requests[-1]["path"] == "/c/12345/issued_documents/41"
    stub.remove(41)
    queued = call("crm_invoices_sync", {"document_id": 41})
    worker.run_pending()
    runtime.settle()
    assert item(call, queued["id"])["progress"]["removed"] == 1
    assert call("crm_invoices_get", {"invoice_id": listed["id"]})["status"] == "cancelled"
    missing = call("crm_invoices_sync", {"document_id": 999})
    worker.run_pending()
    assert "404" in item(call, missing["id"])["last_error"]
    err = call.error("crm_invoices_sync", {"document_id": 5, "date_from": f"{YEAR}-01-01"})
    assert err.field == "document_id"


def test_not_connected_is_a_clear_error(runtime, make_org, database_url):
    call = Caller(runtime, make_org("Unconnected").principal(database_url))
    err = call.error("crm_invoices_sync", {})
    assert err.code == "rule_violation" and "crm_settings_update_organization" in err.message


def test_progress_is_visible_while_a_sync_runs_and_a_running_item_can_be_cancelled(fic, stub, runtime):
    org, call, worker = fic
    stub.add(*[document(i, day=DAY) for i in range(1, 301)])
    release = stub.hold_page(2)
    queued = call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
    runner = threading.Thread(target=worker.run_pending)
    runner.start()
    try:
        assert stub.reached[2].wait(30)
        running = item(call, queued["id"])
        assert running["state"] == "running"
        assert running["progress"]["pages_done"] == 1 and running["progress"]["documents_done"] == 100
        assert running["progress"]["pages_total"] == 3 and running["progress"]["documents_total"] == 300
        assert call("crm_invoices_cancel_queue_item", {"queue_item_id": queued["id"]})["cancel_requested"] is True
    finally:
        release.set()
        runner.join(30)
    stopped = item(call, queued["id"])
    assert stopped["state"] == "cancelled" and stopped["progress"]["pages_done"] == 2  # stopped after the page it was on
    runtime.settle()
    assert len(call("crm_invoices_list", {"limit": 100})["items"]) == 100


WORKER = """
import sys
from interfaces.runtime import Runtime
rt = Runtime(sys.argv[1], pool_size=2, consistency="settle")
rt.invoice_sync.run_pending()
"""


def test_a_sync_killed_in_the_middle_resumes_after_a_restart_without_duplicates(fic, stub, runtime, db, database_url):
    org, call, worker = fic
    stub.add(*[document(i, day=DAY + dt.timedelta(days=i % 200), net=str(100 + i)) for i in range(1, 351)])
    release = stub.hold_page(3)
    queued = call("crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
    env = {**os.environ, "FLUSIA_FATTUREINCLOUD_URL": stub.url, "FLUSIA_INVOICE_SYNC_PAGE_SIZE": "100"}
    child = subprocess.Popen([sys.executable, "-c", WORKER, database_url], cwd=ROOT, env=env)
    try:
        assert stub.reached[3].wait(60), "the worker never asked for page 3"
        child.send_signal(signal.SIGKILL)  # dies holding the item, pages 1 and 2 imported
        child.wait(30)
    finally:
        release.set()
    mid = db.execute("SELECT state, next_page FROM invoice_sync_queue WHERE id = %s", (queued["id"],)).fetchone()
    assert (mid["state"], mid["next_page"]) == ("running", 3)
    assert events(db, org.organization_id) == 200
    deadline = time.monotonic() + 30  # the killed worker's session (and its advisory lock) ends with its connection
    while db.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = 72000013"
                     ).fetchone()["n"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stub.requests.clear()
    assert worker.run_pending() == 1  # the restarted worker takes the orphaned item over
    assert [r["query"]["page"] for r in stub.requests] == ["3", "4"]
    runtime.settle()
    done = item(call, queued["id"])
    assert done["state"] == "done" and done["progress"]["created"] == 350 and done["progress"]["documents_done"] == 350
    assert events(db, org.organization_id, "%Invoice.Imported") == 350
    assert db.execute("SELECT count(*) AS n FROM invoices WHERE organization_id = %s",
                      (org.organization_id,)).fetchone()["n"] == 350
    assert sync(call, worker, runtime)["progress"]["unchanged"] == 350
    assert events(db, org.organization_id) == 350


def test_allocation_suggestions_and_deal_amounts(fic, stub, runtime):
    org, call, worker = fic
    stub.add(document(1, day=DAY, client="Rossi Srl", vat="IT01234567890", net="1000", instalments=2),
             document(2, day=DAY, client="Verdi", vat="IT55555555555", net="50"))
    stub.documents[1]["payments_list"][0].update(status="paid", paid_date=DAY.isoformat())
    sync(call, worker, runtime)
    rossi = call("crm_clients_create", {"business_name": "Rossi Srl", "vat_number": "01234567890"})
    other = call("crm_clients_create", {"business_name": "Bianchi"})
    right = call("crm_deals_create", {"title": "Sito web", "client_id": rossi["id"], "value": "1220"})
    call("crm_deals_set_status", {"deal_id": right["id"], "status": "accepted", "close_date": DAY.isoformat()})
    near = call("crm_deals_create", {"title": "Manutenzione", "client_id": other["id"], "value": "1100"})
    far = call("crm_deals_create", {"title": "Altro", "client_id": other["id"], "value": "99000"})
    invoice = next(i for i in call("crm_invoices_list")["items"] if i["fattureincloud_id"] == 1)
    assert [i["id"] for i in call("crm_invoices_list_unallocated")["items"]].count(invoice["id"]) == 1
    suggested = call("crm_invoices_suggest_allocation", {"invoice_id": invoice["id"]})
    first = suggested["candidates"][0]
    assert first["deal_id"] == right["id"] and first["score"] == 100
    assert "the deal's client has the invoice's VAT number (IT01234567890)" in first["reasons"]
    assert near["id"] in [c.get("deal_id") for c in suggested["candidates"]]
    assert far["id"] not in [c.get("deal_id") for c in suggested["candidates"]]
    assert any(c["kind"] == "client" and c["client_id"] == rossi["id"] for c in suggested["candidates"])

    out = call("crm_invoices_allocate", {"invoice_id": invoice["id"], "deal_id": right["id"], "amount": "1000"})
    assert out["allocated"]["amount"] == "1000.00" and out["remaining"]["amount"] == "220.00"
    assert out["allocations"][0]["deal_title"] == "Sito web" and out["allocations"][0]["client_id"] == rossi["id"]
    err = call.error("crm_invoices_allocate", {"invoice_id": invoice["id"], "client_id": rossi["id"], "amount": "220.01"})
    assert err.code == "over_allocation" and err.field == "amount" and "€220.00 of €1,220.00" in err.message
    rest = call("crm_invoices_allocate", {"invoice_id": invoice["id"], "client_id": rossi["id"]})
    assert rest["remaining"]["cents"] == 0 and rest["allocated"]["cents"] == 122000
    assert call.error("crm_invoices_allocate", {"invoice_id": invoice["id"], "deal_id": right["id"]}).code == "over_allocation"
    assert invoice["id"] not in [i["id"] for i in call("crm_invoices_list_unallocated")["items"]]
    assert [i["id"] for i in call("crm_invoices_list", {"deal_id": right["id"]})["items"]] == [invoice["id"]]
    err = call.error("crm_invoices_allocate", {"invoice_id": invoice["id"], "deal_id": right["id"], "client_id": other["id"]})
    assert err.field == "client_id"
    removed = call("crm_invoices_unallocate", {"allocation_id": out["allocations"][0]["id"]})
    assert removed["remaining"]["amount"] == "1000.00"
    reader = Caller(runtime, call.principal.__class__(organization_id=org.organization_id, user_id=org.user_id,
                                                      grants={"invoices": "r"}))
    shown = reader("crm_invoices_get", {"invoice_id": invoice["id"]})
    assert "client_name" not in shown["allocations"][0]
    assert shown["omitted"] == ["client names of allocations (needs clients:read)"]


def test_a_deal_shows_what_was_invoiced_to_it_and_how_much_is_paid(fic, stub, runtime):
    org, call, worker = fic
    stub.add(document(1, day=DAY, net="1000", instalments=2), document(2, day=DAY, net="500", paid=True))
    stub.documents[1]["payments_list"][0].update(status="paid", paid_date=DAY.isoformat())
    sync(call, worker, runtime)
    client = call("crm_clients_create", {"business_name": "Rossi Srl"})
    deal = call("crm_deals_create", {"title": "Sito web", "client_id": client["id"], "value": "2000"})
    assert (call("crm_deals_get", {"deal_id": deal["id"]})["invoiced"]["cents"],
            call("crm_deals_get", {"deal_id": deal["id"]})["paid"]["cents"]) == (0, 0)
    by_number = {i["fattureincloud_id"]: i for i in call("crm_invoices_list")["items"]}
    half_paid = call("crm_invoices_allocate", {"invoice_id": by_number[1]["id"], "deal_id": deal["id"], "amount": "1000"})
    call("crm_invoices_allocate", {"invoice_id": by_number[2]["id"], "deal_id": deal["id"], "amount": "100"})
    shown = call("crm_deals_get", {"deal_id": deal["id"]})
    assert shown["invoiced"]["amount"] == "1100.00" and shown["paid"]["amount"] == "600.00"  # 1000 x 1/2 + 100 x 1
    call("crm_invoices_unallocate", {"allocation_id": half_paid["allocations"][0]["id"]})
    shown = call("crm_deals_get", {"deal_id": deal["id"]})
    assert (shown["invoiced"]["amount"], shown["paid"]["amount"]) == ("100.00", "100.00")


def test_overdue_counts_only_the_instalments_already_due(fic, stub, runtime):
    org, call, worker = fic
    today = dt.date.today()
    stub.add(document(1, day=today - dt.timedelta(days=45), net="1000", instalments=2),  # due -15 and +15 days
             document(2, day=today - dt.timedelta(days=90), net="100", instalments=2),  # both past
             document(3, day=today - dt.timedelta(days=10), net="100"))  # due in 20 days
    call("crm_invoices_sync", {"date_from": (today - dt.timedelta(days=100)).isoformat(), "date_to": today.isoformat()})
    worker.run_pending()
    runtime.settle()
    totals = call("crm_invoices_totals", {"date_from": (today - dt.timedelta(days=100)).isoformat()})["totals"][0]
    assert (totals["outstanding"]["amount"], totals["overdue"]["amount"]) == ("1464.00", "732.00")  # 610 + 122
    assert {i["fattureincloud_id"] for i in call("crm_invoices_list", {"overdue": True})["items"]} == {1, 2}
