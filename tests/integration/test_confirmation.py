"""Confirmed destructive calls (application/confirmation.py): preview changes nothing, the confirmation does exactly
the previewed effect or nothing, and a confirmation confirms only the very call it was issued for."""

from __future__ import annotations

import time
import uuid

import jsonschema
import psycopg
import pytest
from psycopg.rows import dict_row

from application import confirmation, identity
from application.errors import ToolError
from application.inventory import registry
from interfaces.mcp_server import SERVER_INSTRUCTIONS
from tests.inprocess import Caller
from tests.tool_args import sample_args
from tests.world import seed


def _org_state(db, org_id) -> tuple:
    """What a call could change: the organization's events, settings changes and auth rows."""
    events = db.execute("SELECT count(*) AS n, coalesce(max(notification_id), 0) AS last FROM stored_events"
                        " WHERE organization_id = %s", (org_id,)).fetchone()
    changes = db.execute("SELECT count(*) AS n FROM settings_changes WHERE organization_id = %s", (org_id,)).fetchone()
    tokens = db.execute("SELECT count(*) FILTER (WHERE revoked_at IS NULL) AS n FROM api_tokens WHERE organization_id = %s",
                        (org_id,)).fetchone()
    users = db.execute("SELECT string_agg(status || role_id::text, ',' ORDER BY id) AS s FROM users"
                       " WHERE organization_id = %s", (org_id,)).fetchone()
    roles = db.execute("SELECT count(*) AS n FROM roles WHERE organization_id = %s", (org_id,)).fetchone()
    return events["n"], events["last"], changes["n"], tokens["n"], users["s"], roles["n"]


@pytest.fixture
def admin(runtime, make_org, database_url):
    org = make_org("Confirm")
    return org, Caller(runtime, org.principal(database_url))


def test_destructive_tools_publish_preview_and_confirmation_once_and_only_they():
    assert "preview:true" in SERVER_INSTRUCTIONS and "confirmation" in SERVER_INSTRUCTIONS
    for op in registry:
        schema, out = op.input_schema(), op.output_schema()
        if op.confirmable:
            assert {"preview", "confirmation"} <= set(schema["properties"]), op.name
            assert "preview:true" not in op.description  # the server instructions say it once for all of them
            assert out["properties"]["preview"] == {"type": "object"}
            assert "preview" not in op.input.__struct_fields__  # taken off by the runner, never the tool's own field
        else:
            assert "preview" not in schema["properties"] and "confirmation" not in schema["properties"], op.name
            assert "preview:true" not in op.description


def test_preview_changes_nothing_and_the_confirmation_does_it(admin, db):
    org, call = admin
    lead = call("crm_clients_create_lead", {"business_name": "Rossi Impianti", "vat_number": "IT01234567890"})
    before = _org_state(db, org.organization_id)
    preview = call("crm_clients_delete", {"client_id": lead["id"], "preview": True})
    assert _org_state(db, org.organization_id) == before
    assert call("crm_clients_get", {"client_id": lead["id"]})["business_name"] == "Rossi Impianti"
    shown = preview["preview"]
    assert shown["tool"] == "crm_clients_delete" and shown["counts"] == {
        "entities": 1, "events": 1, "deleted": 1, "settings_changes": 0}
    assert shown["entities"] == [{"entity": "client", "id": lead["id"], "label": "Rossi Impianti", "version": 1,
                                  "changes": ["deleted"]}]
    assert shown["events"] == [f"client 'Rossi Impianti' ({lead['id']}): deleted"]
    assert "Nothing was changed" in shown["summary"] and preview["confirmation"].startswith("v1.")
    # the preview's answer is valid against the tool's published output schema (SDK clients validate it)
    jsonschema.validate(preview, registry.get("crm_clients_delete").output_schema())

    done = call("crm_clients_delete", {"client_id": lead["id"], "confirmation": preview["confirmation"]})
    assert done == {"id": lead["id"], "entity": "client", "removed": True}
    assert call.error("crm_clients_get", {"client_id": lead["id"]}).code == "not_found"
    # the same confirmation cannot do it twice: the client changed (it is deleted)
    again = call.error("crm_clients_delete", {"client_id": lead["id"], "confirmation": preview["confirmation"]})
    assert again.code in ("not_found", "confirmation_stale")


def test_a_confirmation_is_refused_when_the_entity_changed_since_the_preview(admin, db):
    org, call = admin
    survivor = call("crm_clients_create_lead", {"business_name": "Bianchi Srl", "vat_number": "IT11111111111"})
    duplicate = call("crm_clients_create_lead", {"business_name": "Bianchi S.r.l.", "vat_number": "11111111111"})
    args = {"survivor_id": survivor["id"], "duplicate_ids": [duplicate["id"]]}
    preview = call("crm_clients_merge", {**args, "preview": True})
    assert {e["id"] for e in preview["preview"]["entities"]} == {survivor["id"], duplicate["id"]}
    call("crm_clients_update", {"client_id": duplicate["id"], "email": "nuovo@bianchi.example"})  # someone edits it
    before = _org_state(db, org.organization_id)
    stale = call.error("crm_clients_merge", {**args, "confirmation": preview["confirmation"]})
    assert stale.code == "confirmation_stale" and stale.field == "confirmation"
    assert duplicate["id"] in stale.message and "version 1, now 2" in stale.message
    assert _org_state(db, org.organization_id) == before
    assert call("crm_clients_get", {"client_id": duplicate["id"]})["business_name"] == "Bianchi S.r.l."
    fresh = call("crm_clients_merge", {**args, "preview": True})  # a new preview sees the change and can be confirmed
    merged = call("crm_clients_merge", {**args, "confirmation": fresh["confirmation"]})
    assert merged["id"] == survivor["id"] and merged["email"] == "nuovo@bianchi.example"


def test_a_confirmation_confirms_only_its_own_call(admin, make_org, runtime, database_url, db):
    org, call = admin
    one = call("crm_clients_create_lead", {"business_name": "Uno"})
    two = call("crm_clients_create_lead", {"business_name": "Due"})
    token = call("crm_clients_delete", {"client_id": one["id"], "preview": True})["confirmation"]
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:  # same org, another user
        user = identity.create_user(conn, org.organization_id, f"u{uuid.uuid4().hex[:6]}@example.com", "Second", "admin")
        second_token, _ = identity.create_token(conn, org.organization_id, user, None)
    before = _org_state(db, org.organization_id)

    other_args = call.error("crm_clients_delete", {"client_id": two["id"], "confirmation": token})
    assert (other_args.code, other_args.field) == ("confirmation_mismatch", "confirmation")
    assert "other arguments" in other_args.message
    other_tool = call.error("crm_clients_unassign", {"client_id": one["id"], "confirmation": token})
    assert other_tool.code == "confirmation_mismatch" and "crm_clients_delete" in other_tool.message
    other = make_org("Other")
    other_call = Caller(runtime, other.principal(database_url))
    other_org = other_call.error("crm_clients_delete", {"client_id": one["id"], "confirmation": token})
    assert other_org.code in ("confirmation_mismatch", "not_found")
    second = Caller(runtime, org.principal(database_url, second_token))
    assert second.error("crm_clients_delete", {"client_id": one["id"], "confirmation": token}).code == \
        "confirmation_mismatch"
    head, payload, mac = token.split(".")
    altered = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"
    for bad in (altered, token + "x", "v1.abc.def", "nonsense", "x" * 9000):
        error = call.error("crm_clients_delete", {"client_id": one["id"], "confirmation": bad})
        assert error.code in ("confirmation_invalid", "invalid_arguments") and error.field == "confirmation", bad[:20]
    assert call.error("crm_clients_delete", {"client_id": one["id"], "preview": True, "confirmation": token}).field == \
        "confirmation"
    assert call.error("crm_clients_delete", {"client_id": one["id"], "preview": "yes"}).field == "preview"
    assert _org_state(db, org.organization_id) == before
    assert call("crm_clients_get", {"client_id": one["id"]})["business_name"] == "Uno"
    # and it still confirms its own call
    assert call("crm_clients_delete", {"client_id": one["id"], "confirmation": token})["removed"] is True


def test_an_expired_confirmation_is_refused(admin, runtime):
    org, call = admin
    lead = call("crm_clients_create_lead", {"business_name": "Scaduto"})
    token = call("crm_clients_delete", {"client_id": lead["id"], "preview": True})["confirmation"]
    op = registry.get("crm_clients_delete")
    import msgspec

    params = msgspec.convert({"client_id": lead["id"]}, op.input)
    secret = confirmation.signing_secret(runtime.pool)
    principal = call.principal
    assert confirmation.verify(secret, token, op.name, principal, params).tool == op.name
    with pytest.raises(ToolError) as info:
        confirmation.verify(secret, token, op.name, principal, params, now=time.time() + confirmation.TTL_SECONDS + 5)
    assert info.value.code == "confirmation_expired"


def test_settings_changes_are_previewed_in_a_transaction_that_is_rolled_back(admin, db):
    org, call = admin
    made = call("crm_settings_create_api_token", {"name": "ci"})["token"]
    preview = call("crm_settings_revoke_api_token", {"token_id": made["id"], "preview": True})
    assert preview["preview"]["settings_changes"] == [f"api_token {made['id']}: revoked (status)"]
    row = db.execute("SELECT revoked_at FROM api_tokens WHERE id = %s", (uuid.UUID(made["id"]),)).fetchone()
    assert row["revoked_at"] is None
    done = call("crm_settings_revoke_api_token", {"token_id": made["id"], "confirmation": preview["confirmation"]})
    assert done["id"] == made["id"]
    assert db.execute("SELECT revoked_at FROM api_tokens WHERE id = %s",
                      (uuid.UUID(made["id"]),)).fetchone()["revoked_at"] is not None
    # revoked meanwhile by someone else: what the call would do changed, the confirmation is refused
    other = call("crm_settings_create_api_token", {"name": "ci2"})["token"]
    preview = call("crm_settings_revoke_api_token", {"token_id": other["id"], "preview": True})
    call("crm_settings_revoke_api_token", {"token_id": other["id"]})
    before = _org_state(db, org.organization_id)
    stale = call.error("crm_settings_revoke_api_token", {"token_id": other["id"], "confirmation": preview["confirmation"]})
    assert stale.code == "confirmation_stale"
    assert _org_state(db, org.organization_id) == before


def test_a_retried_confirmed_call_with_its_key_answers_the_first_result(admin, db):
    org, call = admin
    lead = call("crm_clients_create_lead", {"business_name": "Ripetuto"})
    token = call("crm_clients_delete", {"client_id": lead["id"], "preview": True, "idempotency_key": "k1"})["confirmation"]
    first = call("crm_clients_delete", {"client_id": lead["id"], "confirmation": token, "idempotency_key": "del-1"})
    events = _org_state(db, org.organization_id)
    assert call("crm_clients_delete", {"client_id": lead["id"], "confirmation": token, "idempotency_key": "del-1"}) == first
    assert _org_state(db, org.organization_id) == events


def test_discovery_passes_preview_and_confirmation_on(admin):
    org, call = admin
    lead = call("crm_clients_create_lead", {"business_name": "Tramite"})
    shown = call("crm_tools_call_destructive", {"name": "crm_clients_delete",
                                                "arguments": {"client_id": lead["id"], "preview": True}})
    assert shown["tool"] == "crm_clients_delete" and shown["result"]["preview"]["counts"]["deleted"] == 1
    assert call("crm_clients_get", {"client_id": lead["id"]})["business_name"] == "Tramite"
    done = call("crm_tools_call_destructive", {"name": "crm_clients_delete", "arguments": {
        "client_id": lead["id"], "confirmation": shown["result"]["confirmation"]}})
    assert done["result"]["removed"] is True


def test_every_destructive_tool_previews_without_changing_anything_then_confirms(runtime, make_org, database_url, db):
    """Over the registry (present and future tools): a preview changes nothing, and its confirmation either does the
    call or is refused exactly as the plain call would be."""
    org = make_org("EveryPreview")
    principal = org.principal(database_url)
    ids = seed(runtime, principal)
    call = Caller(runtime, principal)
    ops = sorted((op for op in registry if op.confirmable),
                 key=lambda op: (op.name.endswith("_delete") or "_delete_" in op.name, op.name))
    previewed = confirmed = 0
    for op in ops:
        args = sample_args(op, ids)
        before = _org_state(db, org.organization_id)
        try:
            preview = call(op.name, {**args, "preview": True})
        except ToolError as refused:
            assert refused.code not in ("internal_error", "confirmation_invalid"), (op.name, refused.message)
            assert _org_state(db, org.organization_id) == before, op.name
            plain = call.error(op.name, args)  # the real call is refused alike
            assert plain.code == refused.code, (op.name, plain.code, refused.code)
            continue
        previewed += 1
        assert _org_state(db, org.organization_id) == before, f"{op.name}: its preview changed something"
        jsonschema.validate(preview, op.output_schema())
        call(op.name, {**args, "confirmation": preview["confirmation"]})
        confirmed += 1
    assert previewed >= len(ops) * 2 // 3 and confirmed == previewed, (previewed, len(ops))
