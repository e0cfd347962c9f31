"""Secrets the CRM keeps for an organization (the FattureInCloud access token; WhatsApp's later), encrypted at rest.

AES-256-GCM with a random 96-bit nonce per value; the associated data binds a ciphertext to its organization and
purpose (`<organization id>:<purpose>`), so a value copied to another organization's row does not decrypt. The
stored form is `v1.<base64url(nonce || ciphertext+tag)>`. Plaintext secrets are never returned by a tool nor
logged; tools show only that a secret is configured.

The key (32 bytes), in order:
1. `FLUSIA_SECRET_KEY`: 32 bytes as base64/base64url (e.g. `python -c "import secrets;print(secrets.token_urlsafe(32))"`),
   or any passphrase of at least 32 characters (stretched with HKDF-SHA256). Set it when several machines share
   one database: they must all decrypt the same values.
2. Else the file `$FLUSIA_HOME/secret.key` (default `~/.local/share/flusia/secret.key`, the directory `flusia serve`
   keeps its embedded database in), generated on first use with mode 0600 and reused afterwards.
3. Else, when that directory cannot be written (a read-only container), a key generated once into the
   `app_secrets` table. That keeps values out of logs and dumps of single tables but not out of a whole-database
   dump, so set FLUSIA_SECRET_KEY in such deployments.
Losing the key loses the stored secrets (not the CRM data): they are then reported as unreadable and must be set
again (`crm_settings_update_organization`).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as random
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ENV = "FLUSIA_SECRET_KEY"
HOME_ENV = "FLUSIA_HOME"
KEY_FILE = "secret.key"
DB_KEY_NAME = "organization_secrets_key"
VERSION = "v1."
_lock = threading.Lock()
_cached: dict[str, bytes] = {}
_by_environment: dict[tuple[str, str | None, str | None], bytes] = {}


class SecretUnavailable(Exception):
    """A stored secret cannot be decrypted with this server's key (changed or lost key, or a tampered value)."""


def home() -> Path:
    """Where `flusia serve` keeps its files (the same default as interfaces.database.flusia_home)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".local" / "share" / "flusia")


def _decode_key(text: str) -> bytes | None:
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return raw
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    return raw if len(raw) == 32 else None


def _from_env(value: str) -> bytes:
    key = _decode_key(value)
    if key is not None:
        return key
    if len(value) < 32:
        raise ValueError(f"{KEY_ENV} must be 32 bytes in base64, or a passphrase of at least 32 characters")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"flusia-secret-key", info=b"organization secrets"
                ).derive(value.encode())


def _from_file(path: Path) -> bytes | None:
    """The key file's key, created atomically (O_EXCL, 0600) when missing; None when the directory is not writable."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return _read_key_file(path)
    except OSError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(base64.urlsafe_b64encode(random.token_bytes(32)).decode() + "\n")
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    key = _decode_key(path.read_text())
    if key is None:
        raise ValueError(f"{path} does not hold a 32-byte base64 key; restore it or set {KEY_ENV}")
    return key


def _from_database(conn: Any) -> bytes:
    conn.execute("INSERT INTO app_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                 (DB_KEY_NAME, base64.urlsafe_b64encode(random.token_bytes(32)).decode()))
    row = conn.execute("SELECT value FROM app_secrets WHERE name = %s", (DB_KEY_NAME,)).fetchone()
    return _decode_key(row["value"] if isinstance(row, dict) else row[0])  # type: ignore[return-value]


def server_key(conn: Any = None) -> bytes:
    """This server's key (see the module docstring for where it comes from). `conn` is needed only for the last
    resort, the database; the key is cached per source for the life of the process."""
    configured = os.environ.get(KEY_ENV, "")
    # What decides the source, read without building paths: a rebuild unseals a key per subject through here.
    fast = (configured, os.environ.get(HOME_ENV), os.environ.get("HOME"))
    found = _by_environment.get(fast)
    if found is not None:
        return found
    source = f"env:{configured}" if configured else f"file:{home() / KEY_FILE}"
    with _lock:
        if source in _cached:
            return _cached[source]
        if configured:
            key = _from_env(configured)
        else:
            key = _from_file(home() / KEY_FILE)
            if key is None:
                if conn is None:
                    raise SecretUnavailable(f"{home()} is not writable and no database connection was given")
                key = _from_database(conn)
        _cached[source] = key
        _by_environment[fast] = key
        return key


def encrypt(key: bytes, plaintext: str, *, context: str) -> str:
    nonce = random.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), context.encode())
    return VERSION + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


def decrypt(key: bytes, stored: str, *, context: str) -> str:
    if not stored.startswith(VERSION):
        raise SecretUnavailable("unknown secret format")
    body = stored[len(VERSION):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return AESGCM(key).decrypt(raw[:12], raw[12:], context.encode()).decode("utf-8")
    except (InvalidTag, ValueError, binascii.Error):
        raise SecretUnavailable("the stored secret cannot be decrypted with this server's key") from None


def context_for(organization_id: Any, purpose: str) -> str:
    return f"{organization_id}:{purpose}"
