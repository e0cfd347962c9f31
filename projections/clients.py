"""Clients read model (clients + client_contacts) and the queries the client tools answer from."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.clients import CLIENT_FIELDS, CONTACT_FIELDS, Client, email_key, phone_key, vat_key
from domain.custom_fields import CustomField
from domain.errors import NotFound
from domain.personal_data import ERASED
from projections.base import (Projection, exists, handles, handles_many, rows_json, set_columns, set_columns_many,
                              local_date, touch)
from projections.matching import FREQUENT, Found, tsquery_literal
from projections import custom_fields as custom_values
from projections.pagination import BY_CREATION, NEWEST, RECENTLY_UPDATED, by_name, paginate

SEARCH_REFRESH = """
WITH names AS (
  SELECT c.id, (SELECT string_agg(nullif(k.name, '[erased]'), ' ' ORDER BY k.created_at, k.id) FROM client_contacts k WHERE k.client_id = c.id) AS names
  FROM clients c WHERE c.id = ANY(%(ids)s)
),
updated AS (
  UPDATE clients c SET
    search_text = lower(f_unaccent(concat_ws(' ', c.business_name, nullif(c.contact_name, '[erased]'), names.names))),
    search_tsv = to_tsvector('simple', lower(f_unaccent(concat_ws(' ', c.business_name,
                                                                 nullif(c.contact_name, '[erased]'), names.names,
                                                                 f_custom_text(c.custom_fields)))))
  FROM names WHERE c.id = names.id
  RETURNING c.organization_id, c.search_tsv
)
INSERT INTO client_search_words (organization_id, word)
SELECT DISTINCT organization_id, unnest(tsvector_to_array(search_tsv)) FROM updated
ON CONFLICT DO NOTHING
"""
"""Clients' search text and words, for one client or many at once (the words table only grows here: the order of
clients does not matter)."""
CREATED_MANY = """
WITH inserted AS (
  INSERT INTO clients (id, organization_id, kind, status, business_name, contact_name, vat_number, tax_code,
    email, phone, website, address, source, assigned_to, created_by, created_at, updated_at,
    vat_key, email_key, phone_key, search_text, search_tsv)
  SELECT r.id, r.organization_id, r.kind, r.status, r.business_name, r.contact_name, r.vat_number, r.tax_code,
    r.email, r.phone, r.website, r.address, r.source, r.assigned_to, r.created_by, r.created_at, r.created_at,
    r.vat_key, r.email_key, r.phone_key, n.names, to_tsvector('simple', n.names)
  FROM jsonb_populate_recordset(null::clients, %s::jsonb) r,
       LATERAL (SELECT lower(f_unaccent(concat_ws(' ', r.business_name::text,
                                                  nullif(r.contact_name::text, '[erased]')))) AS names) n
  RETURNING organization_id, search_tsv
)
INSERT INTO client_search_words (organization_id, word)
SELECT DISTINCT organization_id, unnest(tsvector_to_array(search_tsv)) FROM inserted
ON CONFLICT DO NOTHING
"""


def _db_value(key: str, value: Any) -> Any:
    return Jsonb(value) if key == "address" and value is not None else value


def _key(keyfn: Any, value: Any) -> Any:
    """A normalised VAT/e-mail/phone key; an erased value has none (it matches nothing, groups with nothing)."""
    return None if value == ERASED else keyfn(value)


ERASE_CLIENT = """
UPDATE clients SET
  contact_name = CASE WHEN contact_name IS NULL THEN NULL ELSE %(x)s END,
  tax_code = CASE WHEN tax_code IS NULL THEN NULL ELSE %(x)s END,
  email = CASE WHEN email IS NULL THEN NULL ELSE %(x)s END,
  phone = CASE WHEN phone IS NULL THEN NULL ELSE %(x)s END,
  address = CASE WHEN jsonb_typeof(address) = 'object' THEN
    (SELECT coalesce(jsonb_object_agg(k, CASE WHEN jsonb_typeof(v) = 'string' THEN to_jsonb(%(x)s::text) ELSE v END),
                     '{}'::jsonb) FROM jsonb_each(address) AS a(k, v)) ELSE address END,
  email_key = NULL, phone_key = NULL, updated_at = %(ts)s
WHERE id = %(id)s
"""
ERASE_CONTACTS = """
UPDATE client_contacts SET
  name = CASE WHEN name IS NULL THEN NULL ELSE %(x)s END, role = CASE WHEN role IS NULL THEN NULL ELSE %(x)s END,
  email = CASE WHEN email IS NULL THEN NULL ELSE %(x)s END, phone = CASE WHEN phone IS NULL THEN NULL ELSE %(x)s END
WHERE client_id = %(id)s
"""
FORGET_WORDS = r"""
DELETE FROM client_search_words w
WHERE w.organization_id = %(org)s AND w.word = ANY(%(words)s)
  AND NOT EXISTS (SELECT 1 FROM clients c WHERE c.organization_id = %(org)s
                  AND c.search_tsv @@ ('''' || replace(replace(w.word, '\', '\\'), '''', '''''') || '''')::tsquery)
"""
"""Words of the search lexicon that no client uses any more (each word matched exactly, as a quoted lexeme)."""


class ClientsProjection(Projection):
    name = "clients"
    tables = ("clients", "client_contacts", "client_search_words")
    resources = ("clients",)

    def _set(self, cur: Any, event: Any, values: dict[str, Any]) -> None:
        values = {k: _db_value(k, v) for k, v in values.items()}
        for field, keyfn in (("vat_number", vat_key), ("email", email_key), ("phone", phone_key)):
            if field in values:
                values[field.split("_")[0] + "_key"] = _key(keyfn, values[field])
        set_columns(cur, "clients", event, values)

    def _refresh_search(self, cur: Any, client_id: UUID) -> None:
        cur.execute(SEARCH_REFRESH, {"ids": [client_id]})

    @staticmethod
    def _columns(values: dict[str, Any]) -> dict[str, Any]:
        """What `_set` writes, as plain values (the address as its mapping, read back as jsonb)."""
        values = dict(values)
        for field, keyfn in (("vat_number", vat_key), ("email", email_key), ("phone", phone_key)):
            if field in values:
                values[field.split("_")[0] + "_key"] = _key(keyfn, values[field])
        return values

    # -- set-based twins of the handlers below, for batches (a rebuild, a busy live stream) ----------------------
    @handles_many(Client.Created)
    def created_many(self, cur: Any, items: list[tuple[Any, int | None]]) -> None:
        rows = []
        for e, _ in items:
            f = {c: e.fields.get(c) for c in CLIENT_FIELDS}
            rows.append({**f, "id": e.originator_id, "organization_id": e.org_id, "kind": e.kind, "status": e.status,
                         "assigned_to": e.assigned_to, "created_by": e.created_by, "created_at": e.timestamp,
                         "vat_key": _key(vat_key, f["vat_number"]), "email_key": _key(email_key, f["email"]),
                         "phone_key": _key(phone_key, f["phone"])})
        cur.execute(CREATED_MANY, (rows_json(rows),))

    @handles_many(Client.Updated, Client.StatusChanged, Client.ConvertedToClient, Client.Assigned, Client.Unassigned)
    def set_many(self, cur: Any, items: list[tuple[Any, int | None]]) -> None:
        rows, names = [], []
        for e, _ in items:
            if isinstance(e, Client.Updated):
                values = dict(e.changes)
                if {"business_name", "contact_name"} & set(e.changes):
                    names.append(e.originator_id)
            elif isinstance(e, Client.StatusChanged):
                values = {"status": e.status}
            elif isinstance(e, Client.ConvertedToClient):
                values = {"kind": "client", "status": None, "converted_at": e.timestamp}
            elif isinstance(e, Client.Assigned):
                values = {"assigned_to": e.user_id}
            else:
                values = {"assigned_to": None}
            rows.append((e, self._columns(values)))
        set_columns_many(cur, "clients", rows)
        if names:
            cur.execute(SEARCH_REFRESH, {"ids": names})

    @handles_many(Client.Tagged, Client.Untagged)
    def tags_many(self, cur: Any, items: list[tuple[Any, int | None]]) -> None:
        rows = [{"id": e.originator_id, "tag": e.tag, "ts": e.timestamp} for e, _ in items]
        change = "array_append" if isinstance(items[0][0], Client.Tagged) else "array_remove"
        cur.execute(f"UPDATE clients c SET tags = {change}(c.tags, r.tag), updated_at = r.ts"  # noqa: S608
                    " FROM jsonb_to_recordset(%s::jsonb) AS r(id uuid, tag text, ts timestamptz) WHERE c.id = r.id",
                    (rows_json(rows),))

    @handles_many(Client.ContactAdded)
    def contacts_added_many(self, cur: Any, items: list[tuple[Any, int | None]]) -> None:
        rows = [{"id": e.contact_id, "client_id": e.originator_id, "name": e.fields.get("name"),
                 "role": e.fields.get("role"), "email": e.fields.get("email"), "phone": e.fields.get("phone"),
                 "created_at": e.timestamp} for e, _ in items]
        cur.execute("INSERT INTO client_contacts (id, organization_id, client_id, name, role, email, phone, created_at)"
                    " SELECT r.id, c.organization_id, c.id, r.name, r.role, r.email, r.phone, r.created_at"
                    " FROM jsonb_populate_recordset(null::client_contacts, %s::jsonb) r JOIN clients c ON c.id = r.client_id",
                    (rows_json(rows),))
        set_columns_many(cur, "clients", [(e, {}) for e, _ in items])
        cur.execute(SEARCH_REFRESH, {"ids": [e.originator_id for e, _ in items]})

    @handles(Client.Created)
    def created(self, cur: Any, e: Any) -> None:
        f = {c: e.fields.get(c) for c in CLIENT_FIELDS}
        cur.execute(
            """
            WITH inserted AS (
              INSERT INTO clients (id, organization_id, kind, status, business_name, contact_name, vat_number, tax_code,
                email, phone, website, address, source, assigned_to, created_by, created_at, updated_at,
                vat_key, email_key, phone_key, search_text, search_tsv)
              SELECT %(id)s, %(org)s, %(kind)s, %(status)s, %(business_name)s, %(contact_name)s, %(vat_number)s,
                %(tax_code)s, %(email)s, %(phone)s, %(website)s, %(address)s, %(source)s, %(assigned_to)s,
                %(created_by)s, %(ts)s, %(ts)s, %(vat_key)s, %(email_key)s, %(phone_key)s, names, to_tsvector('simple', names)
              FROM (SELECT lower(f_unaccent(concat_ws(' ', %(business_name)s::text,
                                                      nullif(%(contact_name)s::text, '[erased]')))) AS names) n
              RETURNING organization_id, search_tsv
            )
            INSERT INTO client_search_words (organization_id, word)
            SELECT organization_id, unnest(tsvector_to_array(search_tsv)) FROM inserted
            ON CONFLICT DO NOTHING
            """,
            {**f, "id": e.originator_id, "org": e.org_id, "kind": e.kind, "status": e.status,
             "address": _db_value("address", f["address"]), "assigned_to": e.assigned_to, "created_by": e.created_by,
             "ts": e.timestamp, "vat_key": _key(vat_key, f["vat_number"]), "email_key": _key(email_key, f["email"]),
             "phone_key": _key(phone_key, f["phone"])},
        )

    @handles(Client.Updated)
    def updated(self, cur: Any, e: Any) -> None:
        self._set(cur, e, dict(e.changes))
        if {"business_name", "contact_name"} & set(e.changes):
            self._refresh_search(cur, e.originator_id)

    @handles(Client.StatusChanged)
    def status_changed(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"status": e.status})

    @handles(Client.ConvertedToClient)
    def converted(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"kind": "client", "status": None, "converted_at": e.timestamp})

    @handles(Client.Assigned)
    def assigned(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"assigned_to": e.user_id})

    @handles(Client.Unassigned)
    def unassigned(self, cur: Any, e: Any) -> None:
        self._set(cur, e, {"assigned_to": None})

    @handles(Client.Tagged)
    def tagged(self, cur: Any, e: Any) -> None:
        touch(cur, "clients", e, "tags = array_append(tags, %s)", (e.tag,))

    @handles(Client.Untagged)
    def untagged(self, cur: Any, e: Any) -> None:
        touch(cur, "clients", e, "tags = array_remove(tags, %s)", (e.tag,))

    def _insert_contact(self, cur: Any, e: Any, contact: dict[str, Any]) -> None:
        cur.execute(
            "INSERT INTO client_contacts (id, organization_id, client_id, name, role, email, phone, created_at)"
            " SELECT %s, organization_id, id, %s, %s, %s, %s, %s FROM clients WHERE id = %s",
            (contact["id"], contact.get("name"), contact.get("role"), contact.get("email"), contact.get("phone"),
             e.timestamp, e.originator_id),
        )

    @handles(Client.ContactAdded)
    def contact_added(self, cur: Any, e: Any) -> None:
        self._insert_contact(cur, e, {"id": e.contact_id, **e.fields})
        self._set(cur, e, {})
        self._refresh_search(cur, e.originator_id)

    @handles(Client.ContactUpdated)
    def contact_updated(self, cur: Any, e: Any) -> None:
        changes = {k: v for k, v in e.changes.items() if k in CONTACT_FIELDS}
        if changes:
            sets = ", ".join(f"{k} = %({k})s" for k in changes)
            cur.execute(f"UPDATE client_contacts SET {sets} WHERE id = %(_id)s", {**changes, "_id": e.contact_id})  # noqa: S608
        self._set(cur, e, {})
        self._refresh_search(cur, e.originator_id)

    @handles(Client.ContactRemoved)
    def contact_removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM client_contacts WHERE id = %s", (e.contact_id,))
        self._set(cur, e, {})
        self._refresh_search(cur, e.originator_id)

    @handles(Client.Absorbed)
    def absorbed(self, cur: Any, e: Any) -> None:
        self._set(cur, e, dict(e.filled))
        for tag in e.tags:
            cur.execute("UPDATE clients SET tags = array_append(tags, %s) WHERE id = %s", (tag, e.originator_id))
        for contact in e.contacts:
            cur.execute("DELETE FROM client_contacts WHERE id = %s", (contact["id"],))
            self._insert_contact(cur, e, contact)
        self._refresh_search(cur, e.originator_id)

    @handles(Client.MergedInto, Client.Deleted)
    def removed(self, cur: Any, e: Any) -> None:
        cur.execute("DELETE FROM clients WHERE id = %s", (e.originator_id,))


    @handles(Client.PersonalDataErased)
    def personal_data_erased(self, cur: Any, e: Any) -> None:
        """The person's fields and contact persons read ERASED; words only they put in the search lexicon leave it."""
        row = cur.execute("SELECT organization_id, tsvector_to_array(search_tsv) AS words FROM clients WHERE id = %s",
                          (e.originator_id,)).fetchone()
        params = {"id": e.originator_id, "x": ERASED, "ts": e.timestamp}
        cur.execute(ERASE_CLIENT, params)
        cur.execute(ERASE_CONTACTS, params)
        if row is not None:  # a deleted client has no row left: only its events hold its data
            self._refresh_search(cur, e.originator_id)
            cur.execute(FORGET_WORDS, {"org": row["organization_id"], "words": row["words"] or []})

    @handles(Client.CustomFieldsChanged)
    def custom_fields_changed(self, cur: Any, e: Any) -> None:
        custom_values.apply(cur, "clients", e)
        self._refresh_search(cur, e.originator_id)

    @handles(CustomField.Deleted)
    def custom_field_deleted(self, cur: Any, e: Any) -> None:
        """A deleted custom field's values leave the read model (the events keep them)."""
        for row_id in custom_values.hide(cur, "clients", "client", e):
            self._refresh_search(cur, row_id)


# -- queries ---------------------------------------------------------------------------------------------
CLIENT_COLUMNS = (
    "id, kind, status, business_name, contact_name, vat_number, tax_code, email, phone, website, address, source,"
    " assigned_to, (SELECT name FROM users WHERE users.id = assigned_to) AS assigned_to_name, tags, created_by,"
    " created_at, updated_at, converted_at"
)
CLIENT_COLUMNS += f", custom_fields, {local_date('created_at')} AS created_on"
SORTS = {
    **BY_CREATION, "updated_desc": RECENTLY_UPDATED, **by_name("business_name"),
}


def list_clients(conn: Any, org_id: UUID, *, kind: str | None = None, status: str | None = None,
                 assigned_to: UUID | None = None, unassigned: bool = False, tag: str | None = None,
                 source: str | None = None, created_from: Any = None, created_to: Any = None,
                 sort: str = "created_desc", limit: int = 25, cursor: str | None = None,
                 custom: dict[str, Any] | None = None):
    where = ["organization_id = %s"]
    params: list[Any] = [org_id]
    for column, value in (("kind", kind), ("status", status), ("assigned_to", assigned_to), ("source", source)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if unassigned:
        where.append("assigned_to IS NULL")
    if tag is not None:
        where.append("tags @> ARRAY[%s]")
        params.append(tag)
    if created_from is not None:
        where.append("created_at >= %s")
        params.append(created_from)
    if created_to is not None:
        where.append("created_at < %s")
        params.append(created_to)
    if (contains := custom_values.containment(custom)) is not None:
        where.append(contains[0])
        params += contains[1]
    return paginate(conn, CLIENT_COLUMNS, "FROM clients WHERE " + " AND ".join(where), params, SORTS[sort], limit, cursor)


def get_client_row(conn: Any, org_id: UUID, client_id: UUID) -> dict[str, Any]:
    """The client's own columns, without get_client's counts and contacts: what a write answers with (the row)."""
    row = conn.execute(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE organization_id = %s AND id = %s",
                       (org_id, client_id)).fetchone()
    if row is None:
        raise NotFound("client", client_id, field="client_id")
    return row


def get_client(conn: Any, org_id: UUID, client_id: UUID) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {CLIENT_COLUMNS},"
        " (SELECT count(*) FROM notes n WHERE n.organization_id = c.organization_id AND n.subject_type = 'client'"
        "   AND n.subject_id = c.id) AS notes_count,"
        " (SELECT count(*) FROM tasks t WHERE t.organization_id = c.organization_id AND t.client_id = c.id) AS tasks_count,"
        " (SELECT count(*) FROM tasks t WHERE t.organization_id = c.organization_id AND t.client_id = c.id"
        "   AND t.status = 'open') AS open_tasks_count,"
        " (SELECT count(*) FROM deals d WHERE d.organization_id = c.organization_id AND d.client_id = c.id) AS deals_count,"
        " (SELECT count(*) FROM recordings r WHERE r.organization_id = c.organization_id AND r.client_id = c.id)"
        "   AS recordings_count,"
        " (SELECT coalesce(json_agg(json_build_object('id', k.id, 'name', k.name, 'role', k.role, 'email', k.email,"
        "   'phone', k.phone) ORDER BY k.created_at, k.id), '[]') FROM client_contacts k"
        "   WHERE k.organization_id = c.organization_id AND k.client_id = c.id) AS contacts"
        " FROM clients c WHERE c.organization_id = %s AND c.id = %s",
        (org_id, client_id),
    ).fetchone()
    if row is None:
        raise NotFound("client", client_id, field="client_id")
    return row


def list_contacts(conn: Any, org_id: UUID, client_id: UUID) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, name, role, email, phone, created_at FROM client_contacts"
        " WHERE organization_id = %s AND client_id = %s ORDER BY created_at, id",
        (org_id, client_id),
    ).fetchall()


def client_exists(conn: Any, org_id: UUID, client_id: UUID) -> bool:
    return exists(conn, "clients", org_id, client_id)


SIMILAR_WORDS_PER_TERM = 6
NAME_CANDIDATES = 500


def name_groups(conn: Any, org_id: UUID, text: str) -> list[str]:
    """One tsquery group per word of `text`: the word, from 3 letters on also as a prefix (the user may still be
    typing), or any of the similar words of this organization's lexicon (typos). Empty when `text` has no words."""
    rows = conn.execute(
        """
        SELECT t.term, array_remove(array_agg(w.word ORDER BY w.word <-> t.term), NULL) AS similar
        FROM unnest(tsvector_to_array(to_tsvector('simple', lower(f_unaccent(%s))))) AS t(term)
        LEFT JOIN LATERAL (
            SELECT word FROM client_search_words
            WHERE organization_id = %s AND word %% t.term
            ORDER BY word <-> t.term LIMIT %s
        ) w ON true
        GROUP BY t.term
        """,
        (text, org_id, SIMILAR_WORDS_PER_TERM),
    ).fetchall()
    return [tsquery_literal([row["term"], *row["similar"]], prefix={row["term"]} if len(row["term"]) >= 3 else None)
            for row in rows]


def search_statement(conn: Any, org_id: UUID, text: str, *, kind: str | None = None, limit: int = 25) -> tuple[str, dict]:
    """Best match first, tolerant of case, accents and small typos.

    Candidates come from indexes only: names by full text over typo-expanded words, VAT/e-mail/phone by their
    normalised keys (fragments of a phone number or e-mail too). Only candidates are scored: word similarity
    of the whole query to the names, plus text rank, plus a bonus for an exact VAT, e-mail or phone match.
    A broad word ('srl', 'studio') matches tens of thousands of clients: its name candidates are the newest
    NAME_CANDIDATES matches (a walk down the creation index that stops there, or for a rarer word a sort of all
    its matches: the planner sees the word's frequency, the tsquery being inline), so a page ranks a bounded set
    and, among equally good matches, newest first as the final order says."""
    digits = phone_key(text) if sum(ch.isdigit() for ch in text) >= 5 else None
    stripped = text.strip().lower()
    whole_email = re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", stripped) is not None  # answered by the exact key
    fragment = stripped if ("@" in stripped or "." in stripped) and len(stripped) >= 3 and not whole_email else None
    groups = [] if whole_email else name_groups(conn, org_id, text)  # an address is not a name
    name_query = " & ".join(groups) or None
    params = {"org": org_id, "q": text, "tsq": name_query, "vat": vat_key(text),
              "email": email_key(text), "phone": phone_key(text), "digits": digits, "fragment": fragment,
              "kind": kind, "limit": limit, "cap": NAME_CANDIDATES}
    return (
        f"""
        WITH q AS (SELECT lower(f_unaccent(%(q)s)) AS q, to_tsquery('simple', coalesce(%(tsq)s, '')) AS tsq),
        candidates AS (
            (SELECT c.id FROM clients c WHERE c.organization_id = %(org)s AND %(tsq)s::text IS NOT NULL
                AND c.search_tsv @@ to_tsquery('simple', coalesce(%(tsq)s, ''))
                ORDER BY c.created_at DESC, c.id DESC LIMIT %(cap)s)
            UNION SELECT id FROM clients WHERE organization_id = %(org)s AND vat_key = %(vat)s
            UNION SELECT id FROM clients WHERE organization_id = %(org)s AND email_key = %(email)s
            UNION SELECT id FROM clients WHERE organization_id = %(org)s AND phone_key = %(phone)s
            UNION (SELECT id FROM clients WHERE organization_id = %(org)s AND %(digits)s::text IS NOT NULL
                   AND phone_key LIKE '%%' || %(digits)s || '%%' LIMIT %(cap)s)
            UNION (SELECT id FROM clients WHERE organization_id = %(org)s AND %(fragment)s::text IS NOT NULL
                   AND email_key LIKE '%%' || %(fragment)s || '%%' LIMIT %(cap)s)
        )
        SELECT {CLIENT_COLUMNS},
               round((word_similarity(q.q, c.search_text)
                + ts_rank(c.search_tsv, q.tsq)
                + CASE WHEN c.vat_key = %(vat)s OR c.email_key = %(email)s OR c.phone_key = %(phone)s THEN 2 ELSE 0 END
               )::numeric, 4)::float AS score
        FROM candidates JOIN clients c USING (id), q
        WHERE (%(kind)s::text IS NULL OR c.kind = %(kind)s)
        ORDER BY score DESC, c.created_at DESC, c.id
        LIMIT %(limit)s
        """,
        params,
    )


ANY_WORD_SEARCH = f"""
WITH q AS (SELECT lower(f_unaccent(%(q)s)) AS q),
words AS (
    SELECT g.tsq, m.ids, ln(1 + %(frequent)s::float / greatest(cardinality(m.ids), 1)) AS weight
    FROM unnest(%(groups)s::text[]) AS t(g), LATERAL (SELECT t.g::tsquery AS tsq) g, LATERAL (
        SELECT array(SELECT id FROM clients WHERE organization_id = %(org)s AND search_tsv @@ g.tsq
                       AND (%(kind)s::text IS NULL OR kind = %(kind)s) LIMIT %(frequent)s) AS ids) m
),
candidates AS (SELECT DISTINCT unnest(ids) AS id FROM words)
SELECT {CLIENT_COLUMNS},
       round(((SELECT sum(w.weight) FROM words w WHERE c.search_tsv @@ w.tsq) / (SELECT sum(weight) FROM words)
              + word_similarity(q.q, c.search_text) / 10)::numeric, 4)::float AS score
FROM candidates JOIN clients c USING (id), q
ORDER BY score DESC, c.created_at DESC, c.id
LIMIT %(limit)s
"""
"""Each word's matches are probed on their own (capped), so a rare word's rows are all candidates even when a
common one matches thousands; the score is the share of the query's weight a client matches."""


def search_clients(conn: Any, org_id: UUID, text: str, *, kind: str | None = None, limit: int = 25) -> Found:
    """Best match first, tolerant of case, accents and small typos (see `search_statement`); when no client has
    every word, those with any of them (ANY_WORD_SEARCH)."""
    # Never a prepared statement: a generic plan cannot drop the branches a query does not use nor see how common
    # its words are (a broad word took 35x longer once psycopg had prepared the statement).
    rows = conn.execute(*search_statement(conn, org_id, text, kind=kind, limit=limit), prepare=False).fetchall()
    if rows:
        return Found(rows, "all")
    groups = name_groups(conn, org_id, text)
    if len(groups) < 2:
        return Found(rows, "all")
    return Found.some_words(conn.execute(ANY_WORD_SEARCH, {"q": text, "org": org_id, "groups": groups, "kind": kind,
                                                "frequent": FREQUENT, "limit": limit}, prepare=False).fetchall())


def find_duplicates(conn: Any, org_id: UUID, *, by: str = "any", limit: int = 50) -> list[dict[str, Any]]:
    """Groups of clients sharing a normalised VAT number, e-mail or phone."""
    keys = ["vat", "email", "phone"] if by == "any" else [by]
    groups: list[dict[str, Any]] = []
    for key in keys:
        rows = conn.execute(
            f"SELECT {key}_key AS value, array_agg(id ORDER BY created_at, id) AS ids FROM clients"  # noqa: S608
            f" WHERE organization_id = %s AND {key}_key IS NOT NULL GROUP BY {key}_key HAVING count(*) > 1"
            f" ORDER BY count(*) DESC, {key}_key LIMIT %s",
            (org_id, limit),
        ).fetchall()
        for r in rows:
            members = conn.execute(
                f"SELECT {CLIENT_COLUMNS} FROM clients WHERE organization_id = %s AND id = ANY(%s) ORDER BY created_at, id",
                (org_id, r["ids"]),
            ).fetchall()
            groups.append({"match": key, "value": r["value"], "clients": members})
    return groups[:limit]
