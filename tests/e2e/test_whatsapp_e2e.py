"""WhatsApp through the real server and the `mcp` SDK client: an admin connects the organization (a local Cloud API),
Meta's handshake and signed deliveries reach `/webhooks/whatsapp/<organization>` over HTTP and show up in
crm_whatsapp_list_messages once the server's worker applied them, the admin answers within the 24-hour window,
WhatsApp's status arrives, and a colleague without access sees nothing until given the chat."""

from __future__ import annotations

import subprocess
import time
import uuid

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from tests.conftest import start_server
from tests.mcp_helpers import all_tools, call, call_error, mcp_client
from tests.whatsapp_stub import WhatsappStub, contact, delivery, signed, status, text_message

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SECRET = "e2e-app-secret-0192"
VERIFY = "e2e-verify-token-3847"


@pytest.fixture(scope="module")
def database_url(admin_url):
    """A database of this module's own: its server's WhatsApp worker is the one applying these deliveries."""
    from application.migrate import migrate
    from interfaces.database import create_database, drop_database

    name = f"flusia_e2e15_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name)
    migrate(url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture(scope="module")
def world(database_url):
    with WhatsappStub() as stub:
        srv = start_server(database_url, {"FLUSIA_WHATSAPP_URL": stub.url})
        try:
            yield srv, stub
        finally:
            srv.process.terminate()
            try:
                srv.process.wait(10)
            except subprocess.TimeoutExpired:
                srv.process.kill()


async def until(predicate, what: str, seconds: float = 30.0):
    """Ask again until the server shows it (the worker applies deliveries in the background)."""
    import anyio

    deadline = time.monotonic() + seconds
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:.0f} s"
        await anyio.sleep(0.1)


async def test_a_customer_writes_on_whatsapp_and_the_assistant_answers(world, database_url):
    server, stub = world
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        org = identity.create_organization(conn, "Officina Bianchi", "admin@officina.example", "Admin")
        sales_id = identity.create_user(conn, org.organization_id, "sara@officina.example", "Sara", "sales")
        sales_token, _ = identity.create_token(conn, org.organization_id, sales_id, None)
    hook = f"{server.base_url}/webhooks/whatsapp/{org.organization_id}"
    async with mcp_client(server.mcp_url, org.token, query="toolsets=whatsapp,settings") as admin:
        names = {t.name for t in await all_tools(admin)}
        assert {n for n in names if n.startswith("crm_whatsapp_")} == {
            f"crm_whatsapp_{s}" for s in ("list_chats", "get_chat", "search_chats", "list_messages", "send_message",
                                          "send_template", "list_templates", "mark_read", "link_client", "assign_chat",
                                          "unassign_chat", "archive_chat", "list_notes", "add_note", "delete_note",
                                          "get_acl", "grant_access", "revoke_access")}
        connected = await call(admin, "crm_settings_update_organization", {"whatsapp": {
            "phone_number_id": stub.phone_number_id, "business_account_id": stub.business_account_id,
            "access_token": stub.token, "app_secret": SECRET, "webhook_verify_token": VERIFY}})
        assert connected["whatsapp"]["webhook_url"].endswith(f"/webhooks/whatsapp/{org.organization_id}")
        async with httpx.AsyncClient(timeout=30) as http:
            handshake = await http.get(hook, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                                     "hub.challenge": "987654321"})
            assert handshake.status_code == 200 and handshake.text == "987654321"
            body = delivery(stub.phone_number_id, contacts=[contact("393471234567", "Carla Neri")],
                            messages=[text_message("393471234567", "wamid.E2E1", "Buongiorno, la mia auto è pronta?")])
            refused = await http.post(hook, content=body, headers={"X-Hub-Signature-256": signed(body, "wrong")})
            assert refused.status_code == 401
            accepted = await http.post(hook, content=body, headers={"X-Hub-Signature-256": signed(body, SECRET),
                                                                    "Content-Type": "application/json"})
            assert accepted.status_code == 200

            async def chats():
                return (await call(admin, "crm_whatsapp_list_chats"))["items"]

            chat = (await until(chats, "the chat"))[0]
            assert chat["contact_name"] == "Carla Neri" and chat["unread_count"] == 1
            messages = await call(admin, "crm_whatsapp_list_messages", {"chat_id": chat["id"]})
            assert messages["items"][0]["text"] == "Buongiorno, la mia auto è pronta?"
            answer = await call(admin, "crm_whatsapp_send_message", {"chat_id": chat["id"],
                                                                     "text": "Sì, può passare dalle 15."})
            assert answer["status"] == "accepted" and stub.sent[-1]["to"] == "393471234567"
            delivered = delivery(stub.phone_number_id, statuses=[status(answer["whatsapp_message_id"], "read",
                                                                        "393471234567", callback=answer["id"])])
            assert (await http.post(hook, content=delivered,
                                    headers={"X-Hub-Signature-256": signed(delivered, SECRET)})).status_code == 200

            async def read():
                items = (await call(admin, "crm_whatsapp_list_messages", {"chat_id": chat["id"]}))["items"]
                return items[0]["status"] == "read"

            await until(read, "the read status")
        async with mcp_client(server.mcp_url, sales_token, query="toolsets=whatsapp") as sara:
            assert (await call(sara, "crm_whatsapp_list_chats"))["items"] == []
            assert (await call_error(sara, "crm_whatsapp_get_chat", {"chat_id": chat["id"]}))["code"] == "not_found"
            await call(admin, "crm_whatsapp_grant_access", {"user_id": str(sales_id), "chat_id": chat["id"]})
            assert [c["id"] for c in (await call(sara, "crm_whatsapp_list_chats"))["items"]] == [chat["id"]]
            denied = await call_error(sara, "crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "x"})
            assert denied["code"] == "permission_denied" and "whatsapp:write" in denied["message"]
