"""Two organizations: every newsletter and QR tool called by A with B's ids finds nothing and changes nothing, and
a tracking id (open, click, unsubscribe) of one organization never affects the other, even for the same address."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import psycopg
import pytest

from application import attachments
from application import newsletter_sending as sending
from application.errors import ToolError
from application.inventory import registry
from interfaces import tracking
from tests.inprocess import Caller
from tests.tool_args import sample_args


def seed(call: Caller, secret_word: str) -> dict:
    mailing_list = call("crm_newsletter_create_list", {"name": f"{secret_word} list"})
    call("crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "consent_source": "form",
                                            "subscribers": [{"email": "same@example.com", "first_name": secret_word}]})
    campaign = call("crm_newsletter_create_campaign", {
        "name": f"{secret_word} campaign", "subject": secret_word, "from_name": "Shop", "from_email": "n@shop.example",
        "html_body": f'<a href="https://{secret_word.lower()}.example/page">x</a>', "list_ids": [mailing_list["id"]]})
    domain = call("crm_newsletter_add_domain", {"domain": f"{secret_word.lower()}.example"})
    entry = call("crm_newsletter_add_to_blacklist", {"value": f"{secret_word.lower()}-blocked.example",
                                                     "reason": secret_word})
    qr = call("crm_qr_codes_create", {"target_url": f"https://{secret_word.lower()}.example/qr", "label": secret_word,
                                      "campaign_id": campaign["id"]})
    return {"list_id": mailing_list["id"], "campaign_id": campaign["id"], "domain_id": domain["id"],
            "entry_id": entry["id"], "qr_code_id": qr["id"], "newsletter.email": "same@example.com",
            "_code": qr["code"]}


def delivery(db, org_id, campaign_id: str) -> UUID:
    """A recorded delivery of the campaign to same@example.com, as the sender writes it."""
    delivery_id = uuid4()
    db.execute("INSERT INTO campaign_deliveries (id, organization_id, campaign_id, email, status, attempts)"
               " VALUES (%s, %s, %s, 'same@example.com', 'sent', 1)", (delivery_id, org_id, campaign_id))
    return delivery_id


def statuses(call: Caller, list_id: str) -> dict:
    return {s["email"]: s["status"] for s in call("crm_newsletter_list_subscribers", {"list_id": list_id})["items"]}


def test_another_organizations_ids_find_nothing_and_change_nothing(runtime, make_org, database_url):
    a, b = make_org("A"), make_org("B")
    call_a, call_b = Caller(runtime, a.principal(database_url)), Caller(runtime, b.principal(database_url))
    ids_b = seed(call_b, "Segretissimo")
    before = {k: call_b(f"crm_newsletter_get_{k}", {f"{k}_id": ids_b[f"{k}_id"]}) for k in ("list", "campaign")}
    for op in registry:
        if op.toolset not in ("newsletter", "qr_codes"):
            continue
        args = sample_args(op, ids_b)
        try:
            text = json.dumps(call_a(op.name, args))
        except ToolError as e:
            assert e.code in {"not_found", "invalid_arguments", "rule_violation", "conflict"}, (op.name, e.code, e.message)
            text = e.message
        leaked = [s for s in ("Segretissimo", "segretissimo", *(str(v) for k, v in ids_b.items() if k.endswith("_id")))
                  if s in text and s not in json.dumps(args)]
        assert not leaked, (op.name, leaked)
    runtime.settle()
    after = {k: call_b(f"crm_newsletter_get_{k}", {f"{k}_id": ids_b[f"{k}_id"]}) for k in ("list", "campaign")}
    assert after == before
    assert call_b("crm_qr_codes_get", {"qr_code_id": ids_b["qr_code_id"]})["active"] is True
    assert [d["id"] for d in call_b("crm_newsletter_list_domains")["items"]] == [ids_b["domain_id"]]
    assert call_b("crm_newsletter_list_blacklist")["items"][0]["id"] == ids_b["entry_id"]


def test_tracking_ids_of_one_organization_never_affect_another(runtime, make_org, database_url, db):
    a, b = make_org("A"), make_org("B")
    call_a, call_b = Caller(runtime, a.principal(database_url)), Caller(runtime, b.principal(database_url))
    ids_a, ids_b = seed(call_a, "Alpha"), seed(call_b, "Beta")
    delivery_a = delivery(db, a.organization_id, ids_a["campaign_id"])
    delivery_b = delivery(db, b.organization_id, ids_b["campaign_id"])
    secret = attachments.link_secret(db)

    tracking._open(runtime, sending.token(secret, "o", delivery_a))
    assert tracking._click(runtime, delivery_a.hex, 0, sending.click_signature(secret, delivery_a, 0)) == \
        "https://alpha.example/page"
    # A's signature does not open B's delivery, and A's delivery has no link of B's campaign
    assert tracking._click(runtime, delivery_b.hex, 0, sending.click_signature(secret, delivery_a, 0)) is None
    assert tracking._click(runtime, delivery_a.hex, 1, sending.click_signature(secret, delivery_a, 1)) is None
    assert tracking._unsubscribe(runtime, sending.token(secret, "u", delivery_a))["organization_id"] == a.organization_id
    forged = sending.token(secret, "u", delivery_a).replace(delivery_a.hex, delivery_b.hex)
    assert tracking._unsubscribe(runtime, forged) is None
    runtime.settle()
    assert statuses(call_a, ids_a["list_id"]) == {"same@example.com": "unsubscribed"}
    assert statuses(call_b, ids_b["list_id"]) == {"same@example.com": "subscribed"}
    stats_a = call_a("crm_newsletter_campaign_stats", {"campaign_id": ids_a["campaign_id"]})
    stats_b = call_b("crm_newsletter_campaign_stats", {"campaign_id": ids_b["campaign_id"]})
    assert (stats_a["unique_opens"], stats_a["unique_clicks"], stats_a["unsubscribes"]) == (1, 1, 1)
    assert (stats_b["opens"], stats_b["clicks"], stats_b["unsubscribes"]) == (0, 0, 0)
    # a scan of A's QR code counts for A only
    assert tracking._scan(runtime, ids_a["_code"], "Mozilla/5.0 (iPhone) Mobile", None, "127.0.0.1") == (
        302, "https://alpha.example/qr")
    runtime.settle()
    assert call_a("crm_qr_codes_get", {"qr_code_id": ids_a["qr_code_id"]})["scans_count"] == 1
    assert call_b("crm_qr_codes_get", {"qr_code_id": ids_b["qr_code_id"]})["scans_count"] == 0
    with pytest.raises(ToolError):
        call_a("crm_qr_codes_list_scans", {"qr_code_id": ids_b["qr_code_id"]})
