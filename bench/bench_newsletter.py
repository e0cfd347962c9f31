#!/usr/bin/env python
"""Newsletter sending benchmark (issue 14): a campaign to 10,000 recipients through the background sender, against
aiosmtplib sending the same messages directly to the same local SMTP server.

A local aiosmtpd server runs in a subprocess (so its CPU is not ours). On a fresh database, one organization with
a verified sender domain (DNS answered by a dnslib server on loopback) and a list of BENCH_RECIPIENTS (10,000)
subscribers sends a campaign with `crm_newsletter_send_campaign`; the sender (BENCH_CONNECTIONS = 4 SMTP
connections) records every delivery before and after its SMTP transaction, renders and DKIM-signs each message.
Timed: from the sender's start to the last delivery recorded as sent.

Baseline, measured in the same run: the same messages (personalized and signed beforehand) sent by aiosmtplib over
the same number of connections, nothing else. Baseline and sender run in turns (BENCH_ROUNDS = 3 rounds, each its
own ratio; the median is printed), since the load of a shared machine drifts between minutes; the CPU each phase
used per message (this process, the SMTP server) is printed too, a figure the load disturbs much less. A second figure shows aiosmtplib when building and signing each
message too (the work that cannot be avoided), without any bookkeeping. Prints messages per second and the ratio
(target: the sender at least 0.5x the direct baseline).

Usage (repository root, venv active): python bench/bench_newsletter.py
Environment: BENCH_ADMIN_URL, BENCH_RECIPIENTS (10000), BENCH_CONNECTIONS (4), BENCH_ROUNDS (3), BENCH_KEEP_DB=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
N = int(os.environ.get("BENCH_RECIPIENTS", "10000"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
RESULTS = ROOT / "bench" / "results"
SMTP_SERVER = """
import sys
from aiosmtpd.controller import Controller
class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 accepted"
controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"""
HTML = ("<html><body><p>Ciao {{subscriber.first_name}},</p><p>our spring offers are here: "
        '<a href="https://shop.example/spring">see them</a> or read <a href="https://shop.example/blog">the blog</a>.'
        "</p><p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "</p></body></html>")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process so far: this one, or the SMTP server's."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def send_direct(messages: list[tuple[str, str, bytes]], port: int) -> float:
    import aiosmtplib

    queue = list(messages)

    async def lane() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        while queue:
            sender, recipient, message = queue.pop()
            await client.sendmail(sender, [recipient], message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


async def build_and_send(content, recipients: list[dict], secret: bytes, port: int) -> float:
    import aiosmtplib

    from application.newsletter_sending import build_message

    queue = list(recipients)

    async def lane() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        while queue:
            r = queue.pop()
            message, _ = build_message(content, r, r["id"], secret)
            await client.sendmail(content.from_email, [r["email"]], message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


def main() -> None:
    from application import attachments, identity
    from application import newsletter_sending as sending
    from application.migrate import migrate
    from application.newsletter_sending import NewsletterSender
    from interfaces.database import create_database, drop_database
    from interfaces.runtime import Runtime
    from tests.inprocess import Caller
    from tests.newsletter_peers import DnsPeer

    port = free_port()
    smtp = subprocess.Popen([sys.executable, "-c", SMTP_SERVER, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert smtp.stdout.readline().strip() == "ready"
    dns = DnsPeer()
    dns.start()
    os.environ.update({"FLUSIA_SMTP_URL": f"smtp://127.0.0.1:{port}", "FLUSIA_DNS_SERVER": dns.address,
                       "FLUSIA_PUBLIC_URL": "https://crm.example"})
    name = f"flusia_bench_nl_{uuid.uuid4().hex[:6]}"
    url = create_database(ADMIN, name)
    rt = None
    try:
        migrate(url)
        rt = Runtime(url, pool_size=6, consistency="settle")
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org = identity.create_organization(conn, "Bench", "admin@bench.example", "Admin")
            conn.execute("INSERT INTO newsletter_quotas (organization_id, monthly_quota) VALUES (%s, 10000000)",
                         (org.organization_id,))
            call = Caller(rt, identity.principal_for_token(conn, org.token))
        domain = call("crm_newsletter_add_domain", {"domain": "shop.example"})
        dns.publish(domain["records"])
        assert call("crm_newsletter_verify_domain", {"domain_id": domain["id"]})["verified"]
        mailing_list = call("crm_newsletter_create_list", {"name": "Everyone"})
        print(f"seeding {N:,} subscribers...", file=sys.stderr)
        for i in range(0, N, 1000):
            call("crm_newsletter_add_subscribers", {"list_id": mailing_list["id"], "consent_source": "import",
                                                    "subscribers": [{"email": f"r{j:06d}@example.com", "first_name": f"Name{j}"}
                                                                    for j in range(i, min(i + 1000, N))]})
        campaign = call("crm_newsletter_create_campaign", {
            "name": "Spring", "subject": "Spring offers for {{subscriber.first_name}}", "from_name": "Shop",
            "from_email": "news@shop.example", "html_body": HTML, "text_body": "Ciao {{subscriber.first_name}}",
            "list_ids": [mailing_list["id"]]})

        # the same messages, built and signed beforehand, for the direct baseline
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            content = sending.load_content(conn, org.organization_id, rt.store.repository.get(uuid.UUID(campaign["id"])))
            secret = attachments.link_secret(conn)
        recipients = [{"id": uuid.uuid4(), "email": f"r{j:06d}@example.com", "first_name": f"Name{j}"} for j in range(N)]
        print("building the baseline's messages...", file=sys.stderr)
        prebuilt = [(content.from_email, r["email"], sending.build_message(content, r, r["id"], secret)[0])
                    for r in recipients]
        cpu: dict[str, tuple[float, float, int]] = {}  # phase -> summed ms per message here, in the server; runs

        def measured(name: str, run: Any) -> float:
            """Wall seconds of `run()`; its CPU per message here and in the SMTP server goes to `cpu`."""
            ours_before, server_before = cpu_seconds(), cpu_seconds(smtp.pid)
            took = run()
            runs = cpu.get(name, (0.0, 0.0, 0))
            cpu[name] = (runs[0] + (cpu_seconds() - ours_before) / N * 1000,
                         runs[1] + (cpu_seconds(smtp.pid) - server_before) / N * 1000, runs[2] + 1)
            return took

        built = measured("building", lambda: asyncio.run(build_and_send(content, recipients, secret, port)))

        def campaign_run(signers: int) -> float:
            """A new campaign to the whole list, sent by a sender with `signers` signing processes."""
            copy = call("crm_newsletter_create_campaign", {k: campaign[k] for k in (
                "name", "subject", "from_name", "from_email", "html_body", "text_body", "list_ids")})
            call("crm_newsletter_send_campaign", {"campaign_id": copy["id"]})
            sender = NewsletterSender(rt.store, url, connections=CONNECTIONS, poll=0.1, signers=signers)
            started = time.perf_counter()
            sender.start()
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    left = conn.execute("SELECT count(*) FROM campaign_deliveries WHERE campaign_id = %s AND status"
                                        " IN ('queued', 'claimed', 'sending')", (copy["id"],)).fetchone()[0]
                    if not left:
                        break
                    time.sleep(0.1)
                took = time.perf_counter() - started
                sent = conn.execute("SELECT count(*) FROM campaign_deliveries WHERE campaign_id = %s AND"
                                    " status = 'sent'", (copy["id"],)).fetchone()[0]
            sender.stop()
            assert sent == N, f"only {sent} of {N} sent"
            return took

        # The load of a shared machine changes from one minute to the next: the baseline and the sender run in
        # turns, each round's ratio from its own pair, and the median round is the figure.
        rounds = []
        for _ in range(ROUNDS):
            direct_run = measured("direct", lambda: asyncio.run(send_direct(prebuilt, port)))
            rounds.append((direct_run, measured("sender", lambda: campaign_run(0))))
        direct, ours = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
        with_signers = measured("signers", lambda: campaign_run(2))
        figures = {
            "recipients": N, "connections": CONNECTIONS, "rounds": ROUNDS,
            "direct_aiosmtplib_msgs_per_s": round(N / direct, 1),
            "aiosmtplib_building_and_signing_msgs_per_s": round(N / built, 1),
            "flusia_sender_msgs_per_s": round(N / ours, 1),
            "flusia_sender_2_signers_msgs_per_s": round(N / with_signers, 1),
            "ratio_vs_direct": round(direct / ours, 3),
            "ratios_by_round": [round(d / o, 3) for d, o in rounds],
            "ratio_vs_building_and_signing": round(built / ours, 3),
            "cpu_ms_per_msg": {k: {"process": round(v[0] / v[2], 3), "smtp_server": round(v[1] / v[2], 3)}
                               for k, v in cpu.items()},
            "load_average": os.getloadavg()[0],
        }
        print(f"campaign to {N:,} recipients over {CONNECTIONS} SMTP connections (aiosmtpd on loopback):")
        print(f"  aiosmtplib, prebuilt signed messages:   {figures['direct_aiosmtplib_msgs_per_s']:8.1f} msg/s  (baseline)")
        print(f"  aiosmtplib, building and signing each:  {figures['aiosmtplib_building_and_signing_msgs_per_s']:8.1f} msg/s")
        print(f"  Flusia sender (recorded before/after):  {figures['flusia_sender_msgs_per_s']:8.1f} msg/s")
        print(f"  Flusia sender, 2 signing processes:     {figures['flusia_sender_2_signers_msgs_per_s']:8.1f} msg/s"
              f"  (FLUSIA_NEWSLETTER_SIGNERS=2; {os.cpu_count()} CPUs here)")
        print(f"  ratio vs baseline: {figures['ratio_vs_direct']:.2f}x (target >= 0.5x; median of {ROUNDS} rounds: "
              f"{', '.join(f'{r:.2f}' for r in figures['ratios_by_round'])}); "
              f"vs building and signing: {figures['ratio_vs_building_and_signing']:.2f}x")
        print("  CPU ms per message (this process / the SMTP server; the signing processes not counted): "
              + ", ".join(f"{k} {v[0] / v[2]:.2f}/{v[1] / v[2]:.2f}" for k, v in cpu.items())
              + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine: wall figures vary)")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "newsletter.json").write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        if rt is not None:
            rt.close()
        dns.stop()
        smtp.stdin.close()
        smtp.wait(10)
        if not os.environ.get("BENCH_KEEP_DB"):
            drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
