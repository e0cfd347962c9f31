"""Erasure on request (GDPR art. 17) by crypto-shredding (application/personal_data.py).

A lead's personal data is encrypted in its events with the lead's key; erasing destroys the key. Then the read
models, search, the event history (decoded events), as-of states (aggregates replayed to a version) and a full
rebuild all show "[erased]"; the key table never holds a plaintext key; logs hold neither keys nor the data.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg.rows import dict_row

from application import identity, personal_data
from domain.personal_data import ERASED
from tests.conftest import flusia
from tests.inprocess import Caller

PERSON = {"contact_name": "Mario Rossi", "email": "mario.rossi@privato.example", "phone": "+39 333 765 4321",
          "tax_code": "RSSMRA80A01H501U", "address": {"street": "Via Appia 12", "city": "Roma"}}
SECRETS = ("Mario Rossi", "mario.rossi@privato.example", "765 4321", "RSSMRA80A01H501U", "Via Appia 12",
           "Lucia Bianchi", "lucia@privato.example", "ama il blu", "chiamata con Mario")


def _org(rt: Any, url: str, name: str = "Privacy") -> tuple[Any, Caller]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        created = identity.create_organization(conn, f"{name} {uuid.uuid4().hex[:6]}", f"a{uuid.uuid4().hex[:6]}@x.example",
                                               "Admin")
        principal = identity.principal_for_token(conn, created.token)
    return created, Caller(rt, principal)


def _person(call: Caller) -> dict[str, Any]:
    lead = call("crm_clients_create_lead", {"business_name": "Rossi Impianti", "vat_number": "IT01234567890", **PERSON})
    contact = call("crm_clients_add_contact", {"client_id": lead["id"], "name": "Lucia Bianchi",
                                               "email": "lucia@privato.example", "role": "Titolare"})
    note = call("crm_clients_add_note", {"client_id": lead["id"], "body": "Mario ama il blu"})
    recording = call("crm_clients_add_recording", {"client_id": lead["id"], "media_url": "https://rec.example/1.mp3",
                                                   "duration_seconds": 60, "transcript": "chiamata con Mario"})
    deal = call("crm_deals_create", {"title": "Impianto", "client_id": lead["id"]})
    call("crm_deals_add_contact", {"deal_id": deal["id"], "contact_id": contact["id"]})
    return {"lead": lead, "contact": contact, "note": note, "recording": recording, "deal": deal}


def _raw_events(conn: Any, aggregate_ids: list[str]) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM stored_events WHERE originator_id = ANY(%s) ORDER BY notification_id",
                        ([uuid.UUID(i) for i in aggregate_ids],)).fetchall()


def _decoded(rt: Any, rows: list[dict[str, Any]]) -> list[Any]:
    return [rt.store.mapper.to_domain_event(StoredEvent(
        originator_id=r["originator_id"], originator_version=r["originator_version"], topic=r["topic"],
        state=bytes(r["state"]))) for r in rows]


def _shown(call: Caller, made: dict[str, Any]) -> str:
    """Everything the tools show about the person."""
    lead_id = made["lead"]["id"]
    parts = [call("crm_clients_get", {"client_id": lead_id}), call("crm_clients_list", {}),
             call("crm_clients_list_contacts", {"client_id": lead_id}), call("crm_clients_list_notes", {"client_id": lead_id}),
             call("crm_clients_get_recording", {"recording_id": made["recording"]["id"]}),
             call("crm_clients_list_recordings", {"client_id": lead_id}),
             call("crm_deals_list_contacts", {"deal_id": made["deal"]["id"]}),
             call("crm_activities_timeline", {"client_id": lead_id})]
    return repr(parts)


def _read_models(conn: Any, org_id: Any) -> list[Any]:
    """The read rows holding the person's data, in a stable form (for comparing live and rebuilt)."""
    return [
        conn.execute("SELECT id, business_name, contact_name, email, phone, tax_code, address, email_key, phone_key,"
                     " search_text, updated_at FROM clients WHERE organization_id = %s ORDER BY id", (org_id,)).fetchall(),
        conn.execute("SELECT id, name, role, email, phone FROM client_contacts WHERE organization_id = %s ORDER BY id",
                     (org_id,)).fetchall(),
        conn.execute("SELECT id, body, updated_at FROM notes WHERE organization_id = %s ORDER BY id", (org_id,)).fetchall(),
        conn.execute("SELECT id, transcript FROM recordings WHERE organization_id = %s ORDER BY id", (org_id,)).fetchall(),
        conn.execute("SELECT id, body FROM timeline_entries WHERE organization_id = %s AND kind = 'note' ORDER BY id",
                     (org_id,)).fetchall(),
        conn.execute("SELECT contact_id, name FROM deal_contacts WHERE organization_id = %s ORDER BY contact_id",
                     (org_id,)).fetchall(),
        conn.execute("SELECT word FROM client_search_words WHERE organization_id = %s ORDER BY word", (org_id,)).fetchall(),
    ]


def test_personal_data_is_encrypted_in_events_and_readable_until_erased(iso_runtime, fresh_database_url):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    made = _person(call)
    shown = _shown(call, made)
    for secret in SECRETS:
        assert secret in shown, secret
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        rows = _raw_events(conn, [made["lead"]["id"], made["note"]["id"], made["recording"]["id"], made["deal"]["id"]])
        stored = b"".join(bytes(r["state"]) for r in rows)
        for secret in SECRETS:
            assert secret.encode() not in stored, f"{secret} stored in plaintext"
        assert b"Rossi Impianti" in stored and b"Titolare" not in stored  # business data stays readable
        assert personal_data.MARK in stored
    found = call("crm_clients_search", {"q": "Mario Rossi"})["items"]
    assert [c["id"] for c in found] == [made["lead"]["id"]]
    assert call("crm_clients_search", {"q": "mario.rossi@privato.example"})["items"][0]["id"] == made["lead"]["id"]


def test_erasure_shows_everywhere_and_survives_a_full_rebuild(iso_runtime, fresh_database_url, caplog):
    rt = iso_runtime
    caplog.set_level(logging.DEBUG)
    org, call = _org(rt, fresh_database_url)
    made = _person(call)
    other = call("crm_clients_create_lead", {"business_name": "Altro Cliente", "contact_name": "Giulia Neri",
                                             "email": "giulia@altro.example"})
    lead_id = made["lead"]["id"]
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        raw_keys = [row["sealed_key"] for row in conn.execute("SELECT sealed_key FROM personal_data_keys").fetchall()]
        plain_keys = [base64.urlsafe_b64encode(rt.store.keyring.active_key(org.organization_id, uuid.UUID(i))[1]).decode()
                      for i in (lead_id, other["id"])]

        erased = call("crm_clients_erase_personal_data", {"client_id": lead_id})
        assert erased == {"client_id": lead_id, "erased": True, "merged_duplicates": 0, "notes": 1, "recordings": 1,
                          "deals": 1, "keys_destroyed": 1}

        # read models and search
        got = call("crm_clients_get", {"client_id": lead_id})
        assert got["business_name"] == "Rossi Impianti" and got["vat_number"] == "IT01234567890"
        assert {k: got[k] for k in ("contact_name", "email", "phone", "tax_code")} == dict.fromkeys(
            ("contact_name", "email", "phone", "tax_code"), ERASED)
        assert got["address"] == {"street": ERASED, "city": ERASED}
        assert got["contacts"] == [{"id": made["contact"]["id"], "name": ERASED, "role": ERASED, "email": ERASED}]
        shown = _shown(call, made)
        for secret in SECRETS:
            assert secret not in shown, secret
        assert ERASED in shown
        assert call("crm_clients_search", {"q": "mario.rossi@privato.example"})["items"] == []
        assert lead_id not in {c["id"] for c in call("crm_clients_search", {"q": "Lucia Bianchi"})["items"]}
        words = {r["word"] for r in conn.execute("SELECT word FROM client_search_words WHERE organization_id = %s",
                                                 (org.organization_id,))}
        assert {"mario", "lucia", "bianchi"}.isdisjoint(words) and {"rossi", "impianti", "giulia"} <= words
        assert call("crm_clients_get", {"client_id": other["id"]})["email"] == "giulia@altro.example"  # others untouched

        # history: the stored events, decoded, and the aggregate as of each version
        rows = _raw_events(conn, [lead_id, made["note"]["id"], made["recording"]["id"], made["deal"]["id"]])
        history = repr([vars(e) for e in _decoded(rt, rows)])
        for secret in SECRETS:
            assert secret not in history, secret
        assert "Rossi Impianti" in history and ERASED in history
        from application.workflow_engine import decode

        assert "Mario Rossi" not in repr([vars(decode(r)) for r in rows])  # the workflow engine's reader too
        audited = repr([call("crm_audit_entity_history", {"entity_id": i, "limit": 100})
                        for i in (lead_id, made["note"]["id"], made["recording"]["id"], made["deal"]["id"])])
        as_of = call("crm_audit_entity_as_of", {"entity_id": lead_id, "version": 2})  # before the erasure
        for secret in SECRETS:
            assert secret not in audited and secret not in repr(as_of), secret
        assert ERASED in audited and ERASED in repr(as_of) and "Rossi Impianti" in repr(as_of)
        first = rt.store.repository.get(uuid.UUID(lead_id), version=1)  # as of its creation
        assert (first.contact_name, first.email, first.business_name) == (ERASED, ERASED, "Rossi Impianti")
        assert rt.store.repository.get(uuid.UUID(made["note"]["id"])).body == ERASED

        # the keys: sealed, never plaintext; the erased one destroyed
        keys = conn.execute("SELECT subject_id, sealed_key, erased_at FROM personal_data_keys ORDER BY seq").fetchall()
        assert all(k["sealed_key"] is None or k["sealed_key"].startswith("v1.") for k in keys)
        assert [k["erased_at"] is not None for k in keys if str(k["subject_id"]) == lead_id] == [True]
        table = repr(keys) + repr(raw_keys)
        for plain in plain_keys:
            assert plain not in table and plain.rstrip("=") not in table

        live = _read_models(conn, org.organization_id)
        for projection in rt.projections:
            if projection.rebuildable:
                rt.projector.rebuild_report(projection, lambda done, total: None)
        rt.store.keyring.forget()
        assert _read_models(conn, org.organization_id) == live  # a full rebuild gives the same erased rows
        shown = _shown(call, made)
        for secret in SECRETS:
            assert secret not in shown, secret

    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (*SECRETS, *plain_keys, *(k.rstrip("=") for k in plain_keys)):
        assert secret not in logs


def test_data_given_after_the_erasure_is_kept_with_a_new_key(iso_runtime, fresh_database_url):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    lead = call("crm_clients_create_lead", {"business_name": "Ritorno", "email": "vecchio@privato.example"})
    call("crm_clients_erase_personal_data", {"client_id": lead["id"]})
    call("crm_clients_update", {"client_id": lead["id"], "email": "nuovo@privato.example"})
    assert call("crm_clients_get", {"client_id": lead["id"]})["email"] == "nuovo@privato.example"
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        keys = conn.execute("SELECT erased_at IS NULL AS active FROM personal_data_keys WHERE subject_id = %s"
                            " ORDER BY seq", (uuid.UUID(lead["id"]),)).fetchall()
    assert [k["active"] for k in keys] == [False, True]
    rt.projector.rebuild_report(rt.projection("clients"), lambda done, total: None)
    assert call("crm_clients_get", {"client_id": lead["id"]})["email"] == "nuovo@privato.example"


def test_merged_duplicates_deleted_clients_and_tenants(iso_runtime, fresh_database_url):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    survivor = call("crm_clients_create_lead", {"business_name": "Verdi Srl", "vat_number": "IT22222222222"})
    duplicate = call("crm_clients_create_lead", {"business_name": "Verdi", "vat_number": "22222222222",
                                                 "contact_name": "Anna Verdi", "email": "anna@verdi.example"})
    dup_note = call("crm_clients_add_note", {"client_id": duplicate["id"], "body": "Anna preferisce il mattino"})
    call("crm_clients_merge", {"survivor_id": survivor["id"], "duplicate_ids": [duplicate["id"]]})
    assert call("crm_clients_get", {"client_id": survivor["id"]})["email"] == "anna@verdi.example"
    merged = call.error("crm_clients_erase_personal_data", {"client_id": duplicate["id"]})
    assert merged.field == "client_id" and survivor["id"] in merged.message
    done = call("crm_clients_erase_personal_data", {"client_id": survivor["id"]})
    assert done["merged_duplicates"] == 1 and done["notes"] == 1 and done["keys_destroyed"] == 2
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        history = repr([vars(e) for e in _decoded(rt, _raw_events(conn, [duplicate["id"], dup_note["id"]]))])
    assert "Anna" not in history and "anna@verdi.example" not in history

    deleted = call("crm_clients_create_lead", {"business_name": "Cancellato", "contact_name": "Paolo Gialli"})
    call("crm_clients_delete", {"client_id": deleted["id"]})
    assert call("crm_clients_erase_personal_data", {"client_id": deleted["id"]})["keys_destroyed"] == 1
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        assert "Paolo" not in repr([vars(e) for e in _decoded(rt, _raw_events(conn, [deleted["id"]]))])

    _, stranger = _org(rt, fresh_database_url, "Stranger")
    assert stranger.error("crm_clients_erase_personal_data", {"client_id": survivor["id"]}).code == "not_found"


def test_events_written_before_encryption_read_as_erased_once_erased(iso_runtime, fresh_database_url, monkeypatch):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    monkeypatch.setattr(personal_data, "keys_for", lambda *a, **k: {})  # what the store wrote before this change
    old = call("crm_clients_create_lead", {"business_name": "Storico", "contact_name": "Elena Viola",
                                           "email": "elena@viola.example"})
    note = call("crm_clients_add_note", {"client_id": old["id"], "body": "Elena al telefono"})
    monkeypatch.undo()
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        rows = _raw_events(conn, [old["id"], note["id"]])
        assert b"elena@viola.example" in b"".join(bytes(r["state"]) for r in rows)  # plaintext, as before
        call("crm_clients_erase_personal_data", {"client_id": old["id"]})
        rt.store.keyring.forget()
        history = repr([vars(e) for e in _decoded(rt, rows)])
    assert "Elena" not in history and "elena@viola.example" not in history and "Storico" in history
    audited = repr(call("crm_audit_entity_history", {"entity_id": old["id"]})) + repr(
        call("crm_audit_entity_history", {"entity_id": note["id"]}))
    assert "Elena" not in audited and "elena@viola.example" not in audited and ERASED in audited
    assert call("crm_clients_get", {"client_id": old["id"]})["contact_name"] == ERASED
    for projection in rt.projections:
        if projection.rebuildable:
            rt.projector.rebuild_report(projection, lambda done, total: None)
    assert call("crm_clients_get", {"client_id": old["id"]})["email"] == ERASED
    assert call("crm_clients_list_notes", {"client_id": old["id"]})["items"][0]["body"] == ERASED


def test_preview_of_an_erasure_destroys_nothing(iso_runtime, fresh_database_url):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    lead = call("crm_clients_create_lead", {"business_name": "Prudente", "contact_name": "Marco Blu"})
    preview = call("crm_clients_erase_personal_data", {"client_id": lead["id"], "preview": True})
    assert preview["preview"]["events"] == [f"client 'Prudente' ({lead['id']}): personal data erased"]
    assert call("crm_clients_get", {"client_id": lead["id"]})["contact_name"] == "Marco Blu"
    call("crm_clients_erase_personal_data", {"client_id": lead["id"], "confirmation": preview["confirmation"]})
    assert call("crm_clients_get", {"client_id": lead["id"]})["contact_name"] == ERASED


def test_cli_gdpr_erase(iso_runtime, fresh_database_url):
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    lead = call("crm_clients_create_lead", {"business_name": "Da riga di comando", "email": "cli@privato.example"})
    out = flusia("gdpr", "erase", "--org", str(org.organization_id), "--client", lead["id"],
                 env={"DATABASE_URL": fresh_database_url})
    assert out["erased"] is True and out["keys_destroyed"] == 1
    rt.settle()
    rt.store.keyring.forget()
    assert call("crm_clients_get", {"client_id": lead["id"]})["email"] == ERASED
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        cause = conn.execute("SELECT c.user_id, c.tool FROM event_causes c JOIN stored_events e ON e.notification_id"
                             " BETWEEN c.first_notification_id AND c.last_notification_id WHERE e.topic = %s",
                             (personal_data.ERASURE_TOPIC,)).fetchone()
    assert cause == {"user_id": None, "tool": "crm_clients_erase_personal_data"}


def test_restored_state_is_erased_too(iso_runtime, fresh_database_url):
    """The audit restore's compensating `<Aggregate>.Reinstated` carries the entity's whole earlier state: its
    personal values are sealed there like in the events they came from, so an erasure reaches them."""
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    made = _person(call)
    lead_id, note_id = made["lead"]["id"], made["note"]["id"]
    recording_id, deal_id = made["recording"]["id"], made["deal"]["id"]
    call("crm_clients_update", {"client_id": lead_id, "website": "https://rossi.example"})
    restored = {}
    for tool, args, entity_id in (("crm_clients_delete_note", {"client_id": lead_id, "note_id": note_id}, note_id),
                                  ("crm_clients_delete_recording", {"recording_id": recording_id}, recording_id),
                                  ("crm_deals_delete", {"deal_id": deal_id}, deal_id),
                                  ("crm_clients_delete", {"client_id": lead_id}, lead_id)):
        call(tool, args)
        restored[entity_id] = call("crm_audit_restore_entity", {"entity_id": entity_id})
    call("crm_audit_restore_entity", {"entity_id": lead_id, "to_version": 1})  # an earlier version, not deleted
    assert call("crm_clients_get", {"client_id": lead_id})["email"] == PERSON["email"]  # readable until erased
    assert call("crm_clients_list_notes", {"client_id": lead_id})["items"][0]["body"] == "Mario ama il blu"
    assert call("crm_deals_list_contacts", {"deal_id": deal_id})["items"][0]["name"] == "Lucia Bianchi"
    ids = [lead_id, note_id, recording_id, deal_id]
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        reinstated = [r for r in _raw_events(conn, ids) if r["topic"].endswith(".Reinstated")]
        assert len(reinstated) == 5
        stored = b"".join(bytes(r["state"]) for r in reinstated)
        for secret in SECRETS:
            assert secret.encode() not in stored, f"{secret} stored in plaintext in a restore"
        assert personal_data.MARK in stored and b"Rossi Impianti" in stored and b"Impianto" in stored

        call("crm_clients_erase_personal_data", {"client_id": lead_id})

        # the raw events (never rewritten) and the event store's mapper
        rows = _raw_events(conn, ids)
        raw = b"".join(bytes(r["state"]) for r in rows)
        for secret in SECRETS:
            assert secret.encode() not in raw, secret
        decoded = [e for e in _decoded(rt, rows) if type(e).__name__ == "Reinstated"]
        assert len(decoded) == 5 and ERASED in repr([e.state for e in decoded])
        assert all(secret not in repr([vars(e) for e in decoded]) for secret in SECRETS)
        assert rt.store.repository.get(uuid.UUID(lead_id)).contact_name == ERASED

        # the audit tools: every version, as of each restore
        for entity_id in ids:
            history = call("crm_audit_entity_history", {"entity_id": entity_id, "limit": 100})
            versions = [i["version"] for i in history["items"]]
            as_of = [call("crm_audit_entity_as_of", {"entity_id": entity_id, "version": v}) for v in versions]
            shown = repr(history) + repr(as_of)
            for secret in SECRETS:
                assert secret not in shown, (entity_id, secret)
            assert ERASED in shown
        last = call("crm_audit_entity_as_of", {"entity_id": lead_id, "version": restored[lead_id]["version"]})
        assert last["state"]["contact_name"] == ERASED and last["state"]["business_name"] == "Rossi Impianti"
        assert {c["name"] for c in last["state"]["contacts"].values()} == {ERASED}

        # the read models, live and rebuilt from the first event
        live = _read_models(conn, org.organization_id)
        for projection in rt.projections:
            if projection.rebuildable:
                rt.projector.rebuild_report(projection, lambda done, total: None)
        rt.store.keyring.forget()
        rebuilt = _read_models(conn, org.organization_id)
        # the search lexicon aside: live, it still holds words of the version the client was restored away from
        # (the contact person's name; erasure forgets the words of the client's current version only)
        assert rebuilt[:-1] == live[:-1]
        assert {"mario", "lucia", "bianchi"}.isdisjoint(r["word"] for r in rebuilt[-1])
        shown = _shown(call, made) + repr(rebuilt)
        for secret in SECRETS:
            assert secret not in shown, secret
        assert call("crm_clients_get", {"client_id": lead_id})["contact_name"] == ERASED
        assert call("crm_clients_list_notes", {"client_id": lead_id})["items"][0]["body"] == ERASED


def test_restores_written_before_their_state_was_sealed_read_as_erased(iso_runtime, fresh_database_url, monkeypatch):
    """A `Reinstated` stored with its state in plaintext (before its personal paths were in the spec) reads
    "[erased]" once its entity is erased, like any event written before encryption."""
    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    lead = call("crm_clients_create_lead", {"business_name": "Vecchio Restauro", "contact_name": "Sara Rosa",
                                            "email": "sara@rosa.example"})
    call("crm_clients_delete", {"client_id": lead["id"]})
    reinstated = personal_data.SPEC.pop(personal_data.Client.Reinstated)
    try:
        call("crm_audit_restore_entity", {"entity_id": lead["id"]})
    finally:
        personal_data.SPEC[personal_data.Client.Reinstated] = reinstated
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        rows = _raw_events(conn, [lead["id"]])
        assert b"sara@rosa.example" in bytes(rows[-1]["state"])  # as such a restore was stored
        call("crm_clients_erase_personal_data", {"client_id": lead["id"]})
        rt.store.keyring.forget()
        history = repr([vars(e) for e in _decoded(rt, rows)])
    assert "Sara" not in history and "sara@rosa.example" not in history and "Vecchio Restauro" in history
    audited = repr(call("crm_audit_entity_history", {"entity_id": lead["id"]})) + repr(
        call("crm_audit_entity_as_of", {"entity_id": lead["id"], "version": 3}))
    assert "Sara" not in audited and "sara@rosa.example" not in audited and ERASED in audited


def test_a_batch_of_events_gets_its_keys_in_one_query_whatever_order_they_were_made(iso_runtime, fresh_database_url,
                                                                                   monkeypatch):
    """Leads saved together have their keys written in no particular order (a side write each, in one statement).
    A projector decoding them asks the key ring for every key the batch names, by id, at once: no key is then
    looked up alone, an erased one reads as erased, and the rebuilt rows are the live ones."""
    from domain.clients import Client

    rt = iso_runtime
    org, call = _org(rt, fresh_database_url)
    leads = [Client.create_lead(org.organization_id, {"business_name": f"Lotto {i}", "contact_name": f"Persona {i}"},
                                None, org.user_id) for i in range(300)]
    rt.store.save(*leads)
    rt.settle()
    erased = str(leads[7].id)
    call("crm_clients_erase_personal_data", {"client_id": erased})
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        before = _read_models(conn, org.organization_id)

    alone, queries = [], []
    ring = rt.store.keyring
    fetch_from, prefetch = ring._fetch_from, ring.prefetch
    monkeypatch.setattr(ring, "_fetch_from", lambda key_id: (alone.append(key_id), fetch_from(key_id))[1])
    monkeypatch.setattr(ring, "prefetch", lambda states: (queries.append(len(states)), prefetch(states))[1])
    rt.projector.prefetch = ring.prefetch
    ring.forget()
    clients = next(p for p in rt.projections if p.name == "clients")
    assert rt.projector.rebuild(clients) == 301  # 300 created, 1 erased
    assert alone == [] and queries  # every key came with its batch
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        assert _read_models(conn, org.organization_id) == before
        names = {str(r["id"]): r["contact_name"] for r in conn.execute(
            "SELECT id, contact_name FROM clients WHERE organization_id = %s", (org.organization_id,)).fetchall()}
    assert names[erased] == ERASED and names[str(leads[8].id)] == "Persona 8"
