"""Settings and invoices through the real server and the `mcp` SDK client: an admin connects FattureInCloud (a
local API the SDK talks to), invites a colleague (the link arrives by e-mail over a real SMTP server on loopback and
sets the password once), gives them a custom role whose change reaches their live token at the next call, syncs
invoices with the server's background worker, allocates one to a deal, and deactivates the colleague: their API and
OAuth tokens are refused at the next request."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
import uuid

import anyio
import httpx
import pytest
from aiosmtpd.controller import Controller

from application import identity
from tests.conftest import free_port, start_server
from tests.e2e.test_credential_admin import oauth_tokens, status_of
from tests.fic_stub import FattureInCloudStub, document
from tests.mcp_helpers import all_tools, call, call_error, mcp_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
YEAR = dt.date.today().year - 1


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="module")
def database_url(admin_url):
    """A database of this module's own: its server's invoice worker, pointed at the local FattureInCloud API, and
    the shared server's (pointed at the real one) must not take each other's queue items."""
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database

    name = f"flusia_e2e13_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name)
    migrate(url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture(scope="module")
def world(database_url):
    inbox = Inbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    with FattureInCloudStub(company_id=31337, token="fic-e2e-token") as stub:
        stub.add(*[document(i, day=dt.date(YEAR, 1, 1) + dt.timedelta(days=i), client="Rossi Srl" if i % 2 else "Verdi",
                            vat="IT01234567890" if i % 2 else "IT99999999999", net=str(100 * i)) for i in range(1, 121)])
        srv = start_server(database_url, {"FLUSIA_FATTUREINCLOUD_URL": stub.url,
                                          "FLUSIA_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
                                          "FLUSIA_SMTP_FROM": "Flusia <crm@example.com>"})
        try:
            yield srv, stub, inbox
        finally:
            srv.process.terminate()
            try:
                srv.process.wait(10)
            except subprocess.TimeoutExpired:
                srv.process.kill()
            controller.stop()


async def test_an_admin_runs_settings_and_invoices_from_the_assistant(world, make_org, db):
    server, stub, inbox = world
    org = make_org("E2E settings")
    async with mcp_client(server.mcp_url, org.token) as admin:
        names = {t.name for t in await all_tools(admin)}
        assert {"crm_settings_invite_user", "crm_invoices_sync", "crm_invoices_totals"} <= names
        tools = {t.name: t for t in await all_tools(admin)}
        assert tools["crm_invoices_sync"].annotations.open_world_hint is True
        assert tools["crm_settings_deactivate_user"].annotations.destructive_hint is True
        profile = await call(admin, "crm_settings_update_organization", {
            "fattureincloud": {"company_id": 31337, "access_token": "fic-e2e-token"}, "timezone": "Europe/Rome"})
        assert profile["fattureincloud"]["configured"] is True and "fic-e2e-token" not in str(profile)

        invited = await call(admin, "crm_settings_invite_user", {"email": "anna@example.com", "name": "Anna Neri",
                                                                 "role": "viewer"})
        assert invited["emailed"] is True and invited["invite_url"].startswith(server.base_url + "/invite/finv_")
        mail = next(m for m in inbox.messages if m.rcpt_tos == ["anna@example.com"]).content.decode()
        link = re.search(r"(http://\S+/invite/finv_\S+)", mail).group(1)
        assert link == invited["invite_url"]
        page = httpx.get(link)
        assert page.status_code == 200 and "Set password" in page.text and page.headers["cache-control"] == "no-store"
        assert httpx.post(link, data={"password": "long enough pw", "confirm": "different pw"}).status_code == 400
        assert httpx.post(link, data={"password": "short", "confirm": "short"}).status_code == 400
        done = httpx.post(link, data={"password": "long enough pw", "confirm": "long enough pw"})
        assert done.status_code == 200 and "anna@example.com" in done.text
        assert httpx.post(link, data={"password": "long enough pw", "confirm": "long enough pw"}).status_code == 410
        assert httpx.get(link).status_code == 410
        anna_id = invited["user"]["id"]

        role = await call(admin, "crm_settings_create_role", {"name": "Accounts", "permissions": {
            "invoices": ["read", "write"], "deals": ["read"], "clients": ["read"]}})
        user = await call(admin, "crm_settings_update_user", {"user_id": anna_id, "role": "Accounts"})
        assert (user["status"], user["role"]) == ("active", "Accounts")

        queued = await call(admin, "crm_invoices_sync", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"})
        deadline = time.monotonic() + 90  # the server's worker drains the queue in the background
        while True:
            item = next(i for i in (await call(admin, "crm_invoices_list_queue"))["items"] if i["id"] == queued["id"])
            if item["state"] in ("done", "failed") or time.monotonic() > deadline:
                break
            await anyio.sleep(0.2)
        assert item["state"] == "done" and item["progress"]["created"] == 120, item
        totals = (await call(admin, "crm_invoices_totals", {"date_from": f"{YEAR}-01-01", "date_to": f"{YEAR}-12-31"}))
        assert totals["totals"][0]["invoices"] == 120 and totals["totals"][0]["invoiced"]["amount"] == "885720.00"
        client = await call(admin, "crm_clients_create", {"business_name": "Rossi Srl", "vat_number": "IT01234567890"})
        deal = await call(admin, "crm_deals_create", {"title": "Rinnovo", "client_id": client["id"], "value": "122"})

    anna_token, _ = identity.create_token(db, org.organization_id, anna_id, None, name="anna's assistant")
    async with mcp_client(server.mcp_url, anna_token) as anna:
        names = {t.name for t in await all_tools(anna)}
        assert "crm_invoices_allocate" in names and "crm_settings_list_users" not in names
        invoice = (await call(anna, "crm_invoices_search", {"q": "1"}))["items"][0]
        suggested = await call(anna, "crm_invoices_suggest_allocation", {"invoice_id": invoice["id"]})
        assert suggested["candidates"][0]["deal_id"] == deal["id"]
        allocated = await call(anna, "crm_invoices_allocate", {"invoice_id": invoice["id"], "deal_id": deal["id"]})
        assert allocated["remaining"]["cents"] == 0
        over = await call_error(anna, "crm_invoices_allocate", {"invoice_id": invoice["id"], "client_id": client["id"],
                                                               "amount": "1"})
        assert over["code"] == "over_allocation" and "€0.00 of €122.00" in over["message"]

        async with mcp_client(server.mcp_url, org.token) as admin:
            await call(admin, "crm_settings_update_role", {"role_id": role["id"], "permissions": {"invoices": ["read"]}})
        refused = await call_error(anna, "crm_invoices_unallocate", {"allocation_id": allocated["allocations"][0]["id"]})
        assert refused["code"] == "permission_denied" and "invoices:delete" in refused["message"]
        refused = await call_error(anna, "crm_invoices_suggest_allocation", {"invoice_id": invoice["id"]})
        assert refused["code"] == "permission_denied" and "deals:read" in refused["message"]

    oauth_access = oauth_tokens(db, server, org.organization_id, anna_id)
    assert status_of(server, anna_token) == 200 and status_of(server, oauth_access) == 200
    async with mcp_client(server.mcp_url, org.token) as admin:
        out = await call(admin, "crm_settings_deactivate_user", {"user_id": anna_id})
        assert out["revoked"]["api_tokens"] == 1 and out["revoked"]["oauth_access_tokens"] == 1
        err = await call_error(admin, "crm_settings_deactivate_user", {"user_id": str(org.user_id)})
        assert err["code"] == "last_admin"
    assert status_of(server, anna_token) == 401 and status_of(server, oauth_access) == 401
    log = db.execute("SELECT tool, action, actor_user_id FROM settings_changes WHERE organization_id = %s ORDER BY id",
                     (org.organization_id,)).fetchall()
    assert [r["action"] for r in log] == ["connected", "invited", "password_set", "created", "updated", "updated",
                                          "deactivated"]
    assert {r["actor_user_id"] for r in log} == {org.user_id, uuid.UUID(anna_id)}
    stored = db.execute("SELECT result FROM idempotency_keys WHERE organization_id = %s", (org.organization_id,)).fetchall()
    assert "fic-e2e-token" not in str(stored) and "fic-e2e-token" not in server.log_path.read_text()
