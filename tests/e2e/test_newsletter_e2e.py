"""The newsletter and QR codes as an assistant uses them, through the real server (`flusia serve`) and the `mcp` SDK
client, with an SMTP server (aiosmtpd) and a DNS server (dnslib) on loopback, and real HTTP requests to the
tracking, unsubscribe and `/q/` endpoints the messages and codes point at."""

from __future__ import annotations

import base64
from datetime import date, timedelta
import re
import signal
import subprocess
import time

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from application import identity
from tests.conftest import start_server
from tests.mcp_helpers import call, call_error, mcp_client
from tests.newsletter_peers import dkim_verify, dns_peer, smtp_peer  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def stop(srv, sig=signal.SIGTERM) -> None:
    srv.process.send_signal(sig)
    try:
        srv.process.wait(30)
    except subprocess.TimeoutExpired:
        srv.process.kill()
        srv.process.wait(10)


@pytest.fixture
def mail_server(fresh_database_url, smtp_peer, dns_peer):
    env = {"FLUSIA_SMTP_URL": smtp_peer.url, "FLUSIA_DNS_SERVER": dns_peer.address, "FLUSIA_SMTP_RETRY_SECONDS": "0.05"}
    srv = start_server(fresh_database_url, env)
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        org = identity.create_organization(conn, "Shop", "admin@shop.example", "Admin")
    yield {"server": srv, "token": org.token, "env": env, "url": fresh_database_url}
    stop(srv)


async def wait_sent(client, campaign_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await call(client, "crm_newsletter_get_campaign", {"campaign_id": campaign_id})
        if found["status"] == "sent":
            return found
        time.sleep(0.1)
    raise AssertionError(found)


async def test_campaign_tracking_unsubscribe_and_qr_codes_end_to_end(mail_server, smtp_peer, dns_peer):
    srv, inbox = mail_server["server"], smtp_peer.inbox
    base = srv.base_url
    async with mcp_client(srv.mcp_url, mail_server["token"]) as client:
        domain = await call(client, "crm_newsletter_add_domain", {"domain": "shop.example"})
        dns_peer.publish(domain["records"])
        assert (await call(client, "crm_newsletter_verify_domain", {"domain_id": domain["id"]}))["verified"]
        mailing_list = await call(client, "crm_newsletter_create_list", {"name": "Customers"})
        await call(client, "crm_newsletter_add_subscribers", {
            "list_id": mailing_list["id"], "consent_source": "form",
            "subscribers": [{"email": "anna@example.com", "first_name": "Anna"}, {"email": "bob@example.com"}]})
        campaign = await call(client, "crm_newsletter_create_campaign", {
            "name": "Spring", "subject": "Hello {{subscriber.first_name}}", "from_name": "Shop",
            "from_email": "news@shop.example", "list_ids": [mailing_list["id"]],
            "html_body": '<p>Hi</p><a href="https://shop.example/spring">Spring sale</a>'})
        assert (await call(client, "crm_newsletter_send_campaign", {"campaign_id": campaign["id"]}))["status"] == "sending"
        await wait_sent(client, campaign["id"])
        assert inbox.recipients() == {"anna@example.com": 1, "bob@example.com": 1}
        raw = inbox.raw("anna@example.com")
        assert dkim_verify(raw, dns_peer)
        html = inbox.parsed("anna@example.com")[0].get_body(("html",)).get_content()
        pixel = re.search(r'<img src="([^"]+)"', html).group(1)
        click = re.search(r'href="([^"]*/t/c/[^"]+)"', html).group(1)
        unsubscribe = re.search(r"<([^>]+)>", inbox.parsed("anna@example.com")[0]["List-Unsubscribe"]).group(1)
        assert pixel.startswith(base) and click.startswith(base) and unsubscribe.startswith(base)

        opened = httpx.get(pixel)
        assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
        httpx.get(pixel)
        followed = httpx.get(click)
        assert followed.status_code == 302 and followed.headers["location"] == "https://shop.example/spring"
        # no open redirect: another index, a changed signature or an appended target lead nowhere
        delivery, index, sig = click.rsplit("/", 3)[1:]
        for bad in (f"{base}/t/c/{delivery}/1/{sig}", f"{base}/t/c/{delivery}/0/{sig[:-1]}A",
                    f"{base}/t/c/{delivery}/0/{sig}?url=https://evil.example", f"{base}/t/c/{'0' * 32}/0/{sig}"):
            r = httpx.get(bad)
            assert r.status_code in (302, 404), bad
            assert r.status_code == 404 or r.headers["location"] == "https://shop.example/spring"
        assert httpx.get(pixel.replace(".gif", "x.gif")).status_code == 200  # a bad pixel still answers a GIF

        page = httpx.get(unsubscribe)
        assert page.status_code == 200 and "anna@example.com" in page.text and 'method="post"' in page.text
        await call(client, "crm_newsletter_list_subscribers", {"list_id": mailing_list["id"]})
        listed = await call(client, "crm_newsletter_list_subscribers", {"list_id": mailing_list["id"], "status": "unsubscribed"})
        assert listed["items"] == [], "a GET (link scanners) never unsubscribes"
        one_click = httpx.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200
        assert httpx.post(unsubscribe[:-3] + "AAA", data={"List-Unsubscribe": "One-Click"}).status_code == 404
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = await call(client, "crm_newsletter_campaign_stats", {"campaign_id": campaign["id"]})
            if stats["unsubscribes"] and stats["unique_clicks"] and stats["unique_opens"]:
                break
            time.sleep(0.1)
        # two clicks (the valid link, and the same link with a query the redirect ignores), one clicker
        assert (stats["delivered"], stats["opens"], stats["unique_opens"], stats["clicks"], stats["unique_clicks"],
                stats["unsubscribes"]) == (2, 2, 1, 2, 1, 1)
        assert stats["rates_percent"]["open"] == 50.0 and stats["rates_percent"]["unsubscribe"] == 50.0
        listed = await call(client, "crm_newsletter_list_subscribers", {"list_id": mailing_list["id"], "status": "unsubscribed"})
        assert [s["email"] for s in listed["items"]] == ["anna@example.com"]
        today = date.today()
        period = {"start_date": (today - timedelta(days=2)).isoformat(), "end_date": (today + timedelta(days=2)).isoformat()}
        performance = await call(client, "crm_stats_newsletter_performance", period)
        assert performance["available"] is True and performance["delivered"] == 2
        assert performance["open_rate"]["percent"] == 50.0 and performance["campaigns"][0]["unsubscribes"] == 1

        # QR codes: a tracked link that redirects, counts scans and stops when deactivated
        assert (await call_error(client, "crm_qr_codes_create", {"target_url": "javascript:alert(1)"}))["field"] == "target_url"
        qr = await call(client, "crm_qr_codes_create", {"target_url": "https://shop.example/menu", "label": "Table",
                                                        "campaign_id": campaign["id"]})
        assert qr["tracking_url"] == f"{base}/q/{qr['code']}"
        image = await client.call_tool("crm_qr_codes_get_image", {"qr_code_id": qr["id"], "format": "png", "size": 4})
        images = [c for c in image.content if c.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        png = base64.b64decode(images[0].data)
        assert png.startswith(b"\x89PNG") and png == base64.b64decode(image.structured_content["image"]["data_base64"])
        download = httpx.get(image.structured_content["download_url"])
        assert download.status_code == 200 and download.content == png
        assert httpx.get(image.structured_content["download_url"].replace("size=4", "size=5")).status_code == 403
        phone = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
                 "CF-IPCountry": "IT"}
        scanned = httpx.get(qr["tracking_url"], headers=phone)
        assert scanned.status_code == 302 and scanned.headers["location"] == "https://shop.example/menu"
        httpx.get(qr["tracking_url"], headers={"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"})
        assert httpx.get(f"{base}/q/ZZZZZZZZZZ").status_code == 404
        await call(client, "crm_qr_codes_deactivate", {"qr_code_id": qr["id"]})
        gone = httpx.get(qr["tracking_url"])
        assert gone.status_code == 410 and "deactivated" in gone.text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            qr_stats = await call(client, "crm_qr_codes_stats", {"qr_code_id": qr["id"]})
            if qr_stats["total_scans"] == 2:
                break
            time.sleep(0.1)
        assert qr_stats["period_scans"] == 2 and qr_stats["period_unique_scanners"] == 2
        assert {d["name"]: d["scans"] for d in qr_stats["devices"]} == {"mobile": 1, "desktop": 1}
        assert qr_stats["countries"] == [{"name": "IT", "scans": 1}]
        scans = await call(client, "crm_qr_codes_list_scans", {"qr_code_id": qr["id"]})
        assert sorted(s["device"] for s in scans["items"]) == ["desktop", "mobile"]
        assert all("ip" not in key for s in scans["items"] for key in s)
    with psycopg.connect(mail_server["url"]) as conn:  # no address is stored with a scan
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'qr_scans'").fetchall()]
    assert not any("ip" in c or "address" in c for c in columns)


async def test_a_server_stopped_in_the_middle_of_a_send_and_restarted_sends_each_recipient_once(
        mail_server, smtp_peer, dns_peer):
    srv, inbox = mail_server["server"], smtp_peer.inbox
    inbox.delay = 0.002  # a slower mail server, so the stop lands in the middle
    emails = [f"r{i:04d}@example.com" for i in range(1000)]
    async with mcp_client(srv.mcp_url, mail_server["token"]) as client:
        domain = await call(client, "crm_newsletter_add_domain", {"domain": "shop.example"})
        dns_peer.publish(domain["records"])
        await call(client, "crm_newsletter_verify_domain", {"domain_id": domain["id"]})
        mailing_list = await call(client, "crm_newsletter_create_list", {"name": "All"})
        await call(client, "crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "consent_source": "import",
                                                              "subscribers": [{"email": e} for e in emails]})
        campaign = await call(client, "crm_newsletter_create_campaign", {
            "name": "Big", "subject": "News", "from_name": "Shop", "from_email": "news@shop.example",
            "text_body": "Hello {{subscriber.email}}", "list_ids": [mailing_list["id"]]})
        await call(client, "crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
    inbox.wait_for(200)
    stop(srv)  # SIGTERM: the server shuts down, the sender finishes what it has in flight
    assert 200 <= len(inbox.messages) < 1000
    restarted = start_server(mail_server["url"], mail_server["env"])
    try:
        async with mcp_client(restarted.mcp_url, mail_server["token"]) as client:
            done = await wait_sent(client, campaign["id"])
        assert done["deliveries"]["sent"] == 1000
        received = inbox.recipients()
        assert set(received) == set(emails) and set(received.values()) == {1}
    finally:
        stop(restarted)
