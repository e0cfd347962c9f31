"""Client reads on PostgreSQL: fuzzy search ranking, list filters and cursor pagination, merge moving links."""

from __future__ import annotations

import asyncio

import pytest

from application.errors import ToolError


@pytest.fixture
def org_call(runtime, make_org):
    org = make_org()
    principal = org.principal(runtime.database_url)

    def call(tool: str, args: dict | None = None) -> dict:
        return asyncio.run(runtime.runner.call(principal, tool, args or {}))

    call.org = org
    return call


def test_search_tolerates_case_accents_typos_and_finds_every_field(org_call):
    bianchi = org_call("crm_clients_create_lead", {"business_name": "Studio Dentistico Bianchi", "vat_number": "IT12345678901",
                                                   "email": "info@bianchi.it", "phone": "+39 02 1234 5678"})
    citta = org_call("crm_clients_create_lead", {"business_name": "Pasticceria della Città", "contact_name": "Niccolò Ferrè"})
    contact_holder = org_call("crm_clients_create", {"business_name": "Officine Riunite"})
    org_call("crm_clients_add_contact", {"client_id": contact_holder["id"], "name": "Giulia Esposito"})
    org_call("crm_clients_create_lead", {"business_name": "Studio Legale Verdi"})

    def first(q: str) -> str:
        items = org_call("crm_clients_search", {"q": q})["items"]
        assert items, f"nothing found for {q!r}"
        return items[0]["id"]

    assert first("studio dentistico bianchi") == bianchi["id"]
    assert first("STUDIO DENTISTICO") == bianchi["id"]
    assert first("Bianchy") == bianchi["id"]                      # typo
    assert first("pasticceria della citta") == citta["id"]         # accents
    assert first("Niccolo Ferre") == citta["id"]                  # contact person, accents
    assert first("giulia esposito") == contact_holder["id"]        # contact person of a client
    assert first("12345678901") == bianchi["id"]                   # VAT without prefix
    assert first("info@bianchi.it") == bianchi["id"]               # e-mail
    assert first("0039 02 1234 5678") == bianchi["id"]             # phone, other notation
    scores = [i["score"] for i in org_call("crm_clients_search", {"q": "studio"})["items"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 2
    assert org_call("crm_clients_search", {"q": "zzzzqqqq"})["items"] == []


def test_list_filters_and_cursor_pagination(org_call):
    created = [org_call("crm_clients_create_lead", {"business_name": f"Cliente {i:02d}", "source": "fair" if i % 2 else "web",
                                                     "tags": ["vip"] if i % 3 == 0 else []})["id"] for i in range(23)]
    org_call("crm_clients_update_status", {"client_id": created[0], "status": "qualified"})
    seen, cursor = [], None
    while True:
        page = org_call("crm_clients_list", {"limit": 5, **({"cursor": cursor} if cursor else {})})
        seen += [c["id"] for c in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == list(reversed(created))                              # newest first, no gaps or repeats
    by_name = org_call("crm_clients_list", {"sort": "name_asc", "limit": 3})
    assert [c["business_name"] for c in by_name["items"]] == ["Cliente 00", "Cliente 01", "Cliente 02"]
    assert len(org_call("crm_clients_list", {"source": "fair", "limit": 100})["items"]) == 11
    assert len(org_call("crm_clients_list", {"tag": "vip", "limit": 100})["items"]) == 8
    assert [c["id"] for c in org_call("crm_clients_list", {"status": "qualified"})["items"]] == [created[0]]
    default_page = org_call("crm_clients_list")                          # default limit 25 > 23 clients
    assert len(default_page["items"]) == 23 and default_page.get("next_cursor") is None
    with pytest.raises(ToolError) as err:
        org_call("crm_clients_list", {"limit": 101})
    assert err.value.field == "limit"


def test_merge_moves_notes_tasks_and_recordings_to_the_survivor(org_call):
    survivor = org_call("crm_clients_create_lead", {"business_name": "Rossi Srl", "vat_number": "IT01234567890"})
    dup = org_call("crm_clients_create_lead", {"business_name": "Rossi S.r.l.", "vat_number": "01234567890", "email": "a@rossi.it"})
    org_call("crm_clients_add_note", {"client_id": dup["id"], "body": "nota del duplicato"})
    org_call("crm_tasks_create", {"title": "richiamare", "client_id": dup["id"]})
    org_call("crm_clients_add_recording", {"client_id": dup["id"], "media_url": "https://x/y.mp3", "duration_seconds": 60,
                                           "transcript": "pronto"})
    groups = org_call("crm_clients_find_duplicates", {"by": "vat"})["groups"]
    assert [sorted(c["id"] for c in g["clients"]) for g in groups] == [sorted([survivor["id"], dup["id"]])]
    merged = org_call("crm_clients_merge", {"survivor_id": survivor["id"], "duplicate_ids": [dup["id"]]})
    merged = org_call("crm_clients_get", {"client_id": merged["id"]})
    assert merged["email"] == "a@rossi.it" and merged["notes_count"] == 1 and merged["tasks_count"] == 1
    assert merged["recordings_count"] == 1
    with pytest.raises(ToolError) as err:
        org_call("crm_clients_get", {"client_id": dup["id"]})
    assert err.value.code == "not_found"
    assert org_call("crm_clients_find_duplicates", {"by": "vat"})["groups"] == []
