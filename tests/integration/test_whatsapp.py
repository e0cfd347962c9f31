"""WhatsApp through the tool path on PostgreSQL, against a local Cloud API (tests/whatsapp_stub.py) and signed webhook
deliveries built here: the connection's secrets, the webhook (signature, handshake, duplicates, kinds, statuses out of
order), the 24-hour window, sends that never repeat (errors, rate limits, a crash between the call and its record),
templates, media links, search, per-user access on every read tool, organizations kept apart, the workflow step."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from psycopg.rows import dict_row

from application import identity
from application import whatsapp_send as sending
from application.errors import ToolError
from application.inventory import registry
from interfaces import whatsapp_webhook as webhook
from interfaces.whatsapp_webhook import whatsapp_routes
from tests.inprocess import Caller
from tests.tool_args import sample_args
from tests.whatsapp_stub import WhatsappStub, contact, delivery, signed, status, text_message

SECRET = "app-secret-7f3c9a1b2d"
VERIFY = "verify-token-5e8d2c"
WA_TOOLS = [op for op in registry if op.toolset == "whatsapp"]


@pytest.fixture
def stub(monkeypatch):
    with WhatsappStub() as s:
        monkeypatch.setenv("FLUSIA_WHATSAPP_URL", s.url)
        yield s


@dataclass
class Org:
    rt: Any
    org: Any
    call: Caller
    stub: WhatsappStub
    db: Any
    secret: str = SECRET
    number: str = ""

    @property
    def id(self) -> uuid.UUID:
        return self.org.organization_id

    def connect(self, **extra: Any) -> dict[str, Any]:
        return self.call("crm_settings_update_organization", {"whatsapp": {
            "phone_number_id": self.number, "access_token": self.stub.token, "app_secret": self.secret,
            "webhook_verify_token": VERIFY, **extra}})

    def post(self, body: bytes, secret: str | None = None) -> tuple[int, dict[str, Any]]:
        return webhook.receive(self.rt, self.id, body, signed(body, secret or self.secret))

    def apply(self) -> None:
        self.rt.whatsapp.run_pending()
        self.rt.settle()

    def inbound(self, wa_id: str, text: str, *, name: str | None = None, at: float | None = None,
                wamid: str | None = None) -> str:
        wamid = wamid or f"wamid.{uuid.uuid4().hex[:12]}"
        body = delivery(self.number, contacts=[contact(wa_id, name)] if name else None,
                        messages=[text_message(wa_id, wamid, text, at=at)])
        assert self.post(body)[0] == 200
        self.apply()
        return wamid

    def chat(self, wa_id: str) -> dict[str, Any]:
        for archived in (False, True):
            for chat in self.call("crm_whatsapp_list_chats", {"limit": 100, "archived": archived})["items"]:
                if chat["phone"] == f"+{wa_id}":
                    return chat
        raise AssertionError(f"no chat with +{wa_id}")

    def user(self, role: str = "sales", name: str = "Sara Vendite") -> tuple[uuid.UUID, Caller]:
        with psycopg.connect(self.rt.database_url, autocommit=True, row_factory=dict_row) as conn:
            user_id = identity.create_user(conn, self.id, f"{uuid.uuid4().hex[:8]}@example.com", name, role)
            token, _ = identity.create_token(conn, self.id, user_id, None)
            principal = identity.principal_for_token(conn, token)
        return user_id, Caller(self.rt, principal)


@pytest.fixture
def wa(runtime, make_org, database_url, stub, db):
    org = make_org("WhatsApp")
    out = Org(runtime, org, Caller(runtime, org.principal(database_url)), stub, db, number=stub.phone_number_id)
    out.connect()
    return out


def inbox_rows(db, org_id) -> int:
    return db.execute("SELECT count(*) AS n FROM whatsapp_inbox WHERE organization_id = %s", (org_id,)).fetchone()["n"]


def http(rt: Any) -> TestClient:
    app = Litestar(route_handlers=whatsapp_routes)
    app.state.runtime = rt
    return TestClient(app)


# -- the connection ---------------------------------------------------------------------------------------------------
def test_the_connection_keeps_its_secrets_encrypted_and_never_shows_or_logs_them(runtime, make_org, database_url, db,
                                                                                stub, caplog):
    caplog.set_level(logging.DEBUG)
    org = make_org("Secrets")
    call = Caller(runtime, org.principal(database_url))
    missing = call.error("crm_settings_update_organization", {"whatsapp": {"phone_number_id": "123456789",
                                                                          "access_token": "tok-123456789"}})
    assert missing.field == "whatsapp.app_secret" and "nothing" not in missing.message
    shown = call("crm_settings_update_organization", {"whatsapp": {
        "phone_number_id": "123456789", "access_token": "tok-secret-abcdef", "app_secret": "app-secret-abcdef",
        "webhook_verify_token": "verify-secret-abcdef"}})["whatsapp"]
    assert shown["configured"] is True and shown["phone_number_id"] == "123456789"
    assert shown["webhook_url"].endswith(f"/webhooks/whatsapp/{org.organization_id}")
    row = db.execute("SELECT settings, secret FROM organization_connections WHERE organization_id = %s AND provider = "
                     "'whatsapp'", (org.organization_id,)).fetchone()
    assert row["secret"].startswith("v1.") and "secret" not in row["secret"] and "secret" not in json.dumps(row["settings"])
    changes = json.dumps([r["changes"] for r in db.execute(
        "SELECT changes FROM settings_changes WHERE organization_id = %s", (org.organization_id,)).fetchall()])
    assert "(set)" in changes and "abcdef" not in changes
    # a secret left out keeps its value; the answer never shows any
    again = call("crm_settings_update_organization", {"whatsapp": {"phone_number_id": "123456789",
                                                                   "access_token": "tok-rotated-abcdef"}})
    assert "abcdef" not in json.dumps(again) and again["whatsapp"]["configured"] is True
    assert "abcdef" not in json.dumps(call("crm_settings_get_organization"))
    # the ciphertext is bound to its organization: copied to another one it does not decrypt
    other = make_org("Thief")
    db.execute("INSERT INTO organization_connections (organization_id, provider, settings, secret) VALUES (%s,"
               " 'whatsapp', %s, %s)", (other.organization_id, json.dumps(row["settings"]), row["secret"]))
    assert webhook.receive(runtime, other.organization_id, b"{}", signed(b"{}", "app-secret-abcdef"))[0] == 401
    assert call("crm_settings_update_organization", {"whatsapp": None})["whatsapp"] == {"configured": False}
    assert "abcdef" not in caplog.text


# -- the webhook ------------------------------------------------------------------------------------------------------
def test_the_verify_handshake_answers_the_challenge_only_with_the_organizations_token(wa):
    with http(wa.rt) as client:
        url = f"/webhooks/whatsapp/{wa.id}"
        ok = client.get(url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
        assert ok.status_code == 200 and ok.text == "1158201444"
        for params in ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
                       {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
                       {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "<script>"}):
            assert client.get(url, params=params).status_code == 403
        assert client.get(f"/webhooks/whatsapp/{uuid.uuid4()}", params={
            "hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"}).status_code == 403


def test_only_signed_deliveries_are_stored_and_a_repeated_message_is_stored_once(wa, db):
    body = delivery(wa.number, contacts=[contact("393331112222", "Giulia")],
                    messages=[text_message("393331112222", "wamid.ONCE", "Buongiorno!")])
    with http(wa.rt) as client:
        url = f"/webhooks/whatsapp/{wa.id}"
        for header in (None, "sha256=" + "0" * 64, signed(body, "not-the-secret"), signed(body + b" ", SECRET)):
            answer = client.post(url, content=body, headers={"X-Hub-Signature-256": header} if header else {})
            assert answer.status_code == 401
        assert inbox_rows(db, wa.id) == 0
        ok = client.post(url, content=body, headers={"X-Hub-Signature-256": signed(body, SECRET)})
        assert ok.status_code == 200 and ok.json()["stored"] == 1
        repeated = client.post(url, content=body, headers={"X-Hub-Signature-256": signed(body, SECRET)})
        assert repeated.status_code == 200 and repeated.json() == {"ok": True, "stored": 0, "duplicates": 1, "ignored": 0}
        garbage = b'{"object": "x"}'
        assert client.post(url, content=garbage, headers={"X-Hub-Signature-256": signed(garbage, SECRET)}).status_code == 400
    wa.apply()
    chat = wa.chat("393331112222")
    assert chat["contact_name"] == "Giulia" and chat["unread_count"] == 1
    messages = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"]
    assert [m["text"] for m in messages] == ["Buongiorno!"]
    # delivered again after it was applied: still one message
    assert wa.post(body)[1]["duplicates"] == 1
    db.execute("DELETE FROM whatsapp_inbox WHERE organization_id = %s", (wa.id,))  # even without the inbox row
    assert wa.post(body)[1]["stored"] == 1
    wa.apply()
    assert len(wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"]) == 1
    assert db.execute("SELECT outcome FROM whatsapp_inbox WHERE organization_id = %s", (wa.id,)).fetchone()["outcome"] \
        == "duplicate"


def test_every_kind_of_message_is_recorded_and_the_chat_shows_unread_and_last_message(wa):
    wa_id, at = "393335556666", int(time.time())
    kinds = [
        text_message(wa_id, "wamid.K1", "Ecco la mia posizione e una foto"),
        {"from": wa_id, "id": "wamid.K2", "timestamp": str(at), "type": "image",
         "image": {"id": "7770001", "mime_type": "image/jpeg", "sha256": "x", "caption": "il guasto"}},
        {"from": wa_id, "id": "wamid.K3", "timestamp": str(at), "type": "audio",
         "audio": {"id": "7770002", "mime_type": "audio/ogg; codecs=opus", "voice": True}},
        {"from": wa_id, "id": "wamid.K4", "timestamp": str(at), "type": "document",
         "document": {"id": "7770003", "mime_type": "application/pdf", "filename": "preventivo.pdf"}},
        {"from": wa_id, "id": "wamid.K5", "timestamp": str(at), "type": "location",
         "location": {"latitude": 45.4642, "longitude": 9.19, "name": "Duomo", "address": "Piazza del Duomo, Milano"}},
        {"from": wa_id, "id": "wamid.K6", "timestamp": str(at), "type": "reaction",
         "reaction": {"message_id": "wamid.K1", "emoji": "❤️"}},
        {"from": wa_id, "id": "wamid.K7", "timestamp": str(at), "type": "interactive",
         "context": {"from": wa.number, "id": "wamid.OUT"},
         "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Sì, confermo"}}},
        {"from": wa_id, "id": "wamid.K8", "timestamp": str(at), "type": "contacts",
         "contacts": [{"name": {"formatted_name": "Luca Bianchi"}, "phones": [{"phone": "+39 02 123"}]}]},
        {"from": wa_id, "id": "wamid.K9", "timestamp": str(at), "type": "unknown", "errors": [{"code": 131051}]},
    ]
    assert wa.post(delivery(wa.number, contacts=[contact(wa_id, "Anna")], messages=kinds))[1]["stored"] == 9
    wa.apply()
    chat = wa.chat(wa_id)
    assert chat["unread_count"] == 8  # a reaction is not something to read
    assert chat["last_message_direction"] == "in"
    items = {m["whatsapp_message_id"]: m for m in wa.call("crm_whatsapp_list_messages",
                                                          {"chat_id": chat["id"], "limit": 100})["items"]}
    assert items["wamid.K2"]["media"]["mime_type"] == "image/jpeg" and items["wamid.K2"]["text"] == "il guasto"
    assert items["wamid.K2"]["media"]["download_url"].startswith("http")
    assert items["wamid.K3"]["media"]["voice"] is True
    assert items["wamid.K4"]["media"]["filename"] == "preventivo.pdf"
    assert items["wamid.K5"]["location"]["latitude"] == 45.4642 and "Duomo" in items["wamid.K5"]["text"]
    assert items["wamid.K6"]["kind"] == "reaction" and items["wamid.K6"]["reaction_to"] == "wamid.K1"
    assert items["wamid.K7"]["button"] == "yes" and items["wamid.K7"]["reply_to"] == "wamid.OUT"
    assert items["wamid.K8"]["contacts"] == ["Luca Bianchi", "+39 02 123"]
    assert items["wamid.K9"]["kind"] == "unsupported"
    # newest first, in the order they arrived
    assert [m["whatsapp_message_id"] for m in wa.call("crm_whatsapp_list_messages", {
        "chat_id": chat["id"], "limit": 3})["items"]] == ["wamid.K9", "wamid.K8", "wamid.K7"]
    read = wa.call("crm_whatsapp_mark_read", {"chat_id": chat["id"]})
    assert "unread_count" not in read["chat"]  # 0, an absent default
    assert read["read_receipt_sent"] is True and wa.stub.reads == ["wamid.K9"]
    assert wa.chat(wa_id).get("unread_count", 0) == 0


def test_chats_link_to_the_client_whose_phone_or_contacts_phone_matches(wa):
    lead = wa.call("crm_clients_create_lead", {"business_name": "Impianti Rossi", "phone": "0039 333 4445555"})
    other = wa.call("crm_clients_create_lead", {"business_name": "Bar Verdi"})
    wa.call("crm_clients_add_contact", {"client_id": other["id"], "name": "Paolo Verdi", "phone": "347 888 9999"})
    twin_a = wa.call("crm_clients_create_lead", {"business_name": "Gemello A", "phone": "+39 320 000 1111"})
    wa.call("crm_clients_create_lead", {"business_name": "Gemello B", "phone": "320 0001111"})
    wa.inbound("393334445555", "ciao", name="Mario Rossi")
    wa.inbound("393478889999", "ciao", name="Paolo")
    wa.inbound("393200001111", "ciao")
    assert wa.chat("393334445555")["client_id"] == lead["id"]
    assert wa.chat("393478889999")["client_id"] == other["id"]
    assert "client_id" not in wa.chat("393200001111")  # two clients have that number: a person decides
    detail = wa.call("crm_whatsapp_get_chat", {"chat_id": wa.chat("393334445555")["id"]})
    assert detail["client_link"] == "automatic" and detail["client"]["business_name"] == "Impianti Rossi"
    # linked by hand, it stays, whatever later messages match
    chat = wa.chat("393200001111")
    linked = wa.call("crm_whatsapp_link_client", {"chat_id": chat["id"], "client_id": twin_a["id"]})
    assert linked["client_name"] == "Gemello A"
    unlinked = wa.call("crm_whatsapp_link_client", {"chat_id": wa.chat("393334445555")["id"], "client_id": None})
    assert "client_id" not in unlinked
    wa.inbound("393334445555", "ancora io")
    assert "client_id" not in wa.chat("393334445555")
    assert wa.call.error("crm_whatsapp_link_client", {"chat_id": chat["id"], "client_id": str(uuid.uuid4())}).code == \
        "not_found"
    assert len(wa.call("crm_whatsapp_list_chats", {"client_id": other["id"]})["items"]) == 1


# -- sending ----------------------------------------------------------------------------------------------------------
def test_free_form_texts_only_within_24_hours_of_the_customers_last_message(wa):
    wa.inbound("393336667777", "scrivo da ieri", at=time.time() - 25 * 3600)
    chat = wa.chat("393336667777")
    assert wa.call("crm_whatsapp_get_chat", {"chat_id": chat["id"]})["care_window_open"] is False
    refused = wa.call.error("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Buongiorno"})
    assert refused.code == "outside_care_window" and "crm_whatsapp_send_template" in refused.message
    assert wa.stub.sent == []
    wa.stub.add_template("follow_up", "it", "Buongiorno {{1}}, possiamo risentirci?")
    sent = wa.call("crm_whatsapp_send_template", {"chat_id": chat["id"], "template_name": "follow_up",
                                                  "parameters": ["Mario"]})
    assert sent["status"] == "accepted" and sent["text"] == "Buongiorno Mario, possiamo risentirci?"
    assert wa.stub.sent[-1]["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Mario"}]
    wa.inbound("393336667777", "eccomi")
    detail = wa.call("crm_whatsapp_get_chat", {"chat_id": chat["id"]})
    assert detail["care_window_open"] is True
    ok = wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Perfetto, grazie!"})
    assert ok["status"] == "accepted" and ok["whatsapp_message_id"] == wa.stub.sent[-1]["_wamid"]
    assert wa.stub.sent[-1]["to"] == "393336667777" and wa.stub.sent[-1]["biz_opaque_callback_data"] == ok["id"]


def test_statuses_arriving_out_of_order_and_twice_show_the_furthest(wa):
    wa.inbound("393337778888", "ciao")
    chat = wa.chat("393337778888")
    sent = wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Le scrivo subito"})
    wamid, mine = sent["whatsapp_message_id"], sent["id"]
    order = [status(wamid, "read", "393337778888", callback=mine), status(wamid, "delivered", "393337778888", callback=mine),
             status(wamid, "sent", "393337778888", callback=mine), status(wamid, "read", "393337778888", callback=mine)]
    for one in order:
        wa.post(delivery(wa.number, statuses=[one]))
    wa.apply()
    shown = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert shown["status"] == "read" and shown["delivered_at"] and shown["sent_at"] and shown["read_at"]
    # a failure WhatsApp reports later, found by WhatsApp's id alone
    failing = wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Secondo messaggio"})
    wa.post(delivery(wa.number, statuses=[status(failing["whatsapp_message_id"], "failed", "393337778888",
                                                 error=(131047, "Re-engagement message"))]))
    wa.apply()
    failed = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert failed["status"] == "failed" and failed["error"] == {"code": 131047, "title": "Re-engagement message",
                                                                 "retryable": False}
    # a status about a message we never sent changes nothing
    assert wa.post(delivery(wa.number, statuses=[status("wamid.UNKNOWN", "read", "393337778888")]))[0] == 200
    wa.apply()


def test_cloud_api_refusals_are_recorded_and_a_refused_send_is_not_repeated(wa, db):
    wa.inbound("393338889999", "ciao")
    chat = wa.chat("393338889999")
    wa.stub.fail_next(131047, title="Re-engagement message")
    refused = wa.call.error("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Buongiorno",
                                                          "idempotency_key": "reengage"})
    assert refused.code == "whatsapp_refused" and "crm_whatsapp_send_template" in refused.message
    requests = len(wa.stub.requests)
    again = wa.call.error("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Buongiorno",
                                                        "idempotency_key": "reengage"})
    assert again.code == "whatsapp_refused" and len(wa.stub.requests) == requests  # not sent again
    wa.rt.settle()
    failed = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert failed["status"] == "failed" and failed["error"]["code"] == 131047
    # a rate limit sends nothing; the same call later sends it
    wa.stub.fail_next(130429, status=429, title="Rate limit hit", retry_after="30")
    limited = wa.call.error("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Riprovo",
                                                          "idempotency_key": "limited"})
    assert limited.code == "rate_limited" and "30 s" in limited.message
    ok = wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Riprovo", "idempotency_key": "limited"})
    assert ok["status"] == "accepted"
    assert wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Riprovo",
                                                 "idempotency_key": "limited"}) == ok
    assert [s["text"]["body"] for s in wa.stub.sent] == ["Riprovo"]
    row = db.execute("SELECT state, attempts, wamid FROM whatsapp_outbox WHERE message_id = %s", (ok["id"],)).fetchone()
    assert row["state"] == "accepted" and row["attempts"] == 2 and row["wamid"] == ok["whatsapp_message_id"]
    # a wrong token
    wa.stub.token = "rotated"
    token = wa.call.error("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "x"})
    assert "access_token" in token.message


def test_a_crash_between_the_send_and_its_record_never_sends_twice(wa, db, monkeypatch):
    wa.inbound("393339990000", "ciao")
    chat = wa.chat("393339990000")

    def crash(message_id: uuid.UUID) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(sending, "after_send", crash)
    with pytest.raises(ToolError) as e:
        wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Una volta sola", "idempotency_key": "crash"})
    assert e.value.code == "internal_error"
    sending._answered.clear()  # the dead process's memory goes with it
    monkeypatch.setattr(sending, "after_send", None)
    assert len(wa.stub.sent) == 1
    wa.rt.settle()
    recorded = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert recorded["status"] == "sending" and recorded["text"] == "Una volta sola"
    retried = wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Una volta sola",
                                                    "idempotency_key": "crash"})
    assert retried["id"] == recorded["id"] and retried["status"] == "interrupted" and "never sent again" in retried["note"]
    assert len(wa.stub.sent) == 1
    # WhatsApp's status webhook tells what happened, matched by our id
    wamid = wa.stub.sent[0]["_wamid"]
    wa.post(delivery(wa.number, statuses=[status(wamid, "delivered", "393339990000", callback=recorded["id"])]))
    wa.apply()
    final = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert final["status"] == "delivered" and final["whatsapp_message_id"] == wamid
    # a crash nobody retries: the worker marks the abandoned send interrupted
    monkeypatch.setattr(sending, "after_send", crash)
    with pytest.raises(ToolError):
        wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "Abbandonato"})
    monkeypatch.setattr(sending, "after_send", None)
    sending._answered.clear()
    assert wa.rt.whatsapp.sweep(older_than=0) >= 1
    wa.rt.settle()
    assert wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]["status"] == "interrupted"
    assert len(wa.stub.sent) == 2
    assert db.execute("SELECT count(*) AS n FROM whatsapp_outbox WHERE organization_id = %s AND state = 'sending'",
                      (wa.id,)).fetchone()["n"] == 0


def test_templates_from_settings_and_from_whatsapp_with_their_parameters_checked(wa):
    for i, (name, status_) in enumerate((("promo_marzo", "APPROVED"), ("conferma_ordine", "APPROVED"),
                                         ("in_revisione", "PENDING"))):
        wa.stub.add_template(name, "it", f"Ciao {{{{1}}}}, messaggio numero {i}.", status=status_)
    settings_template = wa.call("crm_settings_create_template", {
        "kind": "whatsapp", "name": "benvenuto", "entity": "client", "language": "it",
        "body": "Benvenuto {{1}} da {{2}}!", "parameters": ["client.contact_name", "organization.name"]})
    wa.stub.add_template("benvenuto", "it", "Benvenuto {{1}} da {{2}}!")
    unknown = wa.call("crm_whatsapp_list_templates")
    assert [t["name"] for t in unknown["items"]] == ["benvenuto"] and "business_account_id" in unknown["note"]
    wa.connect(business_account_id=wa.stub.business_account_id)  # or learned from the first webhook delivery
    listed = wa.call("crm_whatsapp_list_templates")
    names = [(t["source"], t["name"]) for t in listed["items"]]
    assert ("settings", "benvenuto") in names and ("cloud_api", "promo_marzo") in names
    assert ("cloud_api", "conferma_ordine") in names and ("cloud_api", "in_revisione") not in names  # 2 pages followed
    assert "in_revisione" in [t["name"] for t in wa.call("crm_whatsapp_list_templates", {
        "source": "cloud_api", "include_unapproved": True})["items"]]
    lead = wa.call("crm_clients_create_lead", {"business_name": "Rossi", "contact_name": "Mario Rossi",
                                               "phone": "+39 333 1212121"})
    wa.inbound("393331212121", "salve")
    chat = wa.chat("393331212121")
    sent = wa.call("crm_whatsapp_send_template", {"chat_id": chat["id"], "template_id": settings_template["id"]})
    org_name = wa.call("crm_settings_get_organization")["name"]
    assert sent["text"] == f"Benvenuto Mario Rossi da {org_name}!" and sent["template"]["template_id"] == settings_template["id"]
    assert [p["text"] for p in wa.stub.sent[-1]["template"]["components"][0]["parameters"]] == ["Mario Rossi", org_name]
    errors = [
        ({"template_name": "promo_marzo"}, "parameters"),
        ({"template_name": "promo_marzo", "parameters": ["a", "b"]}, "parameters"),
        ({"template_name": "promo_marzo", "parameters": ["riga\nnuova"]}, "parameters[0]"),
        ({"template_name": "in_revisione", "parameters": ["a"]}, "template_name"),
        ({"template_name": "non_esiste", "parameters": ["a"]}, "template_name"),
        ({"template_name": "promo_marzo", "template_id": settings_template["id"]}, "template_id"),
        ({}, "template_id"),
    ]
    before = len(wa.stub.sent)
    for extra, field in errors:
        e = wa.call.error("crm_whatsapp_send_template", {"chat_id": chat["id"], **extra})
        assert e.field == field, (extra, e.field, e.message)
    assert len(wa.stub.sent) == before
    sent = wa.call("crm_whatsapp_send_template", {"to": "+39 347 5556666", "template_name": "promo_marzo",
                                                  "language": "it", "parameters": ["Giulia"]})
    new_chat = wa.call("crm_whatsapp_get_chat", {"chat_id": sent["chat_id"]})
    assert new_chat["phone"] == "+393475556666" and new_chat["care_window_open"] is False
    assert wa.stub.sent[-1]["to"] == "393475556666"
    assert lead["id"]


def test_a_received_photo_is_downloaded_through_a_signed_expiring_link(wa):
    wa.stub.add_media("8880001", b"\xff\xd8\xff\xe0 jpeg bytes", "image/jpeg")
    wa.post(delivery(wa.number, messages=[{"from": "393330001111", "id": "wamid.PHOTO", "timestamp": str(int(time.time())),
                                           "type": "image", "image": {"id": "8880001", "mime_type": "image/jpeg"}}]))
    wa.apply()
    message = wa.call("crm_whatsapp_list_messages", {"chat_id": wa.chat("393330001111")["id"]})["items"][0]
    link = message["media"]["download_url"]
    path = link[link.index("/whatsapp/media/"):]
    with http(wa.rt) as client:
        got = client.get(path)
        assert got.status_code == 200 and got.content == b"\xff\xd8\xff\xe0 jpeg bytes"
        assert got.headers["content-type"].startswith("image/jpeg")
        assert client.get(path.replace("sig=", "sig=x")).status_code == 403
        expired = path.split("expires=")[0] + "expires=1&" + path.split("&", 1)[1]
        assert client.get(expired).status_code == 403


# -- search -----------------------------------------------------------------------------------------------------------
def test_search_finds_italian_and_english_word_forms_across_the_chats_you_may_see(wa):
    wa.inbound("393331000001", "Mi servono le fatture di marzo", name="Elena")
    wa.inbound("393331000002", "Could you send the invoices again?", name="John")
    wa.inbound("393331000003", "Preventivo per il giardino", name="Marco Giardini")
    found = lambda q, **kw: [c["phone"] for c in wa.call("crm_whatsapp_search_chats", {"q": q, **kw})["items"]]  # noqa: E731
    assert found("fattura") == ["+393331000001"]          # Italian: fatture ~ fattura
    assert found("invoice") == ["+393331000002"]          # English: invoices ~ invoice
    assert found("giardin") == ["+393331000003"]          # a word beginning, in the name and the text
    assert found("3331000002") == ["+393331000002"]       # a number
    assert found("Elena") == ["+393331000001"]
    hits = wa.call("crm_whatsapp_search_chats", {"q": "fatture marzo"})["items"][0]
    assert hits["matched_messages"] == 1 and hits["messages"][0]["text"].startswith("Mi servono")
    first = wa.chat("393331000001")["id"]
    assert found("invoice", chat_id=first) == []
    user_id, sara = wa.user()
    assert sara("crm_whatsapp_search_chats", {"q": "fattura"})["items"] == []
    wa.call("crm_whatsapp_grant_access", {"user_id": str(user_id), "chat_id": first})
    assert [c["id"] for c in sara("crm_whatsapp_search_chats", {"q": "fattura"})["items"]] == [first]
    assert sara("crm_whatsapp_search_chats", {"q": "invoice"})["items"] == []


# -- who may see what ---------------------------------------------------------------------------------------------------
def test_every_read_tool_honours_the_access_list_and_a_revocation_counts_at_the_next_call(wa):
    wa.inbound("393332000001", "Riservato: offerta segreta", name="Cliente Uno")
    wa.inbound("393332000002", "Altro cliente", name="Cliente Due")
    secret, other = wa.chat("393332000001"), wa.chat("393332000002")
    note = wa.call("crm_whatsapp_add_note", {"chat_id": secret["id"], "body": "nota riservata"})
    user_id, sara = wa.user()
    reads = [op for op in WA_TOOLS if op.kind == "query"]
    ids = {"chat_id": secret["id"], "note_id": note["id"]}

    def shown(caller: Caller) -> dict[str, str]:
        """What each read tool shows the caller of the secret chat: the text, or the error code."""
        out = {}
        for op in reads:
            args = sample_args(op, ids, {"q": "Riservato"})
            try:
                out[op.name] = json.dumps(caller(op.name, args))
            except ToolError as e:
                out[op.name] = e.code
        return out

    hidden = shown(sara)
    for name, text in hidden.items():
        assert "Riservato" not in text and "Cliente Uno" not in text and secret["id"] not in text, name
    assert hidden["crm_whatsapp_get_chat"] == hidden["crm_whatsapp_list_messages"] == "not_found"
    assert hidden["crm_whatsapp_list_notes"] == hidden["crm_whatsapp_get_acl"] == "not_found"
    assert sara("crm_whatsapp_list_chats")["items"] == []
    # exactly what a chat that does not exist answers
    assert sara.error("crm_whatsapp_get_chat", {"chat_id": secret["id"]}).message == f"chat {secret['id']} not found"

    granted = wa.call("crm_whatsapp_grant_access", {"user_id": str(user_id), "chat_id": secret["id"]})
    assert [u["user_id"] for u in granted["users"]] == [str(user_id)] and granted["admins"]
    visible = shown(sara)
    assert "Riservato" in visible["crm_whatsapp_list_messages"] and "nota riservata" in visible["crm_whatsapp_list_notes"]
    assert [c["id"] for c in sara("crm_whatsapp_list_chats")["items"]] == [secret["id"]]
    wa.call("crm_whatsapp_revoke_access", {"user_id": str(user_id), "chat_id": secret["id"]})
    assert shown(sara) == hidden

    # a business number: every chat on it
    wa.call("crm_whatsapp_grant_access", {"user_id": str(user_id), "business_number_id": wa.number})
    assert {c["id"] for c in sara("crm_whatsapp_list_chats")["items"]} == {secret["id"], other["id"]}
    acl = wa.call("crm_whatsapp_get_acl", {"business_number_id": wa.number})
    assert acl["users"][0]["via"] == "business_number"
    wa.call("crm_whatsapp_revoke_access", {"user_id": str(user_id), "business_number_id": wa.number})
    assert sara("crm_whatsapp_list_chats")["items"] == []
    # assigned: seen while assigned
    wa.call("crm_whatsapp_assign_chat", {"chat_id": other["id"], "user_id": str(user_id)})
    assert [c["id"] for c in sara("crm_whatsapp_list_chats")["items"]] == [other["id"]]
    assert wa.call("crm_whatsapp_get_acl", {"chat_id": other["id"]})["users"] == [
        {"user_id": str(user_id), "user_name": "Sara Vendite", "via": "assignee"}]
    wa.call("crm_whatsapp_unassign_chat", {"chat_id": other["id"]})
    assert sara("crm_whatsapp_list_chats")["items"] == []
    # revoking what was never granted says so
    assert wa.call.error("crm_whatsapp_revoke_access", {"user_id": str(user_id), "chat_id": other["id"]}).code == "not_found"


def test_a_user_shares_only_what_they_see_and_writes_only_where_they_see(wa):
    wa.call("crm_settings_create_role", {"name": "WhatsApp operator", "permissions": {
        "whatsapp": ["read", "write", "delete"], "users": ["read"]}})
    wa.inbound("393333000001", "uno")
    wa.inbound("393333000002", "due")
    mine, theirs = wa.chat("393333000001"), wa.chat("393333000002")
    op_id, operator = wa.user("WhatsApp operator", "Oscar Operatore")
    colleague_id, _ = wa.user()
    wa.call("crm_whatsapp_grant_access", {"user_id": str(op_id), "chat_id": mine["id"]})
    shared = operator("crm_whatsapp_grant_access", {"user_id": str(colleague_id), "chat_id": mine["id"]})
    assert {u["user_id"] for u in shared["users"]} == {str(op_id), str(colleague_id)}
    for tool, args in (("crm_whatsapp_grant_access", {"user_id": str(colleague_id), "chat_id": theirs["id"]}),
                       ("crm_whatsapp_grant_access", {"user_id": str(colleague_id), "business_number_id": wa.number}),
                       ("crm_whatsapp_send_message", {"chat_id": theirs["id"], "text": "x"}),
                       ("crm_whatsapp_archive_chat", {"chat_id": theirs["id"]}),
                       ("crm_whatsapp_add_note", {"chat_id": theirs["id"], "body": "x"}),
                       ("crm_whatsapp_send_template", {"to": "+39 333 000 0009", "template_name": "x", "parameters": ["a"]})):
        e = operator.error(tool, args)
        assert e.code in ("not_found", "rule_violation"), (tool, e.code)
    sent = operator("crm_whatsapp_send_message", {"chat_id": mine["id"], "text": "Rispondo io"})
    assert sent["sent_by_name"] == "Oscar Operatore"


def test_archive_assign_and_notes(wa):
    wa.inbound("393334000001", "ciao", name="Teresa")
    chat = wa.chat("393334000001")
    assigned = wa.call("crm_whatsapp_assign_chat", {"chat_id": chat["id"], "user_id": str(wa.org.user_id)})
    assert assigned["assignee_name"] == "Admin"
    assert wa.call("crm_whatsapp_list_chats", {"assignee_id": str(wa.org.user_id)})["items"][0]["id"] == chat["id"]
    archived = wa.call("crm_whatsapp_archive_chat", {"chat_id": chat["id"]})
    assert archived["archived"] is True
    assert wa.call.error("crm_whatsapp_archive_chat", {"chat_id": chat["id"]}).code == "already_archived"
    assert chat["id"] not in [c["id"] for c in wa.call("crm_whatsapp_list_chats")["items"]]
    assert chat["id"] in [c["id"] for c in wa.call("crm_whatsapp_list_chats", {"archived": True})["items"]]
    wa.inbound("393334000001", "sono ancora qui")  # the customer writes again: back in the list
    assert chat["id"] in [c["id"] for c in wa.call("crm_whatsapp_list_chats")["items"]]
    note = wa.call("crm_whatsapp_add_note", {"chat_id": chat["id"], "body": "Richiamare lunedì"})
    assert wa.call("crm_whatsapp_list_notes", {"chat_id": chat["id"]})["items"][0]["body"] == "Richiamare lunedì"
    other = wa.call("crm_clients_create_lead", {"business_name": "Altro"})
    client_note = wa.call("crm_clients_add_note", {"client_id": other["id"], "body": "x"})
    assert wa.call.error("crm_whatsapp_delete_note", {"chat_id": chat["id"], "note_id": client_note["id"]}).code == \
        "not_found"
    assert wa.call("crm_whatsapp_delete_note", {"chat_id": chat["id"], "note_id": note["id"]})["removed"] is True
    assert wa.call("crm_whatsapp_list_notes", {"chat_id": chat["id"]})["items"] == []


# -- organizations kept apart -------------------------------------------------------------------------------------------
def test_another_organizations_ids_find_nothing_and_its_webhook_never_writes_here(runtime, make_org, database_url,
                                                                                 stub, db):
    a = Org(runtime, make_org("A"), None, stub, db, secret="secret-of-a-123", number="111111111")  # type: ignore[arg-type]
    a.call = Caller(runtime, a.org.principal(database_url))
    b = Org(runtime, make_org("B"), None, stub, db, secret="secret-of-b-456", number="222222222")  # type: ignore[arg-type]
    b.call = Caller(runtime, b.org.principal(database_url))
    a.connect()
    b.connect()
    b.inbound("393335000001", "Segretissimo di B", name="Cliente di B")
    chat_b = b.chat("393335000001")
    note_b = b.call("crm_whatsapp_add_note", {"chat_id": chat_b["id"], "body": "Segretissimo nota"})
    sent_b = b.call("crm_whatsapp_send_message", {"chat_id": chat_b["id"], "text": "Segretissimo risposta"})
    ids_b = {"chat_id": chat_b["id"], "note_id": note_b["id"], "business_number_id": b.number,
             "user_id": str(b.org.user_id)}
    before = b.call("crm_whatsapp_get_chat", {"chat_id": chat_b["id"]})
    for op in WA_TOOLS:
        args = sample_args(op, ids_b)
        try:
            text = json.dumps(a.call(op.name, args))
        except ToolError as e:
            assert e.code in {"not_found", "invalid_arguments", "rule_violation", "not_connected"}, (op.name, e.code)
            text = e.message
        leaked = [s for s in ("Segretissimo", "Cliente di B", chat_b["id"], note_b["id"]) if s in text
                  and s not in json.dumps(args)]
        assert not leaked, (op.name, leaked)
    # webhooks: B's signature on A's URL is refused; A's signature with B's number stores nothing for either
    body = delivery(b.number, messages=[text_message("393335000001", "wamid.CROSS", "intruso")])
    assert a.post(body, secret=b.secret)[0] == 401
    assert a.post(body)[1] == {"ok": True, "stored": 0, "duplicates": 0, "ignored": 1}
    # a status naming B's message (our id in the callback data) sent to A changes nothing in B
    forged = delivery(a.number, statuses=[status(sent_b["whatsapp_message_id"], "read", "393335000001",
                                                 callback=sent_b["id"])])
    assert a.post(forged)[1]["stored"] == 1
    a.apply()
    assert db.execute("SELECT outcome FROM whatsapp_inbox WHERE organization_id = %s AND kind = 'status'",
                      (a.id,)).fetchone()["outcome"] == "unknown_message"
    b.rt.settle()
    assert b.call("crm_whatsapp_get_chat", {"chat_id": chat_b["id"]})["unread_count"] == before["unread_count"]
    assert b.call("crm_whatsapp_list_messages", {"chat_id": chat_b["id"]})["items"][0]["status"] == "accepted"
    assert a.call("crm_whatsapp_list_chats")["items"] == []


# -- workflows ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def wa_alone(iso_runtime, stub):
    """An organization on a database of its own: the workflow engine of another process sharing the session database
    (the e2e server) must not take this test's runs."""
    with psycopg.connect(iso_runtime.database_url, autocommit=True, row_factory=dict_row) as conn:
        org = identity.create_organization(conn, "WhatsApp alone", "alone@example.com", "Admin")
        principal = identity.principal_for_token(conn, org.token)
        out = Org(iso_runtime, org, Caller(iso_runtime, principal), stub, conn, number=stub.phone_number_id)
        out.connect()
        yield out


def test_a_workflow_step_sends_a_template_through_the_send_path(wa_alone):
    from application.workflow_engine import WorkflowEngine

    wa = wa_alone
    types = {t["name"]: t for t in wa.call("crm_workflows_list_step_types")["items"]}
    assert types["send_whatsapp_template"]["available"] is True
    wa.stub.add_template("benvenuto_lead", "it", "Ciao {{1}}, grazie per averci contattato!")
    wa.connect(business_account_id=wa.stub.business_account_id)
    flow = wa.call("crm_workflows_create", {"name": "Benvenuto WhatsApp"})
    wa.call("crm_workflows_set_trigger", {"workflow_id": flow["id"], "type": "client_created",
                                          "config": {"source": "whatsapp-flow"}})
    wa.call("crm_workflows_add_step", {"workflow_id": flow["id"], "type": "send_whatsapp_template", "config": {
        "template_name": "benvenuto_lead", "language": "it", "parameters": ["{{client.business_name}}"]}})
    wa.call("crm_workflows_activate", {"workflow_id": flow["id"]})
    wa.call("crm_clients_create_lead", {"business_name": "Pasticceria Dolce", "phone": "+39 333 4040404",
                                        "source": "whatsapp-flow"})
    engine = WorkflowEngine(wa.rt)
    try:
        deadline = time.monotonic() + 60
        while not wa.stub.sent and time.monotonic() < deadline:
            engine.drain_sync()
            time.sleep(0.05)
    finally:
        engine.close()
    wa.call("crm_workflows_deactivate", {"workflow_id": flow["id"]})
    runs = wa.call("crm_workflows_list_runs", {"workflow_id": flow["id"]})["items"]
    assert len(wa.stub.sent) == 1, runs
    assert wa.stub.sent[0]["to"] == "393334040404"
    assert wa.stub.sent[0]["template"]["components"][0]["parameters"][0]["text"] == "Pasticceria Dolce"
    wa.rt.settle()
    chat = wa.chat("393334040404")
    message = wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"][0]
    assert message["kind"] == "template" and message["text"] == "Ciao Pasticceria Dolce, grazie per averci contattato!"


def test_logs_never_carry_message_text_numbers_or_secrets(wa, caplog):
    caplog.set_level(logging.DEBUG)
    wa.inbound("393336000001", "testo-privatissimo-7731", name="Nome-Privato")
    chat = wa.chat("393336000001")
    wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "risposta-privatissima-8842"})
    wa.stub.fail_next(131026, title="Message undeliverable")
    with pytest.raises(ToolError):
        wa.call("crm_whatsapp_send_message", {"chat_id": chat["id"], "text": "risposta-privatissima-8842"})
    for secret in ("testo-privatissimo", "Nome-Privato", "risposta-privatissima", "393336000001", SECRET, VERIFY,
                   wa.stub.token):
        assert secret not in caplog.text, secret
    assert "tool_call org=" in caplog.text


def test_hostile_deliveries_are_stored_as_storable_values_or_refused_never_crash(wa, db, caplog):
    caplog.set_level(logging.DEBUG)
    canary = "canary-wa-91x"
    raw = [
        '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":'
        '{"phone_number_id":"%s"},"contacts":[{"wa_id":"393337000001","profile":{"name":"\\u0000%s\\ud800"}}],'
        '"messages":[{"from":"393337000001","id":"wamid.H1","timestamp":"1e999","type":"text","text":{"body":'
        '"%s\\u0000\\udfff"}},{"from":"393337000001","id":"wamid.H2","timestamp":"-5","type":"location","location":'
        '{"latitude":1e308,"longitude":"x","name":["list"]}},{"from":"393337000001","id":"wamid.H3","type":"image",'
        '"image":"not an object"},{"from":"39333","id":"wamid.H4","type":"text"},{"id":"wamid.H5"},"string",7,'
        '{"from":"393337000001","id":"%s","type":"text","text":{"body":"long id"}}],'
        '"statuses":[{"id":"wamid.S","status":"read","timestamp":"nan","biz_opaque_callback_data":"%s"},'
        '{"id":"wamid.S2","status":["x"]},{"id":{"x":1},"status":"sent"}]}}]}]}'
        % (wa.number, canary, canary, "w" * 500, canary),
        '{"entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"%s"},"messages":[[[[[]]]]]}}]}]}'
        % wa.number,
        '{"entry": "x"}', '[1,2,3]', "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "{" * 5000,
    ]
    for text in raw:
        body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        code, _ = wa.post(body)
        assert code in (200, 400), (code, text[:80])
    wa.apply()
    assert db.execute("SELECT count(*) AS n FROM consumer_parked WHERE organization_id = %s", (wa.id,)).fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM whatsapp_inbox WHERE organization_id = %s AND processed_at IS NULL",
                      (wa.id,)).fetchone()["n"] == 0
    chat = wa.chat("393337000001")
    texts = [m.get("text") for m in wa.call("crm_whatsapp_list_messages", {"chat_id": chat["id"]})["items"]]
    assert f"{canary}\ufffd\ufffd" in texts and "\ufffd" in chat["contact_name"]
    assert canary not in caplog.text
