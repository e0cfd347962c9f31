"""Domain rules of newsletters and QR codes, without a database: given events, when a command, then events or an
error. Also the pure parts of sending: DNS record checks, DKIM signing (verified by dkimpy), signed tracking ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.errors import DomainError, NotFound
from domain.newsletter import (Campaign, MailingList, WrongStatus, NotEditable, blacklist_value, campaign_links,
                               check_dns, dns_records, is_blacklisted, render)
from domain.qr_codes import AlreadyInState, QrCode, check_target, country_code, device_class

ORG = uuid4()
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def names(agg) -> list[str]:
    return [type(e).__qualname__ for e in agg.collect_events()]


def draft(**fields) -> Campaign:
    return Campaign.draft(ORG, {"name": "N", "subject": "Hi {{subscriber.first_name}}", "from_name": "Shop",
                                "from_email": "News@Shop.example", "text_body": "t", "list_ids": [uuid4()], **fields},
                          None)


# -- lists --------------------------------------------------------------------------------------------------------
def test_subscribers_are_added_once_and_never_resubscribed():
    lst = MailingList(org_id=ORG, name="L", description=None, created_by=None)
    added, skipped = lst.add_subscribers([{"email": "A@Example.com"}, {"email": "a@example.com"}, {"email": "b@example.com"}],
                                         consent_source="form", consent_at=NOW)
    assert [a["email"] for a in added] == ["a@example.com", "b@example.com"] and skipped == []
    assert added[0]["consent_source"] == "form" and added[0]["consent_at"] == NOW.isoformat()
    assert lst.change_status("a@example.com", "unsubscribed", campaign_id=uuid4())
    assert not lst.change_status("a@example.com", "unsubscribed")
    added, skipped = lst.add_subscribers([{"email": "a@example.com"}], consent_source="import", consent_at=NOW)
    assert added == [] and skipped == [{"email": "a@example.com", "reason": "already on the list (unsubscribed)"}]
    assert lst.change_status("b@example.com", "bounced")
    assert not lst.change_status("b@example.com", "unsubscribed"), "a bounced address stays bounced"
    assert names(lst) == ["MailingList.Created", "MailingList.SubscribersAdded", "MailingList.SubscriberStatusChanged",
                          "MailingList.SubscriberStatusChanged"]
    with pytest.raises(NotFound):
        lst.remove_subscriber("nobody@example.com")
    with pytest.raises(DomainError) as e:
        lst.add_subscribers([{"email": "not-an-address"}], consent_source="form", consent_at=NOW)
    assert e.value.field == "emails"
    with pytest.raises(DomainError) as e:
        lst.add_subscribers([{"email": "c@example.com"}], consent_source="telepathy", consent_at=NOW)
    assert e.value.field == "consent_source"


# -- campaigns -----------------------------------------------------------------------------------------------------
def test_placeholders_are_checked_on_create_and_update():
    with pytest.raises(DomainError) as e:
        draft(html_body="<p>{{ subscriber.age }}</p>")
    assert e.value.field == "html_body" and "{{ subscriber.age }}" in e.value.message
    campaign = draft(html_body="<p>{{ subscriber.first_name }}</p>")
    assert campaign.from_email == "news@shop.example"
    with pytest.raises(DomainError) as e:
        campaign.update({"subject": "{{unsubscribe_url}}"})
    assert e.value.field == "subject"
    with pytest.raises(DomainError):
        campaign.update({"html_body": None, "text_body": None})
    with pytest.raises(DomainError):
        draft(text_body=None)


def test_campaign_lifecycle_draft_scheduled_sending_sent_or_cancelled():
    campaign = draft()
    with pytest.raises(DomainError) as e:
        campaign.schedule(NOW - timedelta(minutes=1), NOW)
    assert e.value.field == "scheduled_at"
    campaign.schedule(NOW + timedelta(days=1), NOW)
    with pytest.raises(NotEditable):
        campaign.update({"name": "x"})
    campaign.start_sending(10)
    with pytest.raises(WrongStatus):
        campaign.start_sending(10)
    with pytest.raises(WrongStatus):
        campaign.delete()
    campaign.finish(sent=9, failed=1)
    with pytest.raises(WrongStatus):
        campaign.cancel()
    assert names(campaign) == ["Campaign.Created", "Campaign.Scheduled", "Campaign.SendingStarted", "Campaign.Finished"]
    other = draft()
    other.start_sending(3)
    other.cancel(reason="stop")
    other.delete()
    assert names(other)[-2:] == ["Campaign.Cancelled", "Campaign.Deleted"]
    with pytest.raises(DomainError):
        draft(list_ids=[]).start_sending(1)


def test_links_rendering_and_blacklist_matching():
    html = '<a href="https://a.example/x">x</a><a href=\'http://b.example\'>b</a><a href="mailto:x@y.z">m</a>'
    assert campaign_links(html, "see https://c.example/p and https://a.example/x") == [
        "https://a.example/x", "http://b.example", "https://c.example/p"]
    assert render("<b>{{ subscriber.first_name }}</b>", {"subscriber.first_name": "<Ann>"},
                  escape=lambda v: v.replace("<", "&lt;").replace(">", "&gt;")) == "<b>&lt;Ann&gt;</b>"
    assert blacklist_value("@Spam.Example") == ("spam.example", "domain")
    assert blacklist_value(" Mario@Example.com ") == ("mario@example.com", "address")
    entries = {"spam.example", "mario@example.com"}
    assert is_blacklisted("x@spam.example", entries) and is_blacklisted("x@mail.spam.example", entries)
    assert is_blacklisted("mario@example.com", entries) and not is_blacklisted("anna@example.com", entries)
    assert not is_blacklisted("x@notspam.example", entries)


def test_dns_check_says_which_record_is_missing_or_wrong():
    records = dns_records("shop.example", "flusia", "PUBKEY", "ip4:127.0.0.1")
    published = {r["name"]: [r["value"]] for r in records}
    assert check_dns("shop.example", "flusia", "PUBKEY", "ip4:127.0.0.1", published).verified
    missing = check_dns("shop.example", "flusia", "PUBKEY", "ip4:127.0.0.1", {})
    assert not missing.verified and len(missing.problems) == 3 and "failed" in missing.problems[0]
    wrong = check_dns("shop.example", "flusia", "PUBKEY", "ip4:127.0.0.1",
                      {**published, "shop.example": ["v=spf1 mx -all"], "_dmarc.shop.example": ["v=DMARC1; p=maybe"]})
    assert (wrong.spf_ok, wrong.dkim_ok, wrong.dmarc_ok) == (False, True, False)
    assert wrong.problems[0].startswith("SPF: the record at shop.example does not include ip4:127.0.0.1")
    assert wrong.problems[1].startswith("DMARC: the record at _dmarc.shop.example has no valid policy")


# -- sending's pure parts --------------------------------------------------------------------------------------------
def test_dkim_signature_verifies_with_the_public_key_and_breaks_on_tampering():
    import dkim

    from application.newsletter_sending import dkim_sign, generate_dkim_key, load_private_key

    pem, public = generate_dkim_key()
    message = (b"From: Shop <news@shop.example>\r\nTo: a@example.com\r\nSubject:  Hello   there \r\n"
               b"Message-ID: <1@shop.example>\r\n\r\nBody line  with   spaces \r\n\r\n\r\n")
    signed = dkim_sign(message, domain="shop.example", selector="flusia", private_key=load_private_key(pem))
    record = f"v=DKIM1; k=rsa; p={public}".encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    assert not dkim.verify(signed.replace(b"Hello", b"Hallo"), dnsfunc=lambda name, timeout=5: record)
    assert not dkim.verify(signed.replace(b"Body line", b"Body lime"), dnsfunc=lambda name, timeout=5: record)


def test_tracking_ids_are_signed_and_bound_to_their_purpose():
    from application.newsletter_sending import check_token, click_signature, token

    secret, other = b"s" * 32, b"o" * 32
    delivery = uuid4()
    unsubscribe = token(secret, "u", delivery)
    assert check_token(secret, "u", unsubscribe) == delivery
    assert check_token(other, "u", unsubscribe) is None
    assert check_token(secret, "o", unsubscribe) is None, "an unsubscribe id is not an open id"
    assert check_token(secret, "u", unsubscribe[:-1] + ("A" if unsubscribe[-1] != "A" else "B")) is None
    assert check_token(secret, "u", "junk") is None
    sig = click_signature(secret, delivery, 2)
    assert check_token(secret, "c", f"{delivery.hex}.{sig}", 2) == delivery
    assert check_token(secret, "c", f"{delivery.hex}.{sig}", 3) is None, "a signature is for one link only"


# -- QR codes ----------------------------------------------------------------------------------------------------------
def test_qr_targets_are_http_urls_only_and_activation_toggles():
    for bad in ("javascript:alert(1)", "data:text/html,x", "file:///etc/passwd", "ftp://x.example", "/relative",
                "https://", "http://exa mple.com"):
        with pytest.raises(DomainError) as e:
            check_target(bad)
        assert e.value.field == "target_url"
    code = QrCode.generate(ORG, "abcdefghjk", {"target_url": " https://shop.example/a "}, None)
    assert code.target_url == "https://shop.example/a"
    with pytest.raises(DomainError):
        code.update({"target_url": "mailto:x@y.z"})
    code.deactivate()
    with pytest.raises(AlreadyInState):
        code.deactivate()
    code.activate()
    assert names(code) == ["QrCode.Created", "QrCode.Deactivated", "QrCode.Activated"]


def test_device_class_and_country_from_headers():
    assert device_class("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148") == "mobile"
    assert device_class("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 Safari/537.36") == "tablet"
    assert device_class("Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile Safari/537.36") == "mobile"
    assert device_class("Mozilla/5.0 (Windows NT 10.0; Win64; x64)") == "desktop"
    assert device_class("Googlebot/2.1") == "bot" and device_class(None) == "other"
    assert country_code("it") == "IT" and country_code("XX") is None and country_code("Italy") is None
