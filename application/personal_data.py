"""Erasure on request (GDPR art. 17) by crypto-shredding: personal data is encrypted in events with a key per person.

What is personal data (domain/personal_data.py, `SPEC` below): a lead/client's contact name, tax code, e-mail,
phone and address; its contact persons (name, role, e-mail, phone), also where a deal names them; the text of
notes on it; the transcripts of its call recordings. The *subject* is the lead/client the data is about (`SUBJECTS`:
a client is its own subject, a note on a client and a recording have that client, a deal its client). The same
values inside an aggregate's state (`STATE`) are personal wherever a whole state is stored: the audit restore's
compensating `<Aggregate>.Reinstated` event carries the state of an earlier version, sealed at those paths with the
subject's key like the events it was replayed from, so a restored entity is erased like any other.

Writing (application/store.py, `EventStore.save`): before the events of an aggregate are encoded, the subject's key
is looked up (created on first use); the encoder then replaces every text at a personal path of the event by
`{"_type_": "personal", "_data_": {"k": <key id>, "c": <AES-256-GCM ciphertext>}}` (a random 96-bit nonce per value,
the key id as associated data). Everything else in the event stays as it was, so ids, times and business fields
remain queryable.

Reading (the same transcoding, registered with the event store's and the workflow engine's mappers): the value is
decrypted with its key, or reads `"[erased]"` when the key was destroyed. Every reader of the event store gets the
same answer: aggregates, projections (also when rebuilt from the first event), history and as-of views, search.

The keys (table `personal_data_keys`, migration 0065): one row per key with its organization, subject and the 32-byte
key sealed with the server key (application/secrets.py: AES-256-GCM, FLUSIA_SECRET_KEY or the key file in
$FLUSIA_HOME; associated data `<organization>:personal-data:<subject>:<key id>`, so a sealed key copied to another
row does not open). No plaintext key is ever stored or logged: a reader unseals a key in memory and keeps it at
most `CACHE_SECONDS` (destroyed keys are remembered as destroyed). Losing the server key makes personal data
unreadable like the other secrets: back up the key file or set FLUSIA_SECRET_KEY.

Erasing (`crm_clients_erase_personal_data`, `flusia gdpr erase --org ORG --client ID`): one statement appends the
client's `PersonalDataErased` event (it carries no personal data), sets `sealed_key` to NULL on every key of the
client and of the duplicates merged into it, and records the erased aggregates in `personal_data_erasures`. The
projections blank the fields they hold at once (clients, contacts, notes, recordings, timeline notes, deal contact
names; search words that only the erased data used leave the search lexicon). The process that erased forgets the
keys at once; another process that had read one forgets it within `CACHE_SECONDS`. Data written about the person
afterwards gets a new key (erasure is not a block list). Events stay: history is never rewritten.

Events written before encryption existed hold plaintext (so do restores stored before their state was covered):
for the aggregates listed in `personal_data_erasures`, the event store's mapper reads their personal paths as
`"[erased]"` too, so history, as-of and rebuilds show them
erased; the projections blank them as above. Not covered: activities' texts, custom field values, newsletter
subscribers (their own consent and unsubscribe flow), and free text elsewhere that quotes a person.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets as random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Mapper, StoredEvent, Transcoding

from application import secrets as sealed
from domain.clients import Client
from domain.deals import Deal
from domain.notes import Note
from domain.personal_data import CLIENT_PERSONAL_FIELDS, CONTACT_PERSONAL_FIELDS, ERASED
from domain.recordings import Recording

TRANSCODING = "personal"
MARK = b'"_type_":"personal"'
"""How an encoded event shows that it holds sealed values (the transcoder writes compact JSON)."""
CACHE_SECONDS = 5.0
CACHE_SIZE = 50_000
PREFETCH = 256
PREFETCH_MANY = 5000
"""Keys asked for by id in one query (KeyRing.prefetch)."""
KEY_REFERENCE = re.compile(rb'"k": ?"([0-9a-f]{32})"')
"""How a sealed value names its key inside an event's stored JSON (see `seal`)."""
ERASURE_TOPIC = "domain.clients:Client.PersonalDataErased"

Path = tuple[str, ...]
SPEC: dict[type, tuple[Path, ...]] = {
    Client.Created: tuple(("fields", f) for f in CLIENT_PERSONAL_FIELDS),
    Client.Updated: tuple(("changes", f) for f in CLIENT_PERSONAL_FIELDS),
    Client.ContactAdded: tuple(("fields", f) for f in CONTACT_PERSONAL_FIELDS),
    Client.ContactUpdated: tuple(("changes", f) for f in CONTACT_PERSONAL_FIELDS),
    Client.Absorbed: (*(("filled", f) for f in CLIENT_PERSONAL_FIELDS),
                      *(("contacts", "*", f) for f in CONTACT_PERSONAL_FIELDS)),
    Note.Created: (("body",),),
    Note.Edited: (("body",),),
    Recording.Created: (("transcript",),),
    Deal.ContactAdded: (("name",),),
}
"""Event class -> the paths of its personal values (`*`: every item of a list, every value of a mapping). A path
ending at a dict or list covers every text inside it (an address). Completed below with every `Reinstated`."""
STATE: dict[type, tuple[Path, ...]] = {
    Client: (*((f,) for f in CLIENT_PERSONAL_FIELDS), *(("contacts", "*", f) for f in CONTACT_PERSONAL_FIELDS)),
    Note: (("body",),),
    Recording: (("transcript",),),
    Deal: (("contacts", "*", "name"),),
}
"""Aggregate class -> the paths of the personal values in its state (`public_state`: its own attributes), where
the values its personal events carry end up. A state travels whole in one event, the audit restore's compensating
`<Aggregate>.Reinstated` (domain.base): its `state` is sealed at these paths, for every aggregate listed here, so
a restored entity's earlier state is erased with the rest."""
SUBJECTS: dict[type, Callable[[Any], UUID | None]] = {
    Client: lambda client: client.id,
    Note: lambda note: note.subject_id if note.subject_type == "client" else None,
    Recording: lambda recording: recording.client_id,
    Deal: lambda deal: getattr(deal, "client_id", None),
}
"""Aggregate class -> the lead/client its personal data is about (None: not a person's data, stored as it is)."""


def _owner(event_class: type) -> str:
    return f"{event_class.__module__}:{event_class.__qualname__.partition('.')[0]}"


for _kind, _paths in STATE.items():
    SPEC[_kind.Reinstated] = tuple(("state", *path) for path in _paths)
if not {_owner(c) for c in SPEC} <= {f"{k.__module__}:{k.__qualname__}" for k in STATE} or set(STATE) != set(SUBJECTS):
    raise RuntimeError("every aggregate with personal events needs its personal state paths and its subject")


# -- values ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sealed:
    """A personal value on its way into the event store, with the key that seals it."""

    key_id: UUID
    key: bytes
    value: str


def seal(key_id: UUID, key: bytes, value: str) -> dict[str, str]:
    nonce = random.token_bytes(12)
    data = AESGCM(key).encrypt(nonce, value.encode("utf-8"), key_id.bytes)
    return {"k": key_id.hex, "c": base64.urlsafe_b64encode(nonce + data).decode().rstrip("=")}


def unseal(key_id: UUID, key: bytes, cipher: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cipher + "=" * (-len(cipher) % 4))
        return AESGCM(key).decrypt(raw[:12], raw[12:], key_id.bytes).decode("utf-8")
    except (InvalidTag, ValueError, binascii.Error):
        raise sealed.SecretUnavailable("a personal value does not decrypt with its key (altered data)") from None


def _map_path(value: Any, path: Path, fn: Callable[[str], Any]) -> Any:
    """`value` with `fn` applied to every text at `path` (containers along it copied, never changed in place)."""
    if not path:
        if isinstance(value, str):
            return fn(value) if value else value
        if isinstance(value, dict):
            return {k: _map_path(v, (), fn) for k, v in value.items()}
        if isinstance(value, list):
            return [_map_path(v, (), fn) for v in value]
        return value
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(value, dict):
            return {k: _map_path(v, rest, fn) for k, v in value.items()}
        return [_map_path(v, rest, fn) for v in value] if isinstance(value, list) else value
    if isinstance(value, dict) and head in value:
        return {**value, head: _map_path(value[head], rest, fn)}
    return value


def transform(event: Any, fn: Callable[[str], Any]) -> Any:
    """A copy of `event` with `fn` applied to its personal texts (the original, applied to an aggregate, stays)."""
    state = dict(vars(event))
    for path in SPEC[type(event)]:
        state = _map_path(state, path, fn)
    copy = object.__new__(type(event))
    object.__setattr__(copy, "__dict__", state)
    return copy


def redacted(event: Any) -> Any:
    return transform(event, lambda _: ERASED)


# -- keys ------------------------------------------------------------------------------------------------------------
def _context(org_id: Any, subject_id: Any, key_id: Any) -> str:
    return f"{org_id}:personal-data:{subject_id}:{key_id}"


class UnknownKey(sealed.SecretUnavailable):
    """An event refers to a key this database does not have (rows removed by hand?)."""


_MISSING = object()


class KeyRing:
    """The subjects' keys of one database: created on first use, unsealed in memory for at most CACHE_SECONDS,
    destroyed by erasure. Uses the event store's connection pool (the eventsourcing datastore)."""

    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        self._lock = threading.Lock()
        self._keys: OrderedDict[UUID, tuple[bytes | None, float]] = OrderedDict()
        self._erased: tuple[frozenset[UUID], float] = (frozenset(), -1e9)
        self._erased_keys: int | None = None  # keys destroyed so far, as last counted
        self._validated_at = -1e9  # every cached key was still good then (no key destroyed since they were read)
        _rings.add(self)

    def close(self) -> None:
        _rings.discard(self)
        self.forget()

    # writing
    def active_key(self, org_id: UUID, subject_id: UUID) -> tuple[UUID, bytes]:
        """The subject's key in use, created when it has none (also after an erasure: new data, new key)."""
        select = ("SELECT id, organization_id, subject_id, sealed_key FROM personal_data_keys"
                  " WHERE organization_id = %s AND subject_id = %s AND erased_at IS NULL")
        with self.datastore.transaction(commit=True) as cur:
            row = cur.execute(select, (org_id, subject_id)).fetchone()
            if row is None:
                key_id = uuid4()
                text = base64.urlsafe_b64encode(random.token_bytes(32)).decode()
                cur.execute(
                    "INSERT INTO personal_data_keys (id, organization_id, subject_id, sealed_key) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (organization_id, subject_id) WHERE erased_at IS NULL DO NOTHING",
                    (key_id, org_id, subject_id,
                     sealed.encrypt(sealed.server_key(cur), text, context=_context(org_id, subject_id, key_id))))
                row = cur.execute(select, (org_id, subject_id)).fetchone()
            return row["id"], self._unsealed(row, cur)

    def _unsealed(self, row: dict[str, Any], cur: Any) -> bytes:
        text = sealed.decrypt(sealed.server_key(cur), row["sealed_key"],
                              context=_context(row["organization_id"], row["subject_id"], row["id"]))
        return base64.urlsafe_b64decode(text)

    # reading
    def key(self, key_id: UUID) -> bytes | None:
        """The key, or None when it was destroyed (erased)."""
        found = self.lookup(key_id)
        if found is _MISSING:
            raise UnknownKey("an event refers to a personal-data key this database does not have")
        return found  # type: ignore[return-value]

    def lookup(self, key_id: UUID) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._keys.get(key_id)
            fresh = self._fresh(hit, now)
            if fresh:
                self._keys.move_to_end(key_id)
        if fresh:
            return self._opened(key_id, hit)  # type: ignore[arg-type]
        if hit is not None and self._revalidate():
            return self._opened(key_id, hit)
        self._fetch_from(key_id)
        with self._lock:
            hit = self._keys.get(key_id)
        return _MISSING if hit is None else self._opened(key_id, hit)

    def _fresh(self, hit: tuple[Any, float] | None, now: float) -> bool:
        """Whether a cache entry may be used as it is: a destroyed key stays destroyed; others for CACHE_SECONDS
        after they were read or last found still good (call with the lock held)."""
        return hit is not None and (hit[0] is None or now - max(hit[1], self._validated_at) < CACHE_SECONDS)

    def _opened(self, key_id: UUID, hit: tuple[Any, float]) -> bytes | None:
        """The key of a cache entry; a prefetched one (still its sealed row) is unsealed on first use."""
        if not isinstance(hit[0], dict):
            return hit[0]
        key = self._unsealed(hit[0], None)  # the server key was read by the fetch that cached the row
        with self._lock:
            if key_id in self._keys:
                self._keys[key_id] = (key, hit[1])
        return key

    def _revalidate(self) -> bool:
        """Whether the cached keys are all still good: no key was destroyed since they were read or last checked.
        One count for the whole cache instead of reading every expired key again (a rebuild meets each subject's
        key again and again, long after it was read). A destroyed key empties the cache, as does the first check."""
        checked = time.monotonic()  # before the count: what it finds is at least this recent
        with self.datastore.transaction(commit=False) as cur:
            row = cur.execute("SELECT count(*) AS n FROM personal_data_keys WHERE erased_at IS NOT NULL").fetchone()
        erased = row["n"] if isinstance(row, dict) else row[0]
        with self._lock:
            if erased == self._erased_keys:
                self._validated_at = checked
                return True
            self._keys.clear()
            self._erased_keys, self._validated_at = erased, checked
            return False

    def prefetch(self, states: Iterable[bytes]) -> None:
        """Every key these stored events refer to that is not cached, in one query: a projector calls it for a batch
        before decoding it. Keys are found in the events' JSON by their reference (`"k": "<hex>"`), so the order in
        which keys were created does not matter (a batch of new leads saved at once writes its keys in any order)."""
        wanted: set[UUID] = set()
        for state in states:
            wanted.update(UUID(hex=m.decode()) for m in KEY_REFERENCE.findall(state))
        if not wanted:
            return
        now = time.monotonic()
        with self._lock:
            missing = [k for k in wanted if not self._fresh(self._keys.get(k), now)]
        for start in range(0, len(missing), PREFETCH_MANY):
            with self.datastore.transaction(commit=False) as cur:
                rows = cur.execute("SELECT id, organization_id, subject_id, sealed_key FROM personal_data_keys"
                                   " WHERE id = ANY(%s)", (missing[start:start + PREFETCH_MANY],)).fetchall()
                sealed.server_key(cur)  # read (and cached) while there is a connection, for the unsealing later
            self._remember([(r["id"], None if r["sealed_key"] is None else dict(r)) for r in rows])

    def _fetch_from(self, key_id: UUID) -> None:
        """The key and the ones created after it (a rebuild meets them in about that order): one query, not one per
        subject."""
        with self.datastore.transaction(commit=False) as cur:
            rows = cur.execute(
                "SELECT id, organization_id, subject_id, sealed_key FROM personal_data_keys"
                " WHERE seq >= (SELECT seq FROM personal_data_keys WHERE id = %s) ORDER BY seq LIMIT %s",
                (key_id, PREFETCH)).fetchall()
            sealed.server_key(cur)  # read (and cached) while there is a connection, for the unsealing below
            # Only the key asked for is unsealed now; the others when first used (most may never be, or only long after).
            loaded = [(r["id"], None if r["sealed_key"] is None else self._unsealed(r, cur) if r["id"] == key_id
                       else dict(r)) for r in rows]
        self._remember(loaded)

    def _remember(self, loaded: list[tuple[UUID, Any]]) -> None:
        """Cache fetched keys: unsealed bytes, a sealed row (unsealed on first use) or None (destroyed)."""
        now = time.monotonic()
        with self._lock:
            for kid, key in loaded:
                known = self._keys.get(kid)
                if isinstance(key, dict) and known is not None and isinstance(known[0], bytes):
                    key = known[0]  # unsealed already: still good (a destroyed key comes back as None)
                self._keys[kid] = (key, now)
                self._keys.move_to_end(kid)
            while len(self._keys) > CACHE_SIZE:
                self._keys.popitem(last=False)

    def erased_aggregate(self, aggregate_id: UUID) -> bool:
        """Whether the aggregate's personal data was erased (for events written before encryption)."""
        ids, loaded = self._erased
        if time.monotonic() - loaded >= CACHE_SECONDS:
            with self.datastore.transaction(commit=False) as cur:
                ids = frozenset(r["aggregate_id"] for r in cur.execute(
                    "SELECT aggregate_id FROM personal_data_erasures").fetchall())
            self._erased = (ids, time.monotonic())
        return aggregate_id in ids

    def forget(self) -> None:
        """Drop every unsealed key and the erased list: they are read again when needed (after an erasure)."""
        with self._lock:
            self._keys.clear()
            self._erased = (frozenset(), -1e9)
            self._erased_keys, self._validated_at = None, -1e9


_rings: weakref.WeakSet[KeyRing] = weakref.WeakSet()


def _any_ring_key(key_id: UUID) -> bytes | None:
    """For decoders without an event store of their own (the workflow engine): whichever database knows the key."""
    for ring in list(_rings):
        found = ring.lookup(key_id)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
    raise UnknownKey("an event refers to a personal-data key no open database has")


class PersonalTranscoding(Transcoding):
    """`Sealed` values in, their texts out (or ERASED once the key is destroyed)."""

    type = Sealed
    name = TRANSCODING

    def __init__(self, keyring: KeyRing | None = None) -> None:
        self.keyring = keyring

    def encode(self, obj: Sealed) -> dict[str, str]:
        return seal(obj.key_id, obj.key, obj.value)

    def decode(self, data: dict[str, str]) -> str:
        key_id = UUID(hex=data["k"])
        key = self.keyring.key(key_id) if self.keyring is not None else _any_ring_key(key_id)
        return ERASED if key is None else unseal(key_id, key, data["c"])


# -- what the event store does with it ---------------------------------------------------------------------------------
sealing: ContextVar[dict[UUID, tuple[UUID, bytes]] | None] = ContextVar("personal_data_sealing", default=None)
"""While an EventStore.save encodes: aggregate id -> (key id, key) of its subject."""


def keys_for(keyring: KeyRing, aggregates: Iterable[Any], events: Iterable[Any]) -> dict[UUID, tuple[UUID, bytes]]:
    """The subject keys the personal values among `events` are sealed with, by aggregate id."""
    personal = {e.originator_id for e in events if type(e) in SPEC}
    out: dict[UUID, tuple[UUID, bytes]] = {}
    by_subject: dict[tuple[UUID, UUID], tuple[UUID, bytes]] = {}
    for aggregate in aggregates:
        subject_of = SUBJECTS.get(type(aggregate))
        if aggregate.id not in personal or subject_of is None:
            continue
        subject = subject_of(aggregate)
        if subject is None:
            continue
        where = (aggregate.org_id, subject)
        if where not in by_subject:
            by_subject[where] = keyring.active_key(*where)
        out[aggregate.id] = by_subject[where]
    return out


def sealed_for_storage(event: Any) -> Any:
    """The event as it is to be stored: its personal texts sealed with its subject's key (when a save set one)."""
    keys = sealing.get()
    if not keys or type(event) not in SPEC:
        return event
    found = keys.get(event.originator_id)
    if found is None:
        return event
    key_id, key = found
    return transform(event, lambda text: Sealed(key_id, key, text))


class PersonalDataMapper(Mapper[UUID]):
    """The library's mapper with personal data sealed on the way in (`sealed_for_storage`) and read back, or as
    erased, on the way out. Without a keyring (the workflow engine's and the audit tools' reader) it asks every open
    database's."""

    def __init__(self, transcoder: Any, keyring: KeyRing | None = None) -> None:
        super().__init__(transcoder)
        self.keyring = keyring

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        return super().to_stored_event(sealed_for_storage(domain_event))

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        event = super().to_domain_event(stored_event)
        if type(event) in SPEC and MARK not in stored_event.state and self._erased(event.originator_id):
            event = redacted(event)  # written before encryption existed, and erased since
        elif stored_event.topic == ERASURE_TOPIC:
            for ring in ([self.keyring] if self.keyring is not None else list(_rings)):
                ring.forget()  # an erasure, maybe by another process: read the keys again
        return event

    def _erased(self, aggregate_id: UUID) -> bool:
        rings = [self.keyring] if self.keyring is not None else list(_rings)
        return any(ring.erased_aggregate(aggregate_id) for ring in rings)


# -- erasing ---------------------------------------------------------------------------------------------------------
def erase_statements(org_id: UUID, subjects: list[UUID], aggregates: list[UUID], client_id: UUID
                     ) -> list[tuple[str, tuple[Any, ...]]]:
    """Destroy the subjects' keys and list the erased aggregates: SQL committed in the statement that appends the
    erasure event (as `SideWrite`s), so neither happens without the other."""
    return [
        ("UPDATE personal_data_keys SET sealed_key = NULL, erased_at = now()"
         " WHERE organization_id = %s AND subject_id = ANY(%s::uuid[]) AND erased_at IS NULL", (org_id, subjects)),
        ("INSERT INTO personal_data_erasures (organization_id, aggregate_id, subject_id)"
         " SELECT %s, a, %s FROM unnest(%s::uuid[]) AS a ON CONFLICT (organization_id, aggregate_id) DO NOTHING",
         (org_id, client_id, aggregates)),
    ]
