"""Sending e-mail through the SMTP server the operator configured: one module every feature reuses (invitations,
newsletters, workflows).

Settings (environment):
- `FLUSIA_SMTP_URL`: `smtp://user:password@host:port` (plain, or STARTTLS with `?starttls=1`), `smtps://...` for
  TLS from the first byte. User and password are URL-encoded (`%40` for `@`); both are optional. Default ports:
  25 (`smtp`), 587 (`smtp` with `starttls=1`), 465 (`smtps`). Unset: the CRM sends no e-mail, and what would have
  been sent says so (an invitation still returns its link).
- `FLUSIA_SMTP_FROM`: the sender, e.g. `Flusia CRM <crm@example.com>` (default `Flusia CRM <no-reply@<host>>`).
- `FLUSIA_SMTP_TIMEOUT`: seconds for connecting and each SMTP command (default 15).

Errors never carry the server's reply or the addresses (they could quote a tenant's data), nor the password:
`MailError` says what failed in our words, and callers log it with `application.logsafe.describe`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

SMTP_URL_ENV = "FLUSIA_SMTP_URL"
SMTP_FROM_ENV = "FLUSIA_SMTP_FROM"
SMTP_TIMEOUT_ENV = "FLUSIA_SMTP_TIMEOUT"


class MailError(Exception):
    """Sending failed; the message is ours (safe to show and log), never the server's reply."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool
    sender: str
    timeout: float = 15.0

    def __repr__(self) -> str:  # never the password, even in a traceback's locals
        return (f"SmtpSettings(host={self.host!r}, port={self.port}, tls={self.use_tls}, starttls={self.start_tls},"
                f" user={'set' if self.username else 'none'})")

    @classmethod
    def parse(cls, url: str, *, sender: str | None = None, timeout: float = 15.0) -> SmtpSettings:
        """`smtp[s]://[user[:password]@]host[:port][?starttls=1]`; ValueError says what is wrong (never the password)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"{SMTP_URL_ENV} is not a valid URL (smtp://user:password@host:port)") from None
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"{SMTP_URL_ENV} must be smtp://host[:port] or smtps://host[:port]")
        query = parse_qs(parts.query)
        start_tls = query.get("starttls", ["0"])[-1].lower() in {"1", "true", "yes"}
        use_tls = parts.scheme == "smtps"
        if use_tls and start_tls:
            raise ValueError(f"{SMTP_URL_ENV}: smtps is TLS already; starttls=1 is for smtp://")
        default_port = 465 if use_tls else 587 if start_tls else 25
        host = parts.hostname
        return cls(
            host=host, port=port or default_port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=use_tls, start_tls=start_tls,
            sender=sender or f"Flusia CRM <no-reply@{host}>", timeout=timeout,
        )

    @classmethod
    def from_env(cls) -> SmtpSettings | None:
        """The configured server, or None when FLUSIA_SMTP_URL is unset (ValueError when it is malformed)."""
        url = os.environ.get(SMTP_URL_ENV, "").strip()
        if not url:
            return None
        try:
            timeout = float(os.environ.get(SMTP_TIMEOUT_ENV) or 15)
        except ValueError:
            timeout = 15.0
        return cls.parse(url, sender=os.environ.get(SMTP_FROM_ENV) or None, timeout=max(1.0, timeout))


def build_message(*, sender: str, to: str, subject: str, text: str, html: str | None = None,
                  headers: dict[str, str] | None = None) -> EmailMessage:
    """A multipart/alternative message (text, and HTML when given) with Date and Message-ID."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "flusia.invalid"
    message["Message-ID"] = make_msgid(domain=domain)
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


async def send_async(settings: SmtpSettings, message: EmailMessage) -> None:
    """Deliver one message to the configured server; MailError when it cannot."""
    import aiosmtplib

    try:
        await aiosmtplib.send(
            message, hostname=settings.host, port=settings.port, username=settings.username,
            password=settings.password, use_tls=settings.use_tls, start_tls=settings.start_tls,
            timeout=settings.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused:
        raise MailError("the mail server refused the recipient address") from None
    except aiosmtplib.SMTPAuthenticationError:
        raise MailError("the mail server refused the SMTP user name or password") from None
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError):
        raise MailError(f"the mail server {settings.host}:{settings.port} could not be reached") from None
    except aiosmtplib.SMTPException as e:
        raise MailError(f"the mail server refused the message ({type(e).__name__})") from None


def send(settings: SmtpSettings, message: EmailMessage) -> None:
    """`send_async` from synchronous code (tool handlers run in worker threads, never on the event loop)."""
    asyncio.run(send_async(settings, message))
