"""Syncing invoices from FattureInCloud: the queue, the worker that drains it, and the import of documents.

`crm_invoices_sync` enqueues an item (a date range, or one document) in `invoice_sync_queue`. The worker (a thread
started with the server, `InvoiceSyncWorker.start`; tests and benchmarks call `run_pending`) claims due items,
fetches pages of issued invoices through the official SDK (`fattureincloud-python-sdk`) and imports each page:

- idempotent: an invoice's aggregate id comes from (organization, company, document id); a digest of each
  imported document (`invoice_sync_state`) is written in the same statement as its events, so an unchanged
  document appends nothing and a changed one records what changed (`Invoice.UpstreamChanged`);
- resumable: after each page the item records the next page and its progress, so a worker that dies mid-sync
  (its session-level advisory lock goes with its connection) is replaced by another that resumes there; a page
  imported twice appends nothing the second time;
- a range sync that completes marks the range's invoices FattureInCloud no longer lists as removed (cancelled);
- errors: 429 (and 403 with Retry-After, FattureInCloud's quota answer) wait for Retry-After without counting
  as a failed attempt; network errors, timeouts and 5xx retry with exponential back-off (FLUSIA_INVOICE_SYNC_
  BACKOFF_SECONDS doubling, up to FLUSIA_INVOICE_SYNC_MAX_BACKOFF_SECONDS) until FLUSIA_INVOICE_SYNC_MAX_ATTEMPTS;
  401, 403 and 404 fail at once with what to do. Errors are recorded in our words, never the server's reply.

Settings: FLUSIA_FATTUREINCLOUD_URL (default https://api-v2.fattureincloud.it), FLUSIA_FATTUREINCLOUD_TIMEOUT (30 s),
FLUSIA_INVOICE_SYNC_PAGE_SIZE (100, the API's maximum), FLUSIA_INVOICE_SYNC_MAX_ATTEMPTS (6),
FLUSIA_INVOICE_SYNC_BACKOFF_SECONDS (5), FLUSIA_INVOICE_SYNC_MAX_BACKOFF_SECONDS (900).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.persistence import IntegrityError
from psycopg.types.json import Jsonb

from application import secrets as sealed
from application.listening_worker import ListeningWorker
from application.logsafe import describe
from application.store import EventStore, SideWrite
from domain.errors import DomainError, NotFound
from domain.invoices import Invoice, UpstreamDocumentInvalid, invoice_id, normalize, snapshot_hash
from projections.pagination import Sort, paginate

log = logging.getLogger("flusia.invoice_sync")
PROVIDER = "fattureincloud"
DEFAULT_URL = "https://api-v2.fattureincloud.it"
CHANNEL = "invoice_sync"
LOCK_CLASS = 72_000_013
"""Advisory lock class of queue items: (LOCK_CLASS, hashtext(item id)) is held by the worker running the item."""
TOOL = "crm_invoices_sync"
STATES = ("queued", "running", "done", "failed", "cancelled")


def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name) or default))
    except ValueError:
        return default


@dataclass(frozen=True)
class SyncSettings:
    base_url: str = DEFAULT_URL
    timeout: float = 30.0
    page_size: int = 100
    max_attempts: int = 6
    backoff: float = 5.0
    max_backoff: float = 900.0

    @classmethod
    def from_env(cls) -> SyncSettings:
        return cls(
            base_url=(os.environ.get("FLUSIA_FATTUREINCLOUD_URL") or DEFAULT_URL).rstrip("/"),
            timeout=float(_int_env("FLUSIA_FATTUREINCLOUD_TIMEOUT", 30)),
            page_size=min(100, _int_env("FLUSIA_INVOICE_SYNC_PAGE_SIZE", 100)),
            max_attempts=_int_env("FLUSIA_INVOICE_SYNC_MAX_ATTEMPTS", 6),
            backoff=float(_int_env("FLUSIA_INVOICE_SYNC_BACKOFF_SECONDS", 5)),
            max_backoff=float(_int_env("FLUSIA_INVOICE_SYNC_MAX_BACKOFF_SECONDS", 900)),
        )

    def delay(self, attempts: int) -> float:
        """Back-off before attempt `attempts + 1`: backoff * 2^(attempts-1), capped, with +-20% jitter."""
        base = min(self.max_backoff, self.backoff * 2 ** max(0, attempts - 1))
        return base * random.uniform(0.8, 1.2)


# -- what can go wrong talking to FattureInCloud -------------------------------------------------------------
class SyncProblem(Exception):
    """A message in our words (stored in the queue item, shown by crm_invoices_list_queue)."""


class Fatal(SyncProblem):
    """Retrying will not help until someone changes something (token, company id)."""


class UpstreamNotFound(Fatal):
    """404: the company or document does not exist (a document sync then marks a known invoice removed)."""


class Transient(SyncProblem):
    """Retry with back-off."""


class RateLimited(SyncProblem):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(Exception):
    pass


def retry_after_seconds(value: str | None, default: float = 60.0) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date), between 1 s and 1 h."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return default
    return min(3600.0, max(1.0, seconds))


@dataclass
class ListedPage:
    documents: list[dict[str, Any]]
    last_page: int
    total: int


class FattureInCloud:
    """The official SDK, pointed at FLUSIA_FATTUREINCLOUD_URL, with its errors turned into ours."""

    def __init__(self, access_token: str, settings: SyncSettings) -> None:
        import fattureincloud_python_sdk as fic

        configuration = fic.Configuration(host=settings.base_url, access_token=access_token, retries=0)
        self._client = fic.ApiClient(configuration)
        self._documents = fic.IssuedDocumentsApi(self._client)
        self._timeout = (min(10.0, settings.timeout), settings.timeout)

    def close(self) -> None:
        try:
            self._client.rest_client.pool_manager.clear()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

    def _call(self, fn: Callable[[], Any], *, what: str) -> Any:
        import urllib3
        from fattureincloud_python_sdk import exceptions as e
        from pydantic import ValidationError

        try:
            return fn()
        except e.UnauthorizedException:
            raise Fatal("FattureInCloud refused the access token (401 Unauthorized): it is wrong, expired or revoked; "
                        "set a new one with crm_settings_update_organization (fattureincloud.access_token), then "
                        "crm_invoices_retry_queue_item") from None
        except e.ForbiddenException as err:
            after = (err.headers or {}).get("Retry-After")
            if after:
                raise RateLimited(f"FattureInCloud's API quota is used up (403); waiting {retry_after_seconds(after):.0f} s "
                                  "as it asked (Retry-After)", retry_after_seconds(after)) from None
            raise Fatal("FattureInCloud refused access (403 Forbidden): the token needs the issued_documents:r "
                        "permission on this company, or the licence has expired") from None
        except e.NotFoundException:
            raise UpstreamNotFound(f"FattureInCloud has no such {what} (404): check the company id "
                        "(crm_settings_update_organization) or the document id") from None
        except e.ApiException as err:
            if err.status == 429:
                after = retry_after_seconds((err.headers or {}).get("Retry-After"))
                raise RateLimited(f"FattureInCloud asked to slow down (429 Too Many Requests); retrying in {after:.0f} s",
                                  after) from None
            if err.status is not None and 500 <= err.status <= 599:
                raise Transient(f"FattureInCloud had an error ({err.status}); retrying") from None
            raise Fatal(f"FattureInCloud refused the request ({err.status})") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise Transient("FattureInCloud could not be reached (network error or timeout); retrying") from None
        except ValidationError:
            raise Transient("FattureInCloud answered something that is not an issued documents list; retrying") from None

    def list_page(self, company_id: int, date_from: date, date_to: date, page: int, per_page: int) -> ListedPage:
        query = f"date >= '{date_from.isoformat()}' and date <= '{date_to.isoformat()}'"
        response = self._call(lambda: self._documents.list_issued_documents(
            company_id, "invoice", fieldset="detailed", sort="id", page=page, per_page=per_page, q=query,
            _request_timeout=self._timeout), what="company")
        documents = [d.model_dump(mode="json", by_alias=True, exclude_none=True) for d in response.data or []]
        return ListedPage(documents, max(1, response.last_page or page), response.total or len(documents))

    def get_document(self, company_id: int, document_id: int) -> dict[str, Any]:
        response = self._call(lambda: self._documents.get_issued_document(
            company_id, document_id, fieldset="detailed", _request_timeout=self._timeout), what="document")
        if response.data is None:
            raise Transient("FattureInCloud answered without the document; retrying")
        return response.data.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- the connection -----------------------------------------------------------------------------------------
def connection(conn: Any, org_id: UUID) -> tuple[int, str] | None:
    """(company id, access token) of the organization's FattureInCloud connection, or None when not connected."""
    row = conn.execute("SELECT settings, secret FROM organization_connections WHERE organization_id = %s"
                       " AND provider = %s", (org_id, PROVIDER)).fetchone()
    if row is None or not row["secret"] or not row["settings"].get("company_id"):
        return None
    try:
        token = sealed.decrypt(sealed.server_key(conn), row["secret"], context=sealed.context_for(org_id, PROVIDER))
    except sealed.SecretUnavailable:
        raise Fatal("the stored FattureInCloud access token cannot be decrypted with this server's key "
                    "(FLUSIA_SECRET_KEY or $FLUSIA_HOME/secret.key changed); set it again with "
                    "crm_settings_update_organization") from None
    return int(row["settings"]["company_id"]), token


def require_connection(conn: Any, org_id: UUID) -> int:
    row = conn.execute("SELECT settings, secret IS NOT NULL AS has_secret FROM organization_connections"
                       " WHERE organization_id = %s AND provider = %s", (org_id, PROVIDER)).fetchone()
    if row is None or not row["has_secret"]:
        raise DomainError("FattureInCloud is not connected: an admin sets fattureincloud (company_id and "
                          "access_token) with crm_settings_update_organization")
    return int(row["settings"]["company_id"])


# -- importing documents ------------------------------------------------------------------------------------
@dataclass
class Imported:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    skipped_ids: list[int] = field(default_factory=list)

    def add(self, other: Imported) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.skipped += other.skipped
        self.skipped_ids = (self.skipped_ids + other.skipped_ids)[:20]


UPSERT_STATE = (
    "INSERT INTO invoice_sync_state (invoice_id, organization_id, company_id, external_id, invoice_date, upstream_hash,"
    " removed, synced_at) SELECT t.i, %s::uuid, %s::bigint, t.e, t.d, t.h, false, now()"
    " FROM unnest(%s::uuid[], %s::bigint[], %s::date[], %s::text[]) AS t(i, e, d, h)"
    " ON CONFLICT (invoice_id) DO UPDATE SET upstream_hash = EXCLUDED.upstream_hash, invoice_date = EXCLUDED.invoice_date,"
    " removed = false, synced_at = now()"
)
SEEN = "INSERT INTO invoice_sync_seen (queue_item_id, invoice_id) SELECT %s::uuid, unnest(%s::uuid[]) ON CONFLICT DO NOTHING"


def cause_for(org_id: UUID, user_id: UUID | None, correlation_id: UUID) -> dict[str, Any]:
    return {"organization_id": org_id, "user_id": user_id, "token_id": None, "oauth_client_id": None,
            "correlation_id": correlation_id, "tool": TOOL}


def import_documents(store: EventStore, conn: Any, org_id: UUID, company_id: int, documents: list[dict[str, Any]], *,
                     requested_by: UUID | None, queue_item_id: UUID | None = None) -> Imported:
    """Import one page of FattureInCloud documents: new invoices are created, changed ones record what changed,
    unchanged ones append nothing. Events, digests and the seen-list are written in one statement. A concurrent
    import of the same invoices (two workers) makes the loser start the page again."""
    for _ in range(5):
        try:
            return _import_once(store, conn, org_id, company_id, documents, requested_by, queue_item_id)
        except IntegrityError:
            continue
    raise Transient("the invoices kept changing concurrently; retrying")


def _import_once(store: EventStore, conn: Any, org_id: UUID, company_id: int, documents: list[dict[str, Any]],
                 requested_by: UUID | None, queue_item_id: UUID | None) -> Imported:
    from eventsourcing.application import AggregateNotFoundError

    result = Imported()
    prepared: list[tuple[UUID, int, dict[str, Any], str]] = []
    for document in documents:
        try:
            snapshot = normalize(document)
        except UpstreamDocumentInvalid:
            result.skipped += 1
            if isinstance(document.get("id"), int):
                result.skipped_ids = (result.skipped_ids + [document["id"]])[:20]
            continue
        prepared.append((invoice_id(org_id, company_id, document["id"]), document["id"], snapshot,
                         snapshot_hash(snapshot)))
    ids = [p[0] for p in prepared]
    known = {r["invoice_id"]: r for r in conn.execute(
        "SELECT invoice_id, upstream_hash, removed FROM invoice_sync_state WHERE invoice_id = ANY(%s)", (ids,))}
    changed: list[Invoice] = []
    changed_rows: list[tuple[UUID, int, dict[str, Any], str]] = []
    for row in prepared:
        inv_id, external_id, snapshot, digest = row
        state = known.get(inv_id)
        if state is not None and state["upstream_hash"] == digest and not state["removed"]:
            result.unchanged += 1
            continue
        try:
            invoice = store.repository.get(inv_id) if state is not None else None
        except AggregateNotFoundError:
            invoice = None
        if invoice is None:
            invoice = Invoice.import_document(org_id, company_id, snapshot, external_id)
            result.created += 1
        else:
            invoice.apply_upstream(snapshot)
            result.updated += 1
        changed.append(invoice)
        changed_rows.append(row)
    side = []
    if changed_rows:
        side.append(SideWrite(UPSERT_STATE, (org_id, company_id, [r[0] for r in changed_rows], [r[1] for r in changed_rows],
                                             [r[2]["date"] for r in changed_rows], [r[3] for r in changed_rows])))
    if queue_item_id is not None and ids:
        side.append(SideWrite(SEEN, (queue_item_id, ids)))
    if changed or side:
        store.save(*changed, cause=cause_for(org_id, requested_by, queue_item_id or uuid4()), side_writes=side,
                   organization_id=org_id)
    return result


def mark_removed(store: EventStore, conn: Any, org_id: UUID, company_id: int, *, queue_item_id: UUID,
                 date_from: date, date_to: date, requested_by: UUID | None) -> int:
    """After a complete range sync: the range's invoices FattureInCloud did not list any more were removed there."""
    rows = conn.execute(
        "SELECT s.invoice_id FROM invoice_sync_state s WHERE s.organization_id = %s AND s.company_id = %s"
        " AND NOT s.removed AND s.invoice_date BETWEEN %s AND %s AND NOT EXISTS (SELECT 1 FROM invoice_sync_seen x"
        " WHERE x.queue_item_id = %s AND x.invoice_id = s.invoice_id)",
        (org_id, company_id, date_from, date_to, queue_item_id)).fetchall()
    ids = [r["invoice_id"] for r in rows]
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        invoices = [store.repository.get(i) for i in chunk]
        for invoice in invoices:
            invoice.mark_removed()
        store.save(*invoices, cause=cause_for(org_id, requested_by, queue_item_id), side_writes=[SideWrite(
            "UPDATE invoice_sync_state SET removed = true, synced_at = now() WHERE invoice_id = ANY(%s::uuid[])",
            (chunk,))])
    return len(ids)


# -- the queue ----------------------------------------------------------------------------------------------
QUEUE_COLUMNS = ("q.id, q.kind, q.date_from, q.date_to, q.document_id, q.state, q.attempts, q.next_attempt_at,"
                 " q.next_page, q.progress, q.last_error, q.cancel_requested, q.requested_by,"
                 " (SELECT name FROM users u WHERE u.id = q.requested_by) AS requested_by_name, q.created_at,"
                 " q.started_at, q.finished_at, q.updated_at")


def enqueue(conn: Any, org_id: UUID, *, kind: str, date_from: date | None, date_to: date | None,
            document_id: int | None, requested_by: UUID | None) -> tuple[UUID, bool]:
    """Queue a sync (and wake the worker); an identical queued or running item is returned instead: (id, new)."""
    same = conn.execute(
        "SELECT id FROM invoice_sync_queue WHERE organization_id = %s AND state IN ('queued', 'running')"
        " AND kind = %s AND date_from IS NOT DISTINCT FROM %s AND date_to IS NOT DISTINCT FROM %s"
        " AND document_id IS NOT DISTINCT FROM %s AND NOT cancel_requested LIMIT 1",
        (org_id, kind, date_from, date_to, document_id)).fetchone()
    if same is not None:
        return same["id"], False
    item_id = uuid4()
    conn.execute("INSERT INTO invoice_sync_queue (id, organization_id, kind, date_from, date_to, document_id, requested_by)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s)", (item_id, org_id, kind, date_from, date_to, document_id,
                                                          requested_by))
    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
    return item_id, True


def get_item(conn: Any, org_id: UUID, item_id: UUID, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(f"SELECT {QUEUE_COLUMNS} FROM invoice_sync_queue q WHERE q.organization_id = %s AND q.id = %s"
                       + (" FOR UPDATE OF q" if lock else ""), (org_id, item_id)).fetchone()
    if row is None:
        raise NotFound("sync queue item", item_id, field="queue_item_id")
    return row


def list_items(conn: Any, org_id: UUID, *, state: str | None, limit: int, cursor: str | None):
    where = "FROM invoice_sync_queue q WHERE q.organization_id = %s"
    params: list[Any] = [org_id]
    if state is not None:
        where += " AND q.state = %s"
        params.append(state)
    return paginate(conn, QUEUE_COLUMNS, where, params, Sort("q.created_at", "timestamptz", descending=True, row_id="q.id"),
                    limit, cursor)


def retry(conn: Any, org_id: UUID, item_id: UUID) -> None:
    item = get_item(conn, org_id, item_id, lock=True)
    if item["state"] not in ("failed", "cancelled"):
        raise DomainError(f"only failed or cancelled items can be retried; this one is {item['state']}",
                          field="queue_item_id")
    conn.execute("UPDATE invoice_sync_queue SET state = 'queued', attempts = 0, next_attempt_at = now(),"
                 " cancel_requested = false, finished_at = NULL, updated_at = now() WHERE id = %s", (item_id,))
    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


def cancel(conn: Any, org_id: UUID, item_id: UUID) -> None:
    item = get_item(conn, org_id, item_id, lock=True)
    if item["state"] == "queued":
        conn.execute("UPDATE invoice_sync_queue SET state = 'cancelled', finished_at = now(), updated_at = now()"
                     " WHERE id = %s", (item_id,))
    elif item["state"] == "running":
        conn.execute("UPDATE invoice_sync_queue SET cancel_requested = true, updated_at = now() WHERE id = %s",
                     (item_id,))
    else:
        raise DomainError(f"only queued or running items can be cancelled; this one is {item['state']}",
                          field="queue_item_id")


# -- the worker ---------------------------------------------------------------------------------------------
class InvoiceSyncWorker(ListeningWorker):
    """Drains the sync queue. `run_pending()` processes every due item now, in the calling thread; `start()` runs
    that in a thread, woken by NOTIFY on `invoice_sync` and by the next back-off's time."""

    channel, thread_name, application_name = CHANNEL, "invoice-sync", "flusia-invoice-sync"

    def __init__(self, database_url: str, store: EventStore, *, settings: SyncSettings | None = None,
                 client: Callable[[str, SyncSettings], Any] = FattureInCloud) -> None:
        super().__init__(database_url, store)
        self.settings = settings or SyncSettings.from_env()
        self.client = client
        self.after_page: Callable[[dict[str, Any], int], None] | None = None
        """Called after each page is committed (tests use it to stop a worker mid-sync)."""

    # -- connections and locks -------------------------------------------------------------------------------

    def _unlock(self, item_id: UUID) -> None:
        try:
            self._db().execute("SELECT pg_advisory_unlock(%s, hashtext(%s::text))", (LOCK_CLASS, str(item_id)))
        except psycopg.Error:
            self.close()  # the connection is gone, and its locks with it

    def _claim(self, now: datetime | None) -> dict[str, Any] | None:
        db = self._db()
        candidates = db.execute(
            "SELECT id FROM invoice_sync_queue WHERE state IN ('queued', 'running')"
            " AND next_attempt_at <= coalesce(%s::timestamptz, now()) ORDER BY next_attempt_at, created_at LIMIT 50",
            (now,)).fetchall()
        for c in candidates:
            if not db.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s::text)) AS ok",
                              (LOCK_CLASS, str(c["id"]))).fetchone()["ok"]:
                continue  # another worker runs it
            row = db.execute(
                "UPDATE invoice_sync_queue SET state = 'running', started_at = coalesce(started_at, now()),"
                " updated_at = now() WHERE id = %s AND state IN ('queued', 'running') RETURNING *", (c["id"],)).fetchone()
            if row is not None:
                return row
            self._unlock(c["id"])
        return None

    # -- running ---------------------------------------------------------------------------------------------
    def run_pending(self, *, now: datetime | None = None, limit: int | None = None) -> int:
        """Process the items due at `now` (default: the database's now), one after another; returns how many."""
        done = 0
        while limit is None or done < limit:
            item = self._claim(now)
            if item is None:
                return done
            try:
                self._process(item)
            finally:
                self._unlock(item["id"])
            done += 1
        return done

    def _update(self, item_id: UUID, sets: str, params: tuple[Any, ...] = ()) -> None:
        self._db().execute(f"UPDATE invoice_sync_queue SET {sets}, updated_at = now() WHERE id = %s",  # noqa: S608
                           (*params, item_id))

    def _process(self, item: dict[str, Any]) -> None:
        client = None
        try:
            found = connection(self._db(), item["organization_id"])
            if found is None:
                raise Fatal("FattureInCloud is not connected any more (crm_settings_update_organization)")
            company_id, token = found
            client = self.client(token, self.settings)
            if item["kind"] == "document":
                self._sync_document(client, company_id, item)
            else:
                self._sync_range(client, company_id, item)
        except Cancelled:
            self._update(item["id"], "state = 'cancelled', finished_at = now()")
            self._db().execute("DELETE FROM invoice_sync_seen WHERE queue_item_id = %s", (item["id"],))
        except RateLimited as e:
            self._update(item["id"], "state = 'queued', last_error = %s,"
                         " next_attempt_at = now() + make_interval(secs => %s)", (str(e), e.retry_after))
        except Transient as e:
            attempts = item["attempts"] + 1
            if attempts >= self.settings.max_attempts:
                self._update(item["id"], "state = 'failed', attempts = %s, last_error = %s, finished_at = now()",
                             (attempts, f"{e} (gave up after {attempts} attempts)"))
            else:
                delay = self.settings.delay(attempts)
                self._update(item["id"], "state = 'queued', attempts = %s, last_error = %s,"
                             " next_attempt_at = now() + make_interval(secs => %s)",
                             (attempts, f"{e} in {delay:.0f} s (attempt {attempts + 1} of {self.settings.max_attempts})",
                              delay))
        except Fatal as e:
            self._update(item["id"], "state = 'failed', attempts = attempts + 1, last_error = %s, finished_at = now()",
                         (str(e),))
        except Exception as e:
            log.error("invoice sync failed item=%s error=%s", item["id"], describe(e))
            self._update(item["id"], "state = 'failed', attempts = attempts + 1, last_error = %s, finished_at = now()",
                         (f"internal error ({type(e).__name__}); the server log has its location",))
        finally:
            if client is not None:
                client.close()

    def _cancel_requested(self, item_id: UUID) -> bool:
        row = self._db().execute("SELECT cancel_requested FROM invoice_sync_queue WHERE id = %s", (item_id,)).fetchone()
        return row is None or row["cancel_requested"]

    def _finish(self, item: dict[str, Any], progress: dict[str, Any]) -> None:
        self._await_read_model()
        self._update(item["id"], "state = 'done', progress = %s, last_error = NULL, finished_at = now()",
                     (Jsonb(progress),))
        self._db().execute("DELETE FROM invoice_sync_seen WHERE queue_item_id = %s", (item["id"],))

    def _await_read_model(self, timeout: float = 10.0) -> None:
        """Done means visible: an item turns done once the invoices read model holds every event stored so far
        (the projector may run in another process), so an assistant listing invoices after seeing 'done' finds
        them. A projector that is stopped or far behind does not hold the item longer than `timeout`."""
        db = self._db()
        head = db.execute("SELECT coalesce(max(notification_id), 0) AS head FROM stored_events").fetchone()["head"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            row = db.execute("SELECT position FROM projection_tracking WHERE name = 'invoices'").fetchone()
            if row is not None and row["position"] >= head:
                return
            time.sleep(0.05)

    def _sync_range(self, client: Any, company_id: int, item: dict[str, Any]) -> None:
        progress = dict(item["progress"] or {})
        totals = Imported(**{k: progress.get(k, 0) for k in ("created", "updated", "unchanged", "skipped")},
                          skipped_ids=list(progress.get("skipped_ids", [])))
        page = item["next_page"]
        while True:
            if self._cancel_requested(item["id"]):
                raise Cancelled
            listed = client.list_page(company_id, item["date_from"], item["date_to"], page, self.settings.page_size)
            imported = import_documents(self.store, self._db(), item["organization_id"], company_id, listed.documents,
                                        requested_by=item["requested_by"], queue_item_id=item["id"])
            totals.add(imported)
            progress = {"pages_done": page, "pages_total": listed.last_page, "documents_total": listed.total,
                        "documents_done": progress.get("documents_done", 0) + len(listed.documents),
                        "created": totals.created, "updated": totals.updated, "unchanged": totals.unchanged,
                        "skipped": totals.skipped, "skipped_ids": totals.skipped_ids, "removed": 0}
            self._update(item["id"], "next_page = %s, progress = %s", (page + 1, Jsonb(progress)))
            if self.after_page is not None:
                self.after_page(item, page)
            if page >= listed.last_page or not listed.documents:
                break
            page += 1
        progress["removed"] = mark_removed(self.store, self._db(), item["organization_id"], company_id,
                                           queue_item_id=item["id"], date_from=item["date_from"],
                                           date_to=item["date_to"], requested_by=item["requested_by"])
        self._finish(item, progress)

    def _sync_document(self, client: Any, company_id: int, item: dict[str, Any]) -> None:
        progress: dict[str, Any] = {"documents_total": 1, "documents_done": 0, "removed": 0}
        try:
            document = client.get_document(company_id, item["document_id"])
        except UpstreamNotFound:
            inv_id = invoice_id(item["organization_id"], company_id, item["document_id"])
            known = self._db().execute("SELECT 1 FROM invoice_sync_state WHERE invoice_id = %s AND NOT removed",
                                       (inv_id,)).fetchone()
            if known is None:
                raise
            invoice = self.store.repository.get(inv_id)
            invoice.mark_removed()
            self.store.save(invoice, cause=cause_for(item["organization_id"], item["requested_by"], item["id"]),
                            side_writes=[SideWrite("UPDATE invoice_sync_state SET removed = true WHERE invoice_id = %s",
                                                   (inv_id,))])
            self._finish(item, {**progress, "documents_done": 1, "removed": 1})
            return
        imported = import_documents(self.store, self._db(), item["organization_id"], company_id, [document],
                                    requested_by=item["requested_by"])
        self._finish(item, {**progress, "documents_done": 1, "created": imported.created, "updated": imported.updated,
                            "unchanged": imported.unchanged, "skipped": imported.skipped})

    # -- the thread ------------------------------------------------------------------------------------------
    def _seconds_to_next(self) -> float:
        row = self._db().execute("SELECT extract(epoch FROM min(next_attempt_at) - now()) AS s FROM invoice_sync_queue"
                                 " WHERE state IN ('queued', 'running')").fetchone()
        if row is None or row["s"] is None:
            return 60.0
        return max(0.05, min(60.0, float(row["s"])))

    def _loop(self) -> None:
        listener: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if listener is None or listener.closed or listener.broken:
                    listener = psycopg.connect(self.database_url, autocommit=True)
                    listener.execute(f"LISTEN {CHANNEL}")
                self.run_pending()
                wait = self._seconds_to_next()
                for _ in listener.notifies(timeout=wait, stop_after=1):
                    pass
            except Exception as e:  # keep draining after a database hiccup
                log.error("invoice sync worker error=%s", describe(e))
                self.close()
                if listener is not None:
                    listener.close()
                    listener = None
                self._stop.wait(2.0)
        if listener is not None:
            listener.close()
