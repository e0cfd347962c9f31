"""The sender opens each message's SMTP envelope (MAIL FROM, RCPT TO) while it records the delivery `sending`, and
sends the message itself (DATA) only once that is committed: a message never reaches the server while its row could
still be claimed, queued or cancelled (a restart would send it again, or a cancelled one would go out)."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from tests.integration.test_newsletter_sending import campaign_with, wait_status, world  # noqa: F401
from tests.newsletter_peers import dns_peer, mail_env, smtp_peer, verified_domain  # noqa: F401


def test_a_message_goes_only_once_its_delivery_is_recorded_sending(world, smtp_peer, dns_peer):
    call, inbox = world["call"], smtp_peer.inbox
    verified_domain(call, dns_peer)
    emails = [f"p{i:03d}@example.com" for i in range(200)]
    _, campaign = campaign_with(call, emails)
    seen: list[str] = []
    original = inbox.handle_DATA
    with psycopg.connect(world["url"], autocommit=True) as check:
        async def handle_DATA(server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            seen.append(check.execute("SELECT status FROM campaign_deliveries WHERE email = %s",
                                      (envelope.rcpt_tos[0],)).fetchone()[0])
            return await original(server, session, envelope)

        inbox.handle_DATA = handle_DATA
        call("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
        world["sender"]().start()
        wait_status(world, campaign["id"], "sent")
    assert len(seen) == 200 and set(seen) == {"sending"}
    assert set(inbox.recipients().values()) == {1} and set(inbox.recipients()) == set(emails)


def test_a_delivery_cancelled_while_its_envelope_is_open_gets_no_message(world, smtp_peer, dns_peer):
    call, inbox = world["call"], smtp_peer.inbox
    verified_domain(call, dns_peer)
    emails = [f"c{i:03d}@example.com" for i in range(200)]
    late = set(emails[::4])
    _, campaign = campaign_with(call, emails)
    cancelled: set[str] = set()
    original = inbox.handle_RCPT
    with psycopg.connect(world["url"], autocommit=True) as side:
        async def handle_RCPT(server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd's hook
            if address in late:  # cancelled meanwhile, unless its row is `sending` already
                if side.execute("UPDATE campaign_deliveries SET status = 'cancelled' WHERE email = %s"
                                " AND status = 'claimed'", (address,)).rowcount:
                    cancelled.add(address)
            return await original(server, session, envelope, address, rcpt_options)

        inbox.handle_RCPT = handle_RCPT
        call("crm_newsletter_send_campaign", {"campaign_id": campaign["id"]})
        world["sender"]().start()
        wait_status(world, campaign["id"], "sent")
    received = inbox.recipients()
    with psycopg.connect(world["url"], row_factory=dict_row) as conn:
        status = {r["email"]: r["status"] for r in conn.execute("SELECT email, status FROM campaign_deliveries")}
    for email in emails:
        if email in cancelled:
            assert email not in received and status[email] == "cancelled", email
        else:
            assert received[email] == 1 and status[email] == "sent", email
    # the envelopes dropped (RSET) leave the connection usable: every other message went out on it
    assert sum(received.values()) == len(emails) - len(cancelled)
