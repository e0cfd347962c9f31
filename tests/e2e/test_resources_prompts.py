"""Through the real server and the `mcp` SDK client (which validates structured results against output schemas):
seed Example 3 with preview and confirmation, entity resources (read with the tools' permission and tenancy checks,
listed page by page), and the product's prompts."""

from __future__ import annotations

import json
import re

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from application import identity
from application.inventory import registry
from application.permissions import RESOURCES
from interfaces.mcp_prompts import PROMPTS
from tests.mcp_helpers import all_tools, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_example_3_preview_the_duplicates_deletion_then_confirm(server, make_org):
    """'Delete all duplicate leads of Mario Rossi with the same VAT number': preview, the user confirms, done."""
    org = make_org("Example3Confirm")
    async with mcp_client(server.mcp_url, org.token) as client:
        ids = [(await call(client, "crm_clients_create_lead", {"business_name": "Mario Rossi", "vat_number": vat}))["id"]
               for vat in ("IT 01234567890", "01234567890", "01234567890")]
        other = await call(client, "crm_clients_create_lead", {"business_name": "Mario Rossi Impianti",
                                                               "vat_number": "99999999999"})
        tools = {t.name: t for t in await all_tools(client)}
        delete = tools["crm_clients_delete"]
        assert delete.annotations.destructive_hint is True
        assert {"preview", "confirmation"} <= set(delete.input_schema["properties"])

        found = await call(client, "crm_clients_search", {"q": "Mario Rossi"})
        by_vat: dict[str, list[dict]] = {}
        for c in found["items"]:
            by_vat.setdefault("".join(ch for ch in c["vat_number"] if ch.isdigit()), []).append(c)
        duplicates = sorted(by_vat["01234567890"], key=lambda c: c["created_at"])[1:]
        assert {d["id"] for d in duplicates} == set(ids[1:])

        previews = [await call(client, "crm_clients_delete", {"client_id": d["id"], "preview": True}) for d in duplicates]
        for preview, dup in zip(previews, duplicates):
            assert preview["preview"]["entities"][0]["id"] == dup["id"]
            assert preview["preview"]["counts"]["deleted"] == 1 and preview["confirmation"]
        still = await call(client, "crm_clients_search", {"q": "Mario Rossi"})
        assert set(ids) | {other["id"]} <= {c["id"] for c in still["items"]}  # nothing deleted by the previews

        for preview, dup in zip(previews, duplicates):  # the user said yes
            removed = await call(client, "crm_clients_delete", {"client_id": dup["id"],
                                                                "confirmation": preview["confirmation"]})
            assert removed == {"id": dup["id"], "entity": "client", "removed": True}
        after = await call(client, "crm_clients_search", {"q": "Mario Rossi"})
        assert {c["id"] for c in after["items"]} == {ids[0], other["id"]}

        # a confirmation is refused when the lead changed between the preview and the confirmation
        preview = await call(client, "crm_clients_delete", {"client_id": other["id"], "preview": True})
        await call(client, "crm_clients_update", {"client_id": other["id"], "website": "https://rossi.example"})
        error = await call_error(client, "crm_clients_delete", {"client_id": other["id"],
                                                                "confirmation": preview["confirmation"]})
        assert error["code"] == "confirmation_stale" and error["field"] == "confirmation"
        assert (await call(client, "crm_clients_get", {"client_id": other["id"]}))["website"] == "https://rossi.example"


async def test_entity_resources_are_read_with_the_tools_checks(server, make_org, runtime, database_url, db):
    org = make_org("Resources")
    stranger = make_org("Stranger")
    principal = org.principal(database_url)
    lead = await runtime.runner.call(principal, "crm_clients_create_lead", {"business_name": "Risorsa Srl"})
    deal = await runtime.runner.call(principal, "crm_deals_create", {"title": "Risorsa deal", "client_id": lead["id"]})
    task = await runtime.runner.call(principal, "crm_tasks_create", {"title": "Risorsa task", "client_id": lead["id"]})
    page = await runtime.runner.call(principal, "crm_wiki_create_page", {"title": "Risorsa pagina", "body": "testo"})
    async with mcp_client(server.mcp_url, org.token) as client:
        templates = {t.uri_template: t for t in (await client.list_resource_templates()).resource_templates}
        for uri in ("flusia://clients/{id}", "flusia://deals/{id}", "flusia://tasks/{id}", "flusia://wiki/{id}"):
            assert uri in templates and templates[uri].mime_type == "application/json"
        for uri, tool, args in ((f"flusia://clients/{lead['id']}", "crm_clients_get", {"client_id": lead["id"]}),
                                (f"flusia://deals/{deal['id']}", "crm_deals_get", {"deal_id": deal["id"]}),
                                (f"flusia://tasks/{task['id']}", "crm_tasks_get", {"task_id": task["id"]}),
                                (f"flusia://wiki/{page['id']}", "crm_wiki_get_page", {"page_id": page["id"]})):
            read = await client.read_resource(uri)
            assert read.contents[0].uri == uri and read.contents[0].mime_type == "application/json"
            assert json.loads(read.contents[0].text) == await call(client, tool, args)
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("flusia://nothing/1")
        assert "flusia://clients/{id}" in str(unknown.value)

    async with mcp_client(server.mcp_url, stranger.token) as client:  # another tenant: not found, nothing shown
        with pytest.raises(MCPError) as other_tenant:
            await client.read_resource(f"flusia://clients/{lead['id']}")
        assert "not found" in str(other_tenant.value) and "Risorsa" not in str(other_tenant.value)

    tasks_only, _ = identity.create_token(db, org.organization_id, org.user_id, {"tasks": "r"})
    async with mcp_client(server.mcp_url, tasks_only) as client:  # no clients:read
        with pytest.raises(MCPError) as denied:
            await client.read_resource(f"flusia://clients/{lead['id']}")
        assert "clients:read" in str(denied.value) and "Risorsa" not in str(denied.value)
        assert "flusia://clients/{id}" not in {t.uri_template for t in
                                               (await client.list_resource_templates()).resource_templates}
        listed = (await client.list_resources()).resources
        assert {r.uri for r in listed} == {f"flusia://tasks/{task['id']}"}
    async with mcp_client(server.mcp_url, org.token, query="toolsets=tasks") as client:  # the connection's selection
        with pytest.raises(MCPError) as outside:
            await client.read_resource(f"flusia://clients/{lead['id']}")
        assert "selection" in str(outside.value)


async def test_resources_list_pages_through_every_readable_entity(server, make_org, runtime, database_url):
    org = make_org("ResourcePages")
    principal = org.principal(database_url)
    made = {(await runtime.runner.call(principal, "crm_clients_create_lead", {"business_name": f"Cliente {i:02d}"}))["id"]
            for i in range(57)}
    made.add((await runtime.runner.call(principal, "crm_tasks_create", {"title": "Un compito"}))["id"])
    async with mcp_client(server.mcp_url, org.token) as client:
        seen: list[str] = []
        pages, cursor = 0, None
        while True:
            result = await client.list_resources(cursor=cursor) if cursor else await client.list_resources()
            pages += 1
            assert len(result.resources) <= 50
            seen += [r.uri for r in result.resources]
            cursor = result.next_cursor
            if not cursor:
                break
        assert pages >= 2 and len(seen) == len(set(seen))
        ids = {re.sub(r"^flusia://[a-z_]+/", "", uri) for uri in seen}
        assert made <= ids
        first = next(r for r in (await client.list_resources()).resources if r.uri.startswith("flusia://clients/"))
        assert first.name.startswith("Cliente ") and first.mime_type == "application/json"
        with pytest.raises(MCPError):
            await client.list_resources(cursor="not-a-cursor")


async def test_prompts_are_listed_and_fetched(server, make_org, db):
    org = make_org("Prompts")
    async with mcp_client(server.mcp_url, org.token) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        assert set(listed) == {"new_lead_from_chat", "monthly_won_deals_report", "duplicate_cleanup",
                               "customer_onboarding", "investigate_deleted_deal"}
        for spec in PROMPTS:
            prompt = listed[spec.name]
            assert prompt.description and prompt.title
            required = {a.name for a in prompt.arguments or [] if a.required}
            args = {a.name: "Mario Rossi" for a in prompt.arguments or []}
            got = await client.get_prompt(spec.name, args)
            text = got.messages[0].content.text
            assert got.messages[0].role == "user"
            named = set(re.findall(r"crm_[a-z_]+", text))
            assert named and all(registry.get(t) is not None for t in named), (spec.name, named - set(
                op.name for op in registry))
            assert set(spec.tools) <= named, (spec.name, set(spec.tools) - named)
            for name in required:
                with pytest.raises(MCPError) as missing:
                    await client.get_prompt(spec.name, {k: v for k, v in args.items() if k != name})
                assert name in str(missing.value)
        cleanup = (await client.get_prompt("duplicate_cleanup", {"name": "Mario Rossi"})).messages[0].content.text
        assert "preview=true" in cleanup and "confirmation" in cleanup and "crm_clients_merge" in cleanup
        with pytest.raises(MCPError):
            await client.get_prompt("no_such_prompt", {})

    viewer, _ = identity.create_token(db, org.organization_id, org.user_id, dict.fromkeys(RESOURCES, "r"))
    async with mcp_client(server.mcp_url, viewer) as client:  # read only: the prompts that only read
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert names == {"monthly_won_deals_report", "investigate_deleted_deal"}
        with pytest.raises(MCPError) as denied:
            await client.get_prompt("duplicate_cleanup", {})
        assert "clients:delete" in str(denied.value)


async def test_prompt_arguments_and_resource_ids_are_completed_from_what_the_token_may_read(server, make_org, db):
    """completion/complete: a client fills a prompt's `client` argument or a resource template's {id} as a person
    types, from the caller's own data; a token without deals:read gets no deal suggestions."""
    org = make_org("Completion")
    async with mcp_client(server.mcp_url, org.token) as client:
        acme = await call(client, "crm_clients_create_lead", {"business_name": "ACME Logistica Srl"})
        await call(client, "crm_clients_create_lead", {"business_name": "Bianchi Impianti"})
        deal = await call(client, "crm_deals_create", {"title": "Magazzino automatico", "client_id": acme["id"],
                                                       "value": "1000"})
        onboarding = types.PromptReference(type="ref/prompt", name="customer_onboarding")
        named = await client.complete(onboarding, {"name": "client", "value": "acme"})
        assert named.completion.values == ["ACME Logistica Srl"]
        assert set((await client.complete(onboarding, {"name": "client", "value": ""})).completion.values) >= {
            "ACME Logistica Srl", "Bianchi Impianti"}
        assert (await client.complete(onboarding, {"name": "deal", "value": "magaz"})).completion.values == [
            "Magazzino automatico"]
        report = types.PromptReference(type="ref/prompt", name="monthly_won_deals_report")
        months = (await client.complete(report, {"name": "month", "value": ""})).completion.values
        assert len(months) == 20 and all(re.fullmatch(r"\d{4}-\d{2}", m) for m in months)
        cleanup = types.PromptReference(type="ref/prompt", name="duplicate_cleanup")
        assert (await client.complete(cleanup, {"name": "match", "value": "e"})).completion.values == ["email"]
        clients = types.ResourceTemplateReference(type="ref/resource", uri="flusia://clients/{id}")
        assert (await client.complete(clients, {"name": "id", "value": "ACME"})).completion.values == [acme["id"]]
        deals = types.ResourceTemplateReference(type="ref/resource", uri="flusia://deals/{id}")
        assert (await client.complete(deals, {"name": "id", "value": deal["id"][:4]})).completion.values == [deal["id"]]
        with pytest.raises(MCPError):
            await client.complete(types.ResourceTemplateReference(type="ref/resource", uri="flusia://nope/{id}"),
                                  {"name": "id", "value": ""})

    reader, _ = identity.create_token(db, org.organization_id, org.user_id, {"clients": "r"})
    async with mcp_client(server.mcp_url, reader) as client:
        assert (await client.complete(deals, {"name": "id", "value": ""})).completion.values == []
        assert (await client.complete(clients, {"name": "id", "value": "Bianchi"})).completion.values != []
    other = make_org("CompletionOther")
    async with mcp_client(server.mcp_url, other.token) as client:
        assert (await client.complete(onboarding, {"name": "client", "value": "acme"})).completion.values == []
