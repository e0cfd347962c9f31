"""Searches with the words a person used: when nothing has every word, results with some of them, rare words first."""

from __future__ import annotations

import pytest

from tests.mcp_helpers import call, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_any_word_fallback_for_clients_deals_and_wiki(server, make_org):
    org = make_org()
    async with mcp_client(server.mcp_url, org.token) as client:
        acme = await call(client, "crm_clients_create_lead", {"business_name": "ACME Logistics SpA"})
        others = [await call(client, "crm_clients_create_lead", {"business_name": f"{name} Srl"})
                  for name in ("Rossi", "Bianchi", "Verdi", "Neri", "Gallo", "Conti")]
        await call(client, "crm_deals_create", {"title": "Magazzino nuovo", "client_id": acme["id"]})
        for other in others:
            await call(client, "crm_deals_create", {"title": "Sito web", "client_id": other["id"]})
        returns = await call(client, "crm_wiki_create_page", {
            "title": "Resi", "body": "Come gestire i resi dei clienti: il reso va registrato entro 14 giorni."})
        await call(client, "crm_wiki_create_page", {"title": "Ferie", "body": "Le ferie si chiedono al responsabile."})

        # Every word matches: the answer says nothing more.
        exact = await call(client, "crm_clients_search", {"q": "acme logistics"})
        assert exact["items"][0]["id"] == acme["id"] and "match" not in exact

        # "ACME Srl": no client has both words; the rare word decides the order over six "Srl".
        found = await call(client, "crm_clients_search", {"q": "ACME Srl"})
        assert found["match"] == "any"
        assert found["items"][0]["id"] == acme["id"]
        assert {i["id"] for i in found["items"]} >= {o["id"] for o in others}
        assert found["items"][0]["score"] > found["items"][1]["score"]

        deals = await call(client, "crm_deals_search", {"q": "ACME Srl"})
        assert deals["match"] == "any" and deals["items"][0]["client_id"] == acme["id"]
        assert deals["items"][0]["score"] > deals["items"][-1]["score"]

        pages = await call(client, "crm_wiki_search", {"q": "gestione reso"})
        assert pages["match"] == "any" and pages["language"] == "italian"
        assert [p["id"] for p in pages["items"]] == [returns["id"]]
        assert "**" in pages["items"][0]["snippet"]

        # A query that spells out its logic is obeyed as written.
        quoted = await call(client, "crm_wiki_search", {"q": '"gestione reso"'})
        assert quoted["items"] == [] and "match" not in quoted

        # Nothing at all: an empty answer, still 'all'.
        none = await call(client, "crm_clients_search", {"q": "Zanzibar Qwerty"})
        assert none["items"] == [] and "match" not in none
