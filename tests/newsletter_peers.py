"""Real peers on loopback for the newsletter tests: an SMTP server (aiosmtpd) that keeps what it receives and can
refuse recipients for good (5xx) or for a while (4xx), and a DNS server (dnslib) answering TXT records."""

from __future__ import annotations

import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from typing import Any

import pytest

from tests.conftest import free_port


class Inbox:
    """aiosmtpd handler: every accepted message, and the recipients to refuse."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, int] = {}
        self.transient: dict[str, int] = {}
        self.delay = 0.0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        address = address.lower()
        if address in self.refuse:
            return f"{self.refuse[address]} 5.1.1 mailbox unavailable"
        if self.transient.get(address, 0) > 0:
            self.transient[address] -= 1
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 2.0.0 accepted"

    def recipients(self) -> Counter:
        with self.lock:
            return Counter(r for _, rcpts, _ in self.messages for r in rcpts)

    def parsed(self, recipient: str | None = None) -> list[Any]:
        with self.lock:
            found = [m for m in self.messages if recipient is None or recipient in m[1]]
        return [message_from_bytes(raw, policy=policy.default) for _, _, raw in found]

    def raw(self, recipient: str) -> bytes:
        with self.lock:
            return next(raw for _, rcpts, raw in self.messages if recipient in rcpts)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return
            time.sleep(0.05)
        raise AssertionError(f"expected {count} messages, got {len(self.messages)}")


class SmtpPeer:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


class DnsPeer:
    """TXT records by name; unknown names are NXDOMAIN."""

    def __init__(self) -> None:
        from dnslib import QTYPE, RCODE, RR, TXT
        from dnslib.server import BaseResolver, DNSLogger, DNSServer

        self.txt: dict[str, list[str]] = {}
        peer = self

        class Resolver(BaseResolver):
            def resolve(self, request: Any, handler: Any) -> Any:
                reply = request.reply()
                name = str(request.q.qname).rstrip(".").lower()
                if name not in peer.txt:
                    reply.header.rcode = RCODE.NXDOMAIN
                elif request.q.qtype == QTYPE.TXT:
                    for value in peer.txt[name]:
                        chunks = [value[i:i + 255].encode() for i in range(0, len(value), 255)] or [b""]
                        reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=1))
                return reply

        self.port = free_port()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1",
                                logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, records: list[dict[str, str]]) -> None:
        for r in records:
            self.txt.setdefault(r["name"].lower(), []).append(r["value"])

    def start(self) -> None:
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def smtp_peer():
    peer = SmtpPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def dns_peer():
    peer = DnsPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def mail_env(monkeypatch, smtp_peer, dns_peer):
    """The settings a server needs to send through the local peers (the SMTP host is loopback: SPF `ip4:`)."""
    env = {"FLUSIA_SMTP_URL": smtp_peer.url, "FLUSIA_DNS_SERVER": dns_peer.address, "FLUSIA_SMTP_RETRY_SECONDS": "0.05",
           "FLUSIA_PUBLIC_URL": "http://127.0.0.1:9"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def verified_domain(call: Any, dns: DnsPeer, domain: str = "shop.example") -> dict[str, Any]:
    added = call("crm_newsletter_add_domain", {"domain": domain})
    dns.publish(added["records"])
    verified = call("crm_newsletter_verify_domain", {"domain_id": added["id"]})
    assert verified["verified"], verified
    return verified


def dkim_verify(raw: bytes, dns: DnsPeer) -> bool:
    import dkim

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        values = dns.txt.get(name.decode().rstrip(".").lower(), [])
        return values[0].encode() if values else b""

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))
