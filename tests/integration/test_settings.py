"""Organization settings on PostgreSQL through the real tool runner: profile and time zone, invitations (and their
e-mail over a real SMTP server on loopback), users, the last admin, roles applied to live tokens, API tokens,
templates, the FattureInCloud connection's encrypted secret, and the settings-changes log."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiosmtpd.controller import Controller
from psycopg.rows import dict_row

from application import identity, invites
from application import secrets as sealed
from application.oauth import hash_password
from tests.conftest import free_port
from tests.inprocess import Caller


@pytest.fixture
def admin(runtime, make_org, database_url):
    org = make_org("Settings")
    return org, Caller(runtime, org.principal(database_url))


def principal(database_url, token):
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return identity.principal_for_token(conn, token)


def changes(db, org_id) -> list[dict]:
    return db.execute("SELECT * FROM settings_changes WHERE organization_id = %s ORDER BY id", (org_id,)).fetchall()


# -- profile -----------------------------------------------------------------------------------------------------
def test_time_zone_changes_what_today_and_overdue_mean_from_the_next_call(admin, runtime):
    org, call = admin
    east, west = "Pacific/Kiritimati", "Pacific/Pago_Pago"  # UTC+14 and UTC-11: their dates always differ
    east_today = dt.datetime.now(ZoneInfo(east)).date()
    west_today = dt.datetime.now(ZoneInfo(west)).date()
    assert east_today > west_today
    on_east = call("crm_tasks_create", {"title": "due east", "due_date": east_today.isoformat()})["id"]
    on_west = call("crm_tasks_create", {"title": "due west", "due_date": west_today.isoformat()})["id"]

    def due(kind: str) -> set[str]:
        return {t["id"] for t in call("crm_tasks_list", {"due": kind})["items"]}

    def created_on() -> set[str]:  # list rows show the day a task was made, in the organization's time zone
        return {t["created_on"] for t in call("crm_tasks_list", {})["items"]}

    profile = call("crm_settings_update_organization", {"timezone": west})
    assert profile["timezone"] == west and profile["today"] == west_today.isoformat()
    assert due("today") == {on_west} and due("overdue") == set()
    assert created_on() == {west_today.isoformat()}
    profile = call("crm_settings_update_organization", {"timezone": east})
    assert profile["today"] == east_today.isoformat() and profile["local_time"].endswith("+14:00")
    assert due("today") == {on_east} and due("overdue") == {on_west}
    assert created_on() == {east_today.isoformat()}
    err = call.error("crm_settings_update_organization", {"timezone": "Europe/Atlantis"})
    assert err.code == "rule_violation" and err.field == "timezone"
    assert call("crm_settings_get_organization")["timezone"] == east


def test_a_time_zone_postgresql_does_not_know_is_refused(admin, monkeypatch):
    """Python's zone list and PostgreSQL's can differ (separate tz databases): a zone only Python knows would break
    every list that shows local days, so it is refused, naming the field."""
    from domain import settings as rules

    org, call = admin
    known = rules.timezones()
    monkeypatch.setattr(rules, "timezones", lambda: known | {"Mars/Olympus_Mons"})
    err = call.error("crm_settings_update_organization", {"timezone": "Mars/Olympus_Mons"})
    assert err.field == "timezone" and "not known to this database" in err.message
    assert call("crm_settings_get_organization")["timezone"] != "Mars/Olympus_Mons"


def test_profile_fields_and_their_log(admin, db):
    org, call = admin
    out = call("crm_settings_update_organization", {
        "name": "Studio Bianchi", "vat_number": "IT01234567890", "address": {"city": "Milano", "street": "Via Roma 1"},
        "currency": "CHF", "locale": "en-GB", "logo_url": "https://cdn.example.com/logo.png"})
    assert (out["name"], out["currency"], out["locale"], out["address"]["city"]) == ("Studio Bianchi", "CHF", "en-GB", "Milano")
    assert call.error("crm_settings_update_organization", {"currency": "XYZ"}).field == "currency"
    assert call.error("crm_settings_update_organization", {"locale": "italian"}).field == "locale"
    call("crm_settings_update_organization", {"vat_number": None})
    log = changes(db, org.organization_id)
    assert [(c["entity_type"], c["action"], c["actor_user_id"]) for c in log] == [
        ("organization", "updated", org.user_id)] * 2
    assert log[0]["changes"]["currency"] == {"before": "EUR", "after": "CHF"}
    assert log[1]["changes"] == {"vat_number": {"before": "IT01234567890", "after": None}}
    assert log[0]["tool"] == "crm_settings_update_organization" and log[0]["actor_token_id"] is not None


def test_fattureincloud_token_is_encrypted_at_rest_never_returned_nor_logged(admin, db):
    org, call = admin
    token = f"a/fic-{uuid.uuid4().hex}"
    out = call("crm_settings_update_organization", {"fattureincloud": {"company_id": 4242, "access_token": token}})
    assert out["fattureincloud"] == {"configured": True, "company_id": 4242, "updated_at": out["fattureincloud"]["updated_at"]}
    assert token not in json.dumps(out)
    stored = db.execute("SELECT settings, secret FROM organization_connections WHERE organization_id = %s",
                        (org.organization_id,)).fetchone()
    assert stored["secret"].startswith("v1.") and token not in stored["secret"]
    key = sealed.server_key(db)
    assert sealed.decrypt(key, stored["secret"], context=f"{org.organization_id}:fattureincloud") == token
    with pytest.raises(sealed.SecretUnavailable):  # bound to its organization
        sealed.decrypt(key, stored["secret"], context=f"{uuid.uuid4()}:fattureincloud")
    call("crm_settings_update_organization", {"fattureincloud": {"company_id": 4343}})  # keeps the token
    assert call("crm_settings_get_organization")["fattureincloud"]["company_id"] == 4343
    log = json.dumps([c["changes"] for c in changes(db, org.organization_id)])
    assert token not in log and '"access_token": {"after": "(set)", "before": null}' in log
    call("crm_settings_update_organization", {"fattureincloud": None})
    assert call("crm_settings_get_organization")["fattureincloud"] == {"configured": False}
    err = call.error("crm_settings_update_organization", {"fattureincloud": {"company_id": 1}})
    assert err.field == "fattureincloud.access_token"


# -- users ---------------------------------------------------------------------------------------------------------
def test_invite_creates_the_user_with_a_one_time_link_valid_72_hours(admin, db):
    org, call = admin
    out = call("crm_settings_invite_user", {"email": "Giulia@Example.com", "name": "Giulia Verdi", "role": "sales"})
    user = out["user"]
    assert (user["email"], user["role"], user["status"]) == ("giulia@example.com", "sales", "invited")
    assert out["emailed"] is False and "FLUSIA_SMTP_URL" in out["email_note"]
    secret = out["invite_url"].rsplit("/", 1)[1]
    assert secret.startswith("finv_")
    row = db.execute("SELECT token_hash, expires_at - created_at AS valid FROM user_invites WHERE user_id = %s",
                     (user["id"],)).fetchone()
    assert row["valid"] == dt.timedelta(hours=72) and bytes(row["token_hash"]) == invites.digest(secret)
    assert secret not in json.dumps(db.execute("SELECT * FROM idempotency_keys WHERE organization_id = %s",
                                               (org.organization_id,)).fetchall(), default=str)
    assert invites.find(db, secret).email == "giulia@example.com"
    again = call("crm_settings_invite_user", {"email": "giulia@example.com", "name": "Giulia", "role": "viewer"})
    assert again["invite_url"] != out["invite_url"] and invites.find(db, secret) is None  # the old link is withdrawn
    new_secret = again["invite_url"].rsplit("/", 1)[1]
    done = invites.accept(db, new_secret, hash_password("correct horse battery"))
    assert done.user_id == uuid.UUID(user["id"])
    assert call("crm_settings_list_users", {"status": "active", "q": "giulia"})["items"][0]["id"] == user["id"]
    with pytest.raises(Exception):
        invites.accept(db, new_secret, hash_password("another password"))
    err = call.error("crm_settings_invite_user", {"email": "giulia@example.com", "name": "G", "role": "sales"})
    assert err.field == "email" and "already a user" in err.message
    err = call.error("crm_settings_invite_user", {"email": "x@example.com", "name": "X", "role": "boss"})
    assert err.field == "role" and "admin" in err.message


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope)
        return "250 OK"


def test_the_invitation_is_emailed_when_smtp_is_configured(admin, monkeypatch):
    org, call = admin
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv("FLUSIA_SMTP_URL", f"smtp://127.0.0.1:{port}")
        monkeypatch.setenv("FLUSIA_SMTP_FROM", "CRM <crm@example.com>")
        out = call("crm_settings_invite_user", {"email": "luca@example.com", "name": "Luca", "role": "viewer"})
    finally:
        controller.stop()
    assert out["emailed"] is True and "email_note" not in out
    (message,) = inbox.messages
    assert message.rcpt_tos == ["luca@example.com"] and message.mail_from == "crm@example.com"
    assert out["invite_url"] in message.content.decode()
    monkeypatch.setenv("FLUSIA_SMTP_URL", f"smtp://127.0.0.1:{free_port()}")  # nobody listens
    out = call("crm_settings_invite_user", {"email": "marta@example.com", "name": "Marta", "role": "viewer"})
    assert out["emailed"] is False and "could not be reached" in out["email_note"] and out["invite_url"]


def test_last_active_admin_is_protected(admin, db):
    org, call = admin
    me = str(org.user_id)
    err = call.error("crm_settings_deactivate_user", {"user_id": me})
    assert err.code == "last_admin" and err.field == "user_id"
    assert call.error("crm_settings_update_user", {"user_id": me, "role": "sales"}).code == "last_admin"
    assert call.error("crm_settings_update_user", {"user_id": me, "status": "inactive"}).code == "last_admin"
    invited = call("crm_settings_invite_user", {"email": "boss@example.com", "name": "Boss", "role": "admin"})["user"]
    assert call.error("crm_settings_update_user", {"user_id": me, "role": "sales"}).code == "last_admin"  # invited: not active
    other = identity.create_user(db, org.organization_id, "second@example.com", "Second Admin", "admin")
    demoted = call("crm_settings_update_user", {"user_id": me, "role": "sales", "name": "Former Admin"})
    assert (demoted["role"], demoted["name"]) == ("sales", "Former Admin")
    assert invited["status"] == "invited"
    log = changes(db, org.organization_id)[-1]
    assert log["changes"] == {"name": {"before": "Admin", "after": "Former Admin"}, "role": {"before": "admin", "after": "sales"}}
    assert other


def test_deactivation_cuts_api_tokens_oauth_tokens_and_invites_at_once_and_update_reactivates(admin, db, runtime):
    org, call = admin
    user = identity.create_user(db, org.organization_id, "ada@example.com", "Ada", "sales")
    token, _ = identity.create_token(db, org.organization_id, user, None)
    db.execute("INSERT INTO oauth_access_tokens (token_hash, family_id, client_id, organization_id, user_id, resource,"
               " scope, expires_at) VALUES (%s, %s, 'c', %s, %s, 'r', 'mcp:full', now() + interval '1 hour')",
               (b"h" * 32, uuid.uuid4(), org.organization_id, user))
    assert principal(runtime.database_url, token) is not None
    out = call("crm_settings_deactivate_user", {"user_id": str(user)})
    assert out["user"]["status"] == "inactive"
    assert out["revoked"] == {"api_tokens": 1, "oauth_access_tokens": 1, "oauth_refresh_tokens": 0, "invitations": 0}
    assert principal(runtime.database_url, token) is None
    assert db.execute("SELECT revoked_at FROM oauth_access_tokens WHERE user_id = %s", (user,)).fetchone()["revoked_at"]
    again = call("crm_settings_deactivate_user", {"user_id": str(user)})
    assert again["revoked"] == {}
    back = call("crm_settings_update_user", {"user_id": str(user), "status": "active"})
    assert back["status"] == "active" and principal(runtime.database_url, token) is None  # old tokens stay revoked
    assert [c["action"] for c in changes(db, org.organization_id)] == ["deactivated", "reactivated"]


# -- roles -----------------------------------------------------------------------------------------------------------
def test_a_role_change_applies_to_a_live_token_at_its_next_call(admin, db, runtime):
    org, call = admin
    role = call("crm_settings_create_role", {"name": "Support", "description": "Help desk",
                                             "permissions": {"clients": ["read"], "tasks": ["read", "write"]}})
    assert role["permissions"] == {"clients": ["read"], "tasks": ["read", "write"]} and role["users"] == []
    user = identity.create_user(db, org.organization_id, "sam@example.com", "Sam", "viewer")
    call("crm_settings_update_user", {"user_id": str(user), "role": "support"})
    token, _ = identity.create_token(db, org.organization_id, user, None)
    sam = Caller(runtime, principal(runtime.database_url, token))
    assert sam("crm_clients_list")["items"] == []
    err = sam.error("crm_clients_create_lead", {"business_name": "No"})
    assert err.code == "permission_denied" and "clients:write" in err.message
    call("crm_settings_update_role", {"role_id": role["id"], "permissions": {"clients": ["read", "write"],
                                                                            "tasks": ["read"]}})
    sam = Caller(runtime, principal(runtime.database_url, token))  # the next request resolves the token again
    assert sam("crm_clients_create_lead", {"business_name": "Now allowed"})["business_name"] == "Now allowed"
    assert "crm_tasks_create" not in {op.name for op in runtime.registry.select(sam.principal.grants)}
    detail = call("crm_settings_get_role", {"role_id": role["id"]})
    assert detail["users"] == [{"id": str(user), "name": "Sam", "status": "active"}] and detail["users_count"] == 1
    err = call.error("crm_settings_delete_role", {"role_id": role["id"]})
    assert err.code == "role_in_use" and f"Sam ({user})" in err.message
    call("crm_settings_update_user", {"user_id": str(user), "role": "viewer"})
    assert call("crm_settings_delete_role", {"role_id": role["id"]})["entity"] == "role"
    assert call.error("crm_settings_get_role", {"role_id": role["id"]}).code == "not_found"


def test_built_in_roles_are_read_only_and_names_unique(admin):
    org, call = admin
    roles = {r["name"]: r for r in call("crm_settings_list_roles")["items"]}
    assert [r for r in roles][:3] == ["admin", "sales", "viewer"] and all(roles[n]["built_in"] for n in ("admin", "sales"))
    assert roles["viewer"]["permissions"]["clients"] == ["read"]
    for tool, args in (("crm_settings_update_role", {"permissions": {}}), ("crm_settings_delete_role", {})):
        assert call.error(tool, {"role_id": roles["sales"]["id"], **args}).code == "built_in_role"
    call("crm_settings_create_role", {"name": "Key accounts", "permissions": {"deals": ["read"]}})
    assert call.error("crm_settings_create_role", {"name": "key ACCOUNTS", "permissions": {}}).code == "conflict"
    assert call.error("crm_settings_create_role", {"name": "Viewer", "permissions": {}}).field == "name"
    err = call.error("crm_settings_create_role", {"name": "X", "permissions": {"clients": ["fly"]}})
    assert err.code == "invalid_arguments" and "permissions.clients" in err.field


# -- API tokens --------------------------------------------------------------------------------------------------------
def test_api_tokens_capped_shown_once_listed_without_secrets_and_revoked(admin, db, runtime):
    org, call = admin
    created = call("crm_settings_create_api_token", {"name": "Zapier", "permissions": {"clients": ["read", "write"]},
                                                      "idempotency_key": "zap-1"})
    secret = created["secret"]
    assert created["token"]["permissions"] == {"clients": ["read", "write"]} and secret.startswith("flusia_")
    replay = call("crm_settings_create_api_token", {"name": "Zapier", "permissions": {"clients": ["read", "write"]},
                                                     "idempotency_key": "zap-1"})
    assert replay == created
    assert db.execute("SELECT count(*) AS n FROM api_tokens WHERE name = 'Zapier' AND organization_id = %s",
                      (org.organization_id,)).fetchone()["n"] == 1
    stored = json.dumps(db.execute("SELECT result FROM idempotency_keys WHERE key = 'zap-1' AND organization_id = %s",
                                   (org.organization_id,)).fetchone()["result"])
    assert secret not in stored and "sealed_secret" in stored
    listed = call("crm_settings_list_api_tokens")
    assert secret not in json.dumps(listed) and {t["name"] for t in listed["items"]} == {"Zapier", "initial admin token"}
    zapier = Caller(runtime, principal(runtime.database_url, secret))
    assert zapier("crm_clients_list")["items"] == []
    err = zapier.error("crm_settings_list_api_tokens")
    assert err.code == "permission_denied"
    limited = Caller(runtime, principal(runtime.database_url, identity.create_token(
        db, org.organization_id, org.user_id, {"settings": "rw", "clients": "r"})[0]))
    err = limited.error("crm_settings_create_api_token", {"name": "More", "permissions": {"clients": ["write"]}})
    assert err.field == "permissions.clients" and "clients:write" in err.message
    mine = limited("crm_settings_create_api_token", {"name": "Same"})
    assert mine["token"]["permissions"] == {"clients": ["read"], "settings": ["read", "write"]}
    revoked = call("crm_settings_revoke_api_token", {"token_id": created["token"]["id"]})
    assert revoked["status"] == "revoked" and principal(runtime.database_url, secret) is None
    assert call("crm_settings_revoke_api_token", {"token_id": created["token"]["id"]})["status"] == "revoked"
    assert [t["name"] for t in call("crm_settings_list_api_tokens", {"include_revoked": True})["items"]][0] == "Same"
    log = changes(db, org.organization_id)
    assert [(c["entity_type"], c["action"]) for c in log] == [("api_token", "created"), ("api_token", "created"),
                                                              ("api_token", "revoked")]
    assert secret not in json.dumps([c["changes"] for c in log])


# -- templates -----------------------------------------------------------------------------------------------------------
def test_templates_of_every_kind_with_placeholder_checks(admin):
    org, call = admin
    email = call("crm_settings_create_template", {
        "kind": "email", "name": "Follow-up", "entity": "deal", "subject": "Our offer: {{deal.title}}",
        "html_body": "<p>Dear {{client.contact_name}},</p><p>{{user.name}}, {{organization.name}}</p>"})
    assert email["placeholders"] == ["client.contact_name", "deal.title", "organization.name", "user.name"]
    assert "deal.owner_name" in email["available_placeholders"]
    wa = call("crm_settings_create_template", {
        "kind": "whatsapp", "name": "appointment_reminder", "entity": "task", "language": "it",
        "body": "Ciao {{1}}, ti ricordiamo l'appuntamento del {{2}}.", "parameters": ["client.contact_name", "task.due_date"]})
    assert wa["category"] == "UTILITY" and wa["parameters"] == ["client.contact_name", "task.due_date"]
    quote = call("crm_settings_create_template", {"kind": "quote", "name": "Standard", "body": "Totale: {{deal.value}}"})
    assert quote["entity"] == "deal"
    checklist = call("crm_settings_create_template", {"kind": "task_checklist", "name": "Onboarding",
                                                      "items": ["Call {{client.contact_name}}", "Send the contract"]})
    assert checklist["entity"] == "task" and checklist["items"][1] == "Send the contract"
    err = call.error("crm_settings_create_template", {"kind": "email", "name": "Bad", "entity": "client",
                                                      "subject": "Hi {{client.nickname}}", "text_body": "x"})
    assert err.field == "subject" and "{{client.nickname}}" in err.message
    err = call.error("crm_settings_update_template", {"template_id": email["id"], "html_body": "{{deal.secret_sauce}}"})
    assert err.field == "html_body"
    err = call.error("crm_settings_update_template", {"template_id": wa["id"], "body": "Ciao {{1}} {{2}} {{3}} ok"})
    assert err.field == "parameters"
    updated = call("crm_settings_update_template", {"template_id": email["id"], "html_body": None,
                                                    "text_body": "Hi {{client.business_name}}"})
    assert "html_body" not in updated and updated["placeholders"] == ["client.business_name", "deal.title"]
    listed = call("crm_settings_list_templates", {"kind": "email"})["items"]
    assert [t["id"] for t in listed] == [email["id"]]
    assert {t["kind"] for t in call("crm_settings_list_templates")["items"]} == {"email", "whatsapp", "quote",
                                                                                 "task_checklist"}
    call("crm_settings_delete_template", {"template_id": quote["id"]})
    assert call.error("crm_settings_get_template", {"template_id": quote["id"]}).code == "not_found"


def test_operators_see_settings_changes_from_the_command_line(admin, database_url):
    from tests.conftest import flusia

    org, call = admin
    call("crm_settings_update_organization", {"name": "Renamed Srl"})
    call("crm_settings_create_role", {"name": "Auditors", "permissions": {"audit": ["read"]}})
    out = flusia("settings", "changes", "--org", str(org.organization_id), env={"DATABASE_URL": database_url})
    latest, first = out["changes"]
    assert (latest["entity_type"], latest["action"], latest["actor_name"]) == ("role", "created", "Admin")
    assert first["changes"]["name"]["after"] == "Renamed Srl" and first["tool"] == "crm_settings_update_organization"
