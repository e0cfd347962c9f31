"""Wiki full-text search (language, ranking, snippets, old revisions) and task due filters in the org's timezone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tests.inprocess import call


def test_wiki_search_italian_stemming_ranking_and_snippets(runtime, make_org, database_url):
    org = make_org("WikiIT")  # organizations default to it-IT
    p = org.principal(database_url)
    strong = call(runtime, p, "crm_wiki_create_page", {
        "title": "Fatturazione elettronica",
        "body": "Come emettere le fatture elettroniche. Ogni fattura passa dallo SDI; le fatture scartate si correggono.",
    })
    weak = call(runtime, p, "crm_wiki_create_page", {
        "title": "Clienti", "body": "Anagrafica dei clienti. Per i dettagli vedi la pagina sulla fattura.",
    })
    call(runtime, p, "crm_wiki_create_page", {"title": "Ferie", "body": "Come chiedere le ferie."})
    found = call(runtime, p, "crm_wiki_search", {"q": "fatture"})
    assert found["language"] == "italian"
    assert [h["id"] for h in found["items"]] == [strong["id"], weak["id"]]
    assert found["items"][0]["score"] > found["items"][1]["score"]
    assert "**" in found["items"][0]["snippet"] and "**" in found["items"][0]["title_highlight"]


def test_wiki_search_english_and_old_revisions(runtime, make_org, database_url, db):
    org = make_org("WikiEN")
    db.execute("UPDATE organizations SET locale = 'en-US' WHERE id = %s", (org.organization_id,))
    p = org.principal(database_url)
    page = call(runtime, p, "crm_wiki_create_page", {"title": "Billing", "body": "How we send invoices to a zebra."})
    found = call(runtime, p, "crm_wiki_search", {"q": "invoice"})
    assert found["language"] == "english" and [h["id"] for h in found["items"]] == [page["id"]]
    call(runtime, p, "crm_wiki_update_page", {"page_id": page["id"], "body": "How we send invoices to a giraffe."})
    assert call(runtime, p, "crm_wiki_search", {"q": "zebra"})["items"] == []
    assert [h["id"] for h in call(runtime, p, "crm_wiki_search", {"q": "giraffe"})["items"]] == [page["id"]]
    call(runtime, p, "crm_wiki_restore_revision", {"page_id": page["id"], "revision": 1})
    assert [h["id"] for h in call(runtime, p, "crm_wiki_search", {"q": "zebra"})["items"]] == [page["id"]]
    call(runtime, p, "crm_wiki_delete_page", {"page_id": page["id"]})
    assert call(runtime, p, "crm_wiki_search", {"q": "invoice"})["items"] == []


def _due_filters(runtime, make_org, database_url, db, tz: str) -> None:
    org = make_org("TZ")
    db.execute("UPDATE organizations SET timezone = %s WHERE id = %s", (tz, org.organization_id))
    p = org.principal(database_url)
    today = dt.datetime.now(ZoneInfo(tz)).date()
    ids = {}
    for label, delta in (("yesterday", -1), ("today", 0), ("tomorrow", 1)):
        ids[label] = call(runtime, p, "crm_tasks_create", {"title": label, "due_date": (today + dt.timedelta(days=delta)).isoformat(),
                                                           "assignee_id": str(org.user_id)})["id"]
    done = call(runtime, p, "crm_tasks_create", {"title": "old done", "due_date": (today - dt.timedelta(days=5)).isoformat()})
    call(runtime, p, "crm_tasks_complete", {"task_id": done["id"]})
    overdue = call(runtime, p, "crm_tasks_list", {"due": "overdue"})["items"]
    assert [t["id"] for t in overdue] == [ids["yesterday"]]
    assert [t["id"] for t in call(runtime, p, "crm_tasks_list", {"due": "today"})["items"]] == [ids["today"]]
    mine = call(runtime, p, "crm_tasks_list", {"due": "overdue", "assignee_id": str(org.user_id)})["items"]
    assert [t["id"] for t in mine] == [ids["yesterday"]]
    soon = call(runtime, p, "crm_tasks_list", {"due": "due_soon"})["items"]
    assert [t["id"] for t in soon] == [ids["today"], ids["tomorrow"]]


def test_due_filters_east_of_utc(runtime, make_org, database_url, db):
    _due_filters(runtime, make_org, database_url, db, "Pacific/Kiritimati")  # UTC+14


def test_due_filters_west_of_utc(runtime, make_org, database_url, db):
    _due_filters(runtime, make_org, database_url, db, "Pacific/Pago_Pago")  # UTC-11
