"""Newsletter campaigns over real SMTP (aiosmtpd on loopback) with sender domains checked against a real DNS server
(dnslib on loopback), on PostgreSQL through the real tool runner; the background sender runs in-process.

Given a verified domain, lists and subscribers, when a campaign is sent, then each allowed recipient gets exactly
one DKIM-signed message with a personal unsubscribe link and RFC 8058 headers; blacklisted, unsubscribed and
bounced addresses get nothing; quota and unverified domains refuse up front; a stop in the middle of 1,000
recipients and a restart send each exactly once."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from application.newsletter_sending import NewsletterSender
from tests.inprocess import Caller
from tests.newsletter_peers import dkim_verify, dns_peer, mail_env, smtp_peer, verified_domain  # noqa: F401

HTML = ('<html><body><p>Ciao {{subscriber.first_name}} of {{client.business_name}}!</p>'
        '<p><a href="https://shop.example/offer">Offer</a> <a href="https://shop.example/blog">Blog</a></p></body></html>')


@pytest.fixture
def world(fresh_database_url, mail_env):
    from interfaces.runtime import Runtime

    rt = Runtime(fresh_database_url, pool_size=6, consistency="settle")
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, "Shop", "admin@shop.example", "Admin")
        principal = identity.principal_for_token(conn, created.token)
    senders: list[NewsletterSender] = []

    def sender() -> NewsletterSender:
        s = NewsletterSender(rt.store, fresh_database_url, poll=0.05, connections=3)
        senders.append(s)
        return s

    yield {"rt": rt, "call": Caller(rt, principal), "url": fresh_database_url, "org": created.organization_id,
           "sender": sender, "stop_senders": lambda: [s.stop() for s in senders]}
    for s in senders:
        s.stop()
    rt.close()


def campaign_with(call, emails: list[str], **extra) -> tuple[dict, dict]:
    mailing_list = call("crm_newsletter_create_list", {"name": "Clienti"})
    for i in range(0, len(emails), 1000):
        call("crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "consent_source": "form",
                                                "subscribers": [{"email": e, "first_name": "Mario"} for e in emails[i:i + 1000]]})
    campaign = call("crm_newsletter_create_campaign", {
        "name": "March", "subject": "Offers for {{subscriber.first_name}}", "from_name": "Shop",
        "from_email": "news@shop.example", "html_body": HTML, "text_body": "Hi {{subscriber.first_name}}",
        "list_ids": [mailing_list["id"]], **extra})
    return mailing_list, campaign


def wait_status(world, campaign_id: str, status: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        world["rt"].settle()
        found = world["call"]("crm_newsletter_get_campaign", {"campaign_id": campaign_id})
        if found["status"] == status:
            return found
        time.sleep(0.05)
    raise AssertionError(f"campaign did not become {status}: {found['status']} {found.get('deliveries')}")


def test_domain_verification_names_the_missing_or_wrong_record(world, dns_peer):
    call = world["call"]
    added = call("crm_newsletter_add_domain", {"domain": "Shop.Example"})
    assert added["domain"] == "shop.example" and not added["verified"]
    by_purpose = {r["purpose"]: r for r in added["records"]}
    assert by_purpose["SPF"]["value"] == "v=spf1 ip4:127.0.0.1 ~all"
    assert by_purpose["DKIM"]["name"] == "flusia._domainkey.shop.example" and "p=MII" in by_purpose["DKIM"]["value"]
    assert by_purpose["DMARC"]["name"] == "_dmarc.shop.example"
    checked = call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    assert not checked["verified"] and [p.split(":")[0] for p in checked["problems"]] == ["SPF", "DKIM", "DMARC"]
    dns_peer.publish([by_purpose["SPF"], by_purpose["DMARC"]])
    dns_peer.txt["flusia._domainkey.shop.example"] = ["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiWRONGKEY"]
    checked = call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    assert checked["spf_ok"] and checked["dmarc_ok"] and not checked["dkim_ok"] and not checked["verified"]
    assert checked["problems"] == [
        "DKIM: the key published at flusia._domainkey.shop.example is not the one given by crm_newsletter_add_domain"]
    dns_peer.txt["flusia._domainkey.shop.example"] = [by_purpose["DKIM"]["value"]]
    dns_peer.txt["shop.example"].append("v=spf1 include:other.example ~all")
    checked = call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    assert not checked["spf_ok"] and "2 SPF records" in checked["problems"][0]
    dns_peer.txt["shop.example"].pop()
    checked = call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    assert checked["verified"] and "problems" not in checked and checked["verified_at"]
    assert call.error("crm_newsletter_add_domain", {"domain": "shop.example"}).field == "domain"
    assert call.error("crm_newsletter_add_domain", {"domain": "not a domain"}).field == "domain"
    with psycopg.connect(world["url"]) as conn:  # the private key is stored encrypted, never as PEM
        sealed = conn.execute("SELECT private_key FROM newsletter_domain_keys").fetchone()[0]
    assert b"PRIVATE KEY" not in bytes(sealed)


def test_a_campaign_reaches_each_allowed_recipient_once_signed_with_unsubscribe_headers(world, smtp_peer, dns_peer):
    call, inbox = world["call"], smtp_peer.inbox
    verified_domain(call, dns_peer)
    client = call("crm_clients_create_lead", {"business_name": "Rossi Srl", "email": "rossi@rossi.example",
                                              "contact_name": "Paola Rossi"})
    emails = ["anna@example.com", "bruno@example.com", "carla@blocked.example", "dario@example.com"]
    mailing_list, campaign = campaign_with(call, emails)
    added = call("crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "client_ids": [client["id"]],
                                                    "consent_source": "crm"})
    assert added["added"] == 1
    call("crm_newsletter_add_to_blacklist", {"value": "blocked.example"})
    call("crm_newsletter_add_to_blacklist", {"value": "dario@example.com"})
    again = call("crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "consent_source": "form",
                                                    "subscribers": [{"email": "eva@blocked.example"}, {"email": "ANNA@example.com"}]})
    assert again["added"] == 0 and {s["reason"] for s in again["skipped"]} == {"blacklisted", "already on the list (subscribed)"}
    # a test message first, to a given address
    tested = call("crm_newsletter_send_test", {"campaign_id": campaign["id"], "addresses": ["boss@shop.example"]})
    assert tested["sent_to"] == ["boss@shop.example"]
    assert inbox.parsed("boss@shop.example")[0]["Subject"] == "[TEST] Offers for"
    sender = world["sender"]()
    sender.start()
    sent = call("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    assert sent["status"] == "sending" and sent["recipients_count"] == 3
    done = wait_status(world, campaign["id"], "sent")
    assert done["deliveries"]["sent"] == 3
    assert inbox.recipients() == {"boss@shop.example": 1, "anna@example.com": 1, "bruno@example.com": 1,
                                  "rossi@rossi.example": 1}
    message = inbox.parsed("rossi@rossi.example")[0]
    assert message["Subject"] == "Offers for Paola" and message["From"] == "Shop <news@shop.example>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(r"<(http://127\.0\.0\.1:9/t/u/[0-9a-f]{32}\.[\w-]{22})>", message["List-Unsubscribe"])
    assert unsubscribe, message["List-Unsubscribe"]
    html = message.get_body(("html",)).get_content()
    assert "Ciao Paola of Rossi Srl!" in html and unsubscribe.group(1) in html
    assert "https://shop.example/offer" not in html and re.search(r"/t/c/[0-9a-f]{32}/0/[\w-]{22}", html)
    assert re.search(r'<img src="http://127\.0\.0\.1:9/t/o/[0-9a-f]{32}\.[\w-]{22}\.gif"', html)
    for recipient in ("anna@example.com", "rossi@rossi.example"):
        assert dkim_verify(inbox.raw(recipient), dns_peer), "the DKIM signature must verify with the published key"
    tampered = inbox.raw("anna@example.com").replace(b"Offers for Mario", b"Offers for Evil")
    assert not dkim_verify(tampered, dns_peer)
    other_tokens = {re.search(rb"/t/u/([0-9a-f]{32})", inbox.raw(r)).group(1) for r in ("anna@example.com", "bruno@example.com")}
    assert len(other_tokens) == 2, "every recipient gets a personal unsubscribe link"
    stats = call("crm_newsletter_campaign_stats", {"campaign_id": campaign["id"]})
    assert (stats["sent"], stats["delivered"], stats["bounced"], stats["pending"]) == (3, 3, 0, 0)
    quota = call("crm_newsletter_get_quota")
    assert quota["used"] == 4 and quota["remaining"] == quota["monthly_quota"] - 4
    assert call.error("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]}).code == "wrong_campaign_status"
    assert call.error("crm_newsletter_update_campaign", {"campaign_id": campaign["id"], "name": "x"}).code == "campaign_not_editable"


def test_quota_and_unverified_domain_refuse_up_front(world, smtp_peer, dns_peer):
    call = world["call"]
    mailing_list, campaign = campaign_with(call, [f"p{i}@example.com" for i in range(5)])
    error = call.error("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    assert error.field == "from_email" and "shop.example is not added" in error.message
    added = call("crm_newsletter_add_domain", {"domain": "shop.example"})
    error = call.error("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    assert "not verified" in error.message
    error = call.error("crm_newsletter_send_test", {"campaign_id": campaign["id"], "addresses": ["a@example.com"]})
    assert "not verified" in error.message
    dns_peer.publish(added["records"])
    call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    with psycopg.connect(world["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO newsletter_quotas (organization_id, monthly_quota) VALUES (%s, 3)", (world["org"],))
    error = call.error("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    assert error.message.startswith("this needs 5 messages but only 3 of the monthly quota of 3 remain (0 used")
    error = call.error("crm_newsletter_schedule_campaign", {"campaign_id": campaign["id"],
                                                            "scheduled_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    assert "monthly quota" in error.message
    assert call("crm_newsletter_get_campaign", {"campaign_id": campaign["id"]})["status"] == "draft"
    assert smtp_peer.inbox.messages == []
    with psycopg.connect(world["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_deliveries").fetchone()[0] == 0


def test_permanent_failures_bounce_and_transient_ones_are_retried(world, smtp_peer, dns_peer):
    call, inbox = world["call"], smtp_peer.inbox
    verified_domain(call, dns_peer)
    inbox.refuse["gone@example.com"] = 550
    inbox.transient["busy@example.com"] = 2
    mailing_list, campaign = campaign_with(call, ["ok@example.com", "gone@example.com", "busy@example.com"])
    world["sender"]().start()
    call("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    wait_status(world, campaign["id"], "sent")
    assert inbox.recipients() == {"ok@example.com": 1, "busy@example.com": 1}
    stats = call("crm_newsletter_campaign_stats", {"campaign_id": campaign["id"]})
    assert (stats["sent"], stats["delivered"], stats["bounced"], stats["failed"]) == (3, 2, 1, 0)
    world["rt"].settle()
    statuses = {s["email"]: s["status"] for s in call("crm_newsletter_list_subscribers", {"list_id": mailing_list["id"]})["items"]}
    assert statuses == {"ok@example.com": "subscribed", "gone@example.com": "bounced", "busy@example.com": "subscribed"}
    with psycopg.connect(world["url"]) as conn:
        attempts = conn.execute("SELECT attempts FROM campaign_deliveries WHERE email = 'busy@example.com'").fetchone()[0]
    assert attempts == 3
    # the bounced address is left out of the next campaign
    again = call("crm_newsletter_create_campaign", {"name": "April", "subject": "S", "from_name": "Shop",
                                                    "from_email": "news@shop.example", "text_body": "t",
                                                    "list_ids": [mailing_list["id"]]})
    assert call("crm_newsletter_send_campaign", {"campaign_id": again["id"]})["recipients_count"] == 2
    counts = call("crm_newsletter_get_list", {"list_id": mailing_list["id"]})
    assert (counts["subscribed_count"], counts["bounced_count"], counts["unsubscribed_count"]) == (2, 1, 0)
    call("crm_newsletter_remove_subscriber", {"list_id": mailing_list["id"], "email": "gone@example.com"})
    counts = call("crm_newsletter_get_list", {"list_id": mailing_list["id"]})
    assert (counts["subscribed_count"], counts["bounced_count"]) == (2, 0)


def test_a_stop_in_the_middle_of_1000_recipients_and_a_restart_send_each_exactly_once(world, smtp_peer, dns_peer):
    call, inbox = world["call"], smtp_peer.inbox
    verified_domain(call, dns_peer)
    emails = [f"r{i:04d}@example.com" for i in range(1000)]
    mailing_list, campaign = campaign_with(call, emails)
    call("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    first = world["sender"]()
    first.start()
    inbox.wait_for(300)
    first.stop()
    stopped_at = len(inbox.messages)
    assert stopped_at < 1000, "the stop must land in the middle of the send"
    with psycopg.connect(world["url"]) as conn:
        states = dict(conn.execute("SELECT status, count(*) FROM campaign_deliveries GROUP BY status").fetchall())
    assert states.get("sending", 0) == 0 and states["sent"] == stopped_at
    world["sender"]().start()
    wait_status(world, campaign["id"], "sent")
    received = inbox.recipients()
    assert set(received) == set(emails) and set(received.values()) == {1}


def test_schedule_in_the_organization_time_zone_then_cancel(world, smtp_peer, dns_peer):
    call = world["call"]
    verified_domain(call, dns_peer)
    mailing_list, campaign = campaign_with(call, ["a@example.com", "b@example.com"])
    error = call.error("crm_newsletter_schedule_campaign", {"campaign_id": campaign["id"], "scheduled_at": "2020-01-01T09:00:00"})
    assert error.field == "scheduled_at"
    scheduled = call("crm_newsletter_schedule_campaign", {"campaign_id": campaign["id"], "scheduled_at": "2099-03-01T09:00:00"})
    assert scheduled["status"] == "scheduled"
    assert scheduled["scheduled_at"] == "2099-03-01T08:00:00Z"  # Europe/Rome, the organization's zone: UTC+1 in March
    cancelled = call("crm_newsletter_cancel_campaign", {"campaign_id": campaign["id"]})
    assert cancelled["status"] == "cancelled"
    assert call.error("crm_newsletter_cancel_campaign", {"campaign_id": campaign["id"]}).code == "wrong_campaign_status"
    # a campaign due now is started by the sender; cancelling while it sends leaves the rest unsent
    other = call("crm_newsletter_create_campaign", {"name": "Soon", "subject": "S", "from_name": "Shop",
                                                    "from_email": "news@shop.example", "text_body": "t",
                                                    "list_ids": [mailing_list["id"]]})
    call("crm_newsletter_schedule_campaign", {"campaign_id": other["id"],
                                              "scheduled_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()})
    world["sender"]().start()
    wait_status(world, other["id"], "sent")
    assert smtp_peer.inbox.recipients() == {"a@example.com": 1, "b@example.com": 1}
    third = call("crm_newsletter_create_campaign", {"name": "Stopped", "subject": "S", "from_name": "Shop",
                                                    "from_email": "news@shop.example", "text_body": "t",
                                                    "list_ids": [mailing_list["id"]]})
    world["stop_senders"]()  # no sender: the send stays queued
    call("crm_newsletter_send_campaign", {"campaign_id": third["id"]})
    assert call("crm_newsletter_cancel_campaign", {"campaign_id": third["id"]})["deliveries"]["cancelled"] == 2
    world["sender"]().start()
    time.sleep(0.3)
    assert sum(smtp_peer.inbox.recipients().values()) == 2
    assert call("crm_newsletter_delete_campaign", {"campaign_id": third["id"]})["id"] == third["id"]
    assert call.error("crm_newsletter_delete_campaign", {"campaign_id": other["id"]}).code == "wrong_campaign_status"


def test_placeholders_are_checked_when_a_campaign_is_saved(world):
    call = world["call"]
    base = {"name": "N", "subject": "Hi", "from_name": "Shop", "from_email": "news@shop.example", "text_body": "t"}
    error = call.error("crm_newsletter_create_campaign", {**base, "html_body": "<p>{{ subscriber.nickname }}</p>"})
    assert error.field == "html_body" and "{{ subscriber.nickname }}" in error.message and "{{subscriber.first_name}}" in error.message
    campaign = call("crm_newsletter_create_campaign", {**base, "html_body": "<p>{{ subscriber.first_name }}</p>"})
    error = call.error("crm_newsletter_update_campaign", {"campaign_id": campaign["id"], "text_body": "{{client.vat}}"})
    assert error.field == "text_body"
    assert call.error("crm_newsletter_create_campaign", {**base, "text_body": None}).field == "html_body"
    assert call.error("crm_newsletter_create_campaign", {**base, "list_ids": [str(UUID(int=5))]}).code == "not_found"
