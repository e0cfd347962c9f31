"""WhatsApp's domain rules, without a database: numbers, the 24-hour window, template parameters, parsing webhook
items into storable values, statuses arriving out of order, sends that never repeat, the access list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from application import whatsapp_cloud as cloud
from application import whatsapp_inbox as inbox
from domain.errors import DomainError
from domain.whatsapp import (Chat, OutsideCareWindow, WhatsappAccess, WhatsappMessage, calling_code, chat_id,
                             check_parameters, check_window, display_status, fill_body, inbound_message_id,
                             match_keys, normalize_number, outbound_message_id, parse_message, parse_status,
                             variable_count)
from tests.whatsapp_stub import delivery, signed, status, text_message

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ORG = uuid4()


def test_numbers_become_e164_digits_with_the_organizations_country_code():
    assert normalize_number("+39 333 123 4567", "39") == "393331234567"
    assert normalize_number("0039 333 1234567", "39") == "393331234567"
    assert normalize_number("333 123 4567", "39") == "393331234567"
    assert normalize_number("02 1234 5678", "39") == "390212345678"  # Italian landlines keep their 0
    assert normalize_number("07700 900123", "44") == "447700900123"  # elsewhere the trunk 0 goes
    for bad in ("abc", "+0 123 456 789", "12", "+39 333 123 4567 891 234 5"):
        with pytest.raises(DomainError) as e:
            normalize_number(bad, "39")
        assert e.value.field == "to"
    assert calling_code("it-IT") == "39" and calling_code("en-GB") == "44" and calling_code(None, "Svizzera") == "41"
    assert calling_code("xx") == "39"
    assert match_keys("393331234567", "39") == ["393331234567", "3331234567"]
    assert match_keys("447700900123", "44") == ["447700900123", "7700900123", "07700900123"]
    assert match_keys("15551234567", "39") == ["15551234567"]


def test_ids_come_from_whatsapp_ids_so_repeats_are_the_same_aggregate():
    assert chat_id(ORG, "123456", "393331234567") == chat_id(ORG, "123456", "393331234567")
    assert chat_id(ORG, "123456", "393331234567") != chat_id(uuid4(), "123456", "393331234567")
    assert inbound_message_id(ORG, "wamid.A") == inbound_message_id(ORG, "wamid.A") != inbound_message_id(ORG, "wamid.B")
    assert outbound_message_id(ORG, "k") == outbound_message_id(ORG, "k") != inbound_message_id(ORG, "k")


def test_free_form_messages_only_within_24_hours_of_the_customers_last_message():
    check_window(NOW - timedelta(hours=23, minutes=59), NOW)
    for last in (None, NOW - timedelta(hours=24), NOW - timedelta(days=3)):
        with pytest.raises(OutsideCareWindow) as e:
            check_window(last, NOW)
        assert "crm_whatsapp_send_template" in e.value.message and e.value.field == "chat_id"


def test_template_parameters_are_checked_as_whatsapp_checks_them():
    assert variable_count("Ciao {{1}}, il {{2}} alle {{ 3 }}. {{1}}") == 3 and variable_count(None) == 0
    assert check_parameters(["Mario", "lunedì"], 2) == ["Mario", "lunedì"]
    cases = [(["Mario"], 2, "parameters"), (["Mario", " "], 2, "parameters[1]"), (["a\nb"], 1, "parameters[0]"),
             (["a     b"], 1, "parameters[0]"), (["x" * 1025], 1, "parameters[0]")]
    for values, count, field in cases:
        with pytest.raises(DomainError) as e:
            check_parameters(values, count)
        assert e.value.field == field
    assert fill_body("Ciao {{1}}, il {{2}}", ["Mario", "lunedì"]) == "Ciao Mario, il lunedì"


def test_webhook_items_become_storable_values_of_every_kind():
    received = NOW
    text = parse_message({"from": "393331234567", "id": "wamid.T", "timestamp": "1772445600", "type": "text",
                          "text": {"body": "ciao\x00 \ud800"}}, received)
    assert text["kind"] == "text" and text["text"] == "ciao\ufffd \ufffd" and text["at"] <= received
    future = parse_message({"from": "393331234567", "id": "wamid.F", "timestamp": "99999999999", "type": "text",
                            "text": {"body": "x"}}, received)
    assert future["at"] == received  # never later than it arrived, never out of range
    image = parse_message({"from": "393331234567", "id": "wamid.I", "timestamp": "1", "type": "image",
                           "image": {"id": "555", "mime_type": "image/jpeg", "caption": "foto"}}, received)
    assert image["details"]["media"] == {"media_id": "555", "mime_type": "image/jpeg"} and image["text"] == "foto"
    place = parse_message({"from": "393331234567", "id": "wamid.L", "type": "location",
                           "location": {"latitude": 45.46, "longitude": "nan", "name": "Duomo"}}, received)
    assert place["details"]["location"] == {"latitude": 45.46, "name": "Duomo"}
    reaction = parse_message({"from": "393331234567", "id": "wamid.R", "type": "reaction",
                              "reaction": {"message_id": "wamid.T", "emoji": "👍"}}, received)
    assert reaction["details"]["reaction"] == {"emoji": "👍", "whatsapp_message_id": "wamid.T"}
    odd = parse_message({"from": "393331234567", "id": "wamid.U", "type": "never_heard_of"}, received)
    assert odd["kind"] == "unsupported"
    assert parse_message({"from": "not digits", "id": "wamid.X", "type": "text"}, received) is None
    failed = parse_status({"id": "wamid.S", "status": "failed", "timestamp": "1", "biz_opaque_callback_data": "abc",
                           "errors": [{"code": 131047, "title": "Re-engagement message"}]}, received)
    assert failed["error_code"] == 131047 and failed["callback"] == "abc"
    assert parse_status({"id": "wamid.S", "status": "deleted"}, received) is None


def test_statuses_out_of_order_show_the_furthest_one():
    message = WhatsappMessage.outbound(uuid4(), ORG, uuid4(), "text", "ciao", {}, NOW, None)
    assert message.status == "sending"
    message.accept("wamid.1")
    assert message.status == "accepted"
    assert message.report("read", NOW) and message.status == "read"
    assert message.report("delivered", NOW) and message.status == "read"
    assert message.report("sent", NOW) and message.status == "read"
    assert not message.report("read", NOW)  # a repeated status changes nothing
    assert display_status("out", {"sent": NOW, "failed": NOW}, accepted=True, failed=False, interrupted=False) == "failed"
    assert display_status("out", {"delivered": NOW, "failed": NOW}, accepted=True, failed=False,
                          interrupted=False) == "delivered"
    assert display_status("in", {}, accepted=False, failed=False, interrupted=False) == "received"


def test_a_send_interrupted_mid_call_is_never_retried_but_a_rate_limited_one_is():
    message = WhatsappMessage.outbound(uuid4(), ORG, uuid4(), "text", "ciao", {}, NOW, None)
    message.interrupt()
    assert message.status == "interrupted"
    with pytest.raises(DomainError):
        message.retry()
    message.report("sent", NOW, "wamid.9")  # WhatsApp later says what happened
    assert message.status == "sent" and message.wamid == "wamid.9"
    limited = WhatsappMessage.outbound(uuid4(), ORG, uuid4(), "text", "ciao", {}, NOW, None)
    limited.fail(130429, "Rate limit hit", retryable=True)
    assert limited.status == "failed"
    limited.retry()
    limited.accept("wamid.10")
    assert limited.status == "accepted"


def test_chats_keep_a_manual_link_and_archive_once():
    chat = Chat.open(ORG, "123456", "393331234567", contact_name="Mario")
    client = uuid4()
    chat.link_client(client, automatic=True)
    assert chat.client_link == "automatic"
    chat.link_client(None)
    assert chat.client_id is None and chat.client_link == "manual"  # a person decided: matching leaves it alone
    chat.archive()
    with pytest.raises(DomainError):
        chat.archive()
    chat.unarchive()
    assert not chat.archived


def test_the_access_list_grants_once_and_revokes_only_what_was_granted():
    access = WhatsappAccess.start(ORG)
    user, chat = uuid4(), uuid4()
    assert access.grant(user, chat=chat) and not access.grant(user, chat=chat)
    assert access.grant(user, phone_number_id="123456")
    with pytest.raises(DomainError):
        access.grant(user)
    access.revoke(user, chat=chat)
    with pytest.raises(DomainError) as e:
        access.revoke(user, chat=chat)
    assert e.value.code == "not_found"


def test_signatures_and_deliveries():
    body = delivery("123456", messages=[text_message("393331234567", "wamid.A", "ciao")])
    assert inbox.signature_ok("secret", body, signed(body, "secret"))
    assert not inbox.signature_ok("secret", body, signed(body, "other"))
    assert not inbox.signature_ok("secret", body + b" ", signed(body, "secret"))
    assert not inbox.signature_ok("secret", body, None) and not inbox.signature_ok("secret", body, "md5=abc")
    items, foreign = inbox.items_of(body, "123456")
    assert [(k, kind) for k, kind, _, _ in items] == [("m:wamid.A", "message")] and foreign == 0
    items, foreign = inbox.items_of(body, "999999")
    assert items == [] and foreign == 1  # another business number's delivery is not ours
    both = delivery("123456", statuses=[status("wamid.B", "read", "393331234567")])
    assert [k for k, *_ in inbox.items_of(both, "123456")[0]] == ["s:wamid.B:read"]
    for bad in (b"not json", b"[]", b'{"entry": 3}'):
        with pytest.raises(inbox.BadDelivery):
            inbox.items_of(bad, "123456")


def test_cloud_api_errors_in_our_words():
    reengage = cloud.error_from(400, {"error": {"code": 131047, "message": "Re-engagement message"}}, {})
    assert "crm_whatsapp_send_template" in reengage.message and not reengage.retryable
    limited = cloud.error_from(429, {"error": {"code": 130429, "message": "(#130429) Rate limit hit"}},
                               {"retry-after": "30"})
    assert limited.retryable and limited.retry_after == 30 and "30 s" in limited.message
    pair = cloud.error_from(400, {"error": {"code": 131056, "message": "pair rate limit"}}, {})
    assert pair.retryable
    token = cloud.error_from(401, {"error": {"code": 190, "message": "expired"}}, {})
    assert "access_token" in token.message and not token.retryable
    assert cloud.error_from(503, None, {}).retryable
