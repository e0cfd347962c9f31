"""Domain rules of settings, templates and custom fields: given some history, when a command, then events or an error."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest
from eventsourcing.domain import event

from domain import settings as rules
from domain.custom_fields import (CustomField, Definition, HasCustomFields, check_definition, check_values, field_id,
                                  filter_value)
from domain.errors import Conflict, DomainError
from domain.templates import Template, allowed_placeholders, check, render, whatsapp_parameters

ORG = uuid4()
RESOURCES = ("clients", "deals", "settings")


def names(agg) -> list[str]:
    return [type(e).__qualname__ for e in agg.collect_events()]


# -- roles, users, tokens ------------------------------------------------------------------------------------
def test_permissions_round_trip_and_unknown_actions_are_named():
    grants = rules.grants_from({"clients": ["write", "read"], "deals": [], "settings": None}, RESOURCES)
    assert grants == {"clients": "rw"}
    assert rules.permissions_of({"clients": "rwd", "deals": "r"}, RESOURCES) == {
        "clients": ["read", "write", "delete"], "deals": ["read"]}
    with pytest.raises(DomainError) as e:
        rules.grants_from({"invoices": ["read"]}, RESOURCES)
    assert e.value.field == "permissions.invoices"


def test_a_token_is_capped_by_its_creators_permissions():
    rules.check_token_grants({"clients": "r"}, {"clients": "rw"})
    with pytest.raises(DomainError) as e:
        rules.check_token_grants({"clients": "rw", "deals": "d"}, {"clients": "r", "deals": "r"})
    assert "clients:write, deals:delete" in e.value.message and e.value.field == "permissions.clients"


def test_last_active_admin_cannot_be_demoted_or_deactivated():
    rules.check_keeps_an_admin(target_is_admin=True, other_active_admins=1, change="demoted")
    rules.check_keeps_an_admin(target_is_admin=False, other_active_admins=0, change="demoted")
    with pytest.raises(rules.LastAdmin) as e:
        rules.check_keeps_an_admin(target_is_admin=True, other_active_admins=0, change="deactivated")
    assert "last active admin" in e.value.message and e.value.field == "user_id"


def test_built_in_roles_are_read_only_and_a_role_in_use_names_its_holders():
    with pytest.raises(rules.BuiltInRole):
        rules.check_role_editable({"name": "sales", "built_in": True})
    with pytest.raises(rules.RoleInUse) as e:
        rules.check_role_unused({"name": "Support"}, [{"id": "u1", "name": "Anna"}, {"id": "u2", "name": "Bruno"}])
    assert "Anna (u1), Bruno (u2)" in e.value.message
    with pytest.raises(DomainError):
        rules.check_role_name("Admin", taken=[])
    with pytest.raises(Conflict):
        rules.check_role_name("support ", taken=["Support"])
    assert rules.check_role_name("  Key   accounts ", taken=["Support"]) == "Key accounts"


def test_status_changes_and_profile_values():
    assert rules.status_change("active", "inactive") == "deactivated"
    assert rules.status_change("inactive", "active") == "reactivated"
    assert rules.status_change("invited", "active") is None
    assert rules.check_timezone("Pacific/Kiritimati") == "Pacific/Kiritimati"
    with pytest.raises(DomainError) as e:
        rules.check_timezone("Mars/Olympus")
    assert e.value.field == "timezone"
    with pytest.raises(DomainError):
        rules.check_currency("XYZ")
    assert rules.diff({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": {"before": 2, "after": 3}}


# -- templates -----------------------------------------------------------------------------------------------
def test_email_template_placeholders_are_checked_against_its_entity():
    t = Template.create(ORG, "email", {"name": "Follow-up", "entity": "deal", "subject": "{{deal.title}}",
                                       "html_body": "<p>{{ client.business_name }}</p>"}, None)
    assert t.placeholders == ["client.business_name", "deal.title"]
    for text, fragment in [("{{client.nope}}", "unknown placeholder {{client.nope}}"),
                           ("{{task.title}}", "not available in a template for a deal"),
                           ("{{bogus}}", "unknown placeholder {{bogus}}"),
                           ("{{deal.title", "not closed")]:
        with pytest.raises(DomainError) as e:
            check("email", {"name": "x", "entity": "deal", "subject": "s", "text_body": text})
        assert fragment in e.value.message and e.value.field == "text_body", text


def test_custom_field_placeholders_need_a_definition():
    state = {"name": "x", "entity": "client", "subject": "{{client.custom.industry}}", "text_body": "t"}
    with pytest.raises(DomainError) as e:
        check("email", state)
    assert "no custom field 'industry'" in e.value.message
    assert check("email", state, {"client": {"industry"}}) == ["client.custom.industry"]
    assert "client.custom.industry" in allowed_placeholders("deal", {"client": {"industry"}})


def test_whatsapp_templates_follow_the_cloud_api_rules():
    ok = {"name": "reminder", "entity": "task", "language": "it", "category": "UTILITY",
          "body": "Ciao {{1}}, il compito {{2}} scade domani.", "parameters": ["client.contact_name", "task.title"]}
    assert check("whatsapp", ok) == ["client.contact_name", "task.title"]
    cases = {
        "name": {"name": "Reminder!"},
        "language": {"language": "italian"},
        "body": {"body": "Ciao {{client.contact_name}} domani."},
        "parameters": {"parameters": ["client.contact_name"]},
    }
    for field, change in cases.items():
        with pytest.raises(DomainError) as e:
            check("whatsapp", {**ok, **change})
        assert e.value.field == field, (field, e.value.message)
    with pytest.raises(DomainError) as e:
        check("whatsapp", {**ok, "body": "{{1}} domani {{2}}."})
    assert "cannot start or end" in e.value.message
    with pytest.raises(DomainError) as e:
        check("whatsapp", {**ok, "body": "Ciao {{2}} e {{1}}."})
    assert "in order" in e.value.message
    with pytest.raises(DomainError) as e:
        check("whatsapp", {**ok, "parameters": ["client.contact_name", "task.nope"]})
    assert e.value.field == "parameters[1]" and "{{task.nope}}" in e.value.message
    assert whatsapp_parameters(ok["parameters"], {"client.contact_name": "Anna", "task.title": "Firma"}) == ["Anna", "Firma"]


def test_kind_rules_quote_checklist_and_foreign_fields():
    quote = Template.create(ORG, "quote", {"name": "Preventivo", "entity": "deal", "subject": "Offerta {{deal.title}}",
                                           "body": "Totale {{deal.value}}"}, None)
    assert quote.placeholders == ["deal.title", "deal.value"]
    checklist = Template.create(ORG, "task_checklist", {"name": "Onboarding", "entity": "task",
                                                        "items": ["Call {{client.contact_name}}", "Send contract"]}, None)
    assert checklist.items[1] == "Send contract"
    with pytest.raises(DomainError) as e:
        check("task_checklist", {"name": "x", "entity": "task", "items": ["ok", "{{deal.nope}}"]})
    assert e.value.field == "items[1]"
    with pytest.raises(DomainError) as e:
        check("email", {"name": "x", "entity": "client", "subject": "s", "text_body": "t", "items": ["a"]})
    assert e.value.field == "items" and "does not apply" in e.value.message
    with pytest.raises(DomainError) as e:
        check("quote", {"name": "x", "entity": "task", "body": "b"})
    assert e.value.field == "entity"


def test_template_change_is_checked_as_a_whole_and_records_placeholders():
    t = Template.create(ORG, "email", {"name": "W", "entity": "client", "subject": "Hi", "text_body": "x"}, None)
    t.collect_events()
    t.change({"text_body": "Dear {{client.contact_name}}"})
    (changed,) = t.collect_events()
    assert changed.changes == {"text_body": "Dear {{client.contact_name}}", "placeholders": ["client.contact_name"]}
    with pytest.raises(DomainError):
        t.change({"subject": None})
    with pytest.raises(DomainError):
        t.change({"entity": "deal"})
    assert render("Dear {{client.contact_name}} <{{x.y}}>", {"client.contact_name": "<b>Anna</b>"}, escape_html=True) \
        == "Dear &lt;b&gt;Anna&lt;/b&gt; <>"


# -- custom fields -------------------------------------------------------------------------------------------
class Thing(HasCustomFields):
    @event("Created")
    def __init__(self, org_id) -> None:
        self.org_id = org_id
        self.deleted = False


DEFS = {
    "industry": Definition("industry", "Industry", "single_choice", True, ("Dental", "Legal")),
    "employees": Definition("employees", "Employees", "number"),
    "since": Definition("since", "Client since", "date"),
    "vip": Definition("vip", "VIP", "boolean"),
    "tags": Definition("tags", "Areas", "multiple_choice", False, ("North", "South", "Islands")),
    "site": Definition("site", "Site", "url"),
    "billing": Definition("billing", "Billing e-mail", "email"),
    "notes": Definition("notes", "Notes", "text"),
}


def test_values_are_validated_and_stored_in_canonical_forms():
    out = check_values("client", DEFS, {"industry": "dental", "employees": "12", "since": "2020-02-29", "vip": True,
                                        "tags": ["South", "North"], "site": "https://a.it", "billing": "a@b.it",
                                        "notes": " hi "}, creating=True)
    assert out == {"industry": "Dental", "employees": 12, "since": "2020-02-29", "vip": True, "tags": ["North", "South"],
                   "site": "https://a.it", "billing": "a@b.it", "notes": "hi"}
    assert check_values("client", DEFS, {"employees": 2.5}, creating=False) == {"employees": 2.5}


@pytest.mark.parametrize("values,key,fragment", [
    ({"color": "red"}, "color", "unknown custom field 'color'"),
    ({"employees": "many"}, "employees", "is a number"),
    ({"employees": True}, "employees", "is a number"),
    ({"employees": "12345678901234567"}, "employees", "significant digits"),
    ({"since": "2020-02-30"}, "since", "is a date"),
    ({"since": "1800-01-01"}, "since", "between"),
    ({"vip": "yes"}, "vip", "true or false"),
    ({"industry": "Retail"}, "industry", "one of: Dental, Legal"),
    ({"tags": "North"}, "tags", "list of choices"),
    ({"site": "ftp://x"}, "site", "http(s) URL"),
    ({"billing": "nope"}, "billing", "e-mail"),
    ({"notes": 12}, "notes", "given as text"),
    ({"industry": None}, "industry", "required and cannot be cleared"),
])
def test_a_wrong_value_is_an_error_naming_the_custom_field(values, key, fragment):
    with pytest.raises(DomainError) as e:
        check_values("client", DEFS, values, creating=False)
    assert e.value.field == f"custom_fields.{key}" and fragment in e.value.message, e.value.message


def test_required_fields_are_needed_on_create_only():
    with pytest.raises(DomainError) as e:
        check_values("client", DEFS, {"vip": True}, creating=True)
    assert e.value.field == "custom_fields.industry" and "required" in e.value.message
    assert check_values("client", DEFS, {"vip": True}, creating=False) == {"vip": True}


def test_entities_record_only_changed_values_and_clearing():
    thing = Thing(org_id=ORG)
    thing.set_custom_fields({"vip": True, "notes": "x"})
    thing.set_custom_fields({"vip": True, "notes": None, "site": None})
    thing.set_custom_fields({})
    events = thing.collect_events()
    assert [type(e).__qualname__ for e in events] == ["Thing.Created", "Thing.CustomFieldsChanged",
                                                      "Thing.CustomFieldsChanged"]
    assert events[2].values == {"notes": None}
    assert thing.custom_values() == {"vip": True}


def test_definitions_and_their_deletion():
    assert check_definition("deal", "stage_code", "Code", "multiple_choice", ["A", " B "], existing=0) == ("A", "B")
    for args, field in [(("lead", "k", "K", "text", []), "entity_type"), (("client", "Key", "K", "text", []), "key"),
                        (("client", "k", "K", "color", []), "type"), (("client", "k", "K", "text", ["a"]), "choices"),
                        (("client", "k", "K", "single_choice", []), "choices"),
                        (("client", "k", "K", "single_choice", ["a", "A"]), "choices")]:
        with pytest.raises(DomainError) as e:
            check_definition(*args, existing=0)
        assert e.value.field == field, args
    f = CustomField(org_id=ORG, entity_type="client", key="industry", label="Industry", field_type="text",
                    required=False, choices=[], description=None, created_by=None)
    assert f.id == field_id(ORG, "client", "industry")
    f.delete()
    deleted = f.collect_events()[-1]
    assert type(deleted).__qualname__ == "CustomField.Deleted" and (deleted.entity_type, deleted.key) == ("client", "industry")


def test_list_filters_take_text():
    assert filter_value(DEFS["employees"], "12") == 12
    assert filter_value(DEFS["vip"], "TRUE") is True
    assert filter_value(DEFS["tags"], "south") == ["South"]
    assert filter_value(DEFS["since"], date(2021, 1, 2).isoformat()) == "2021-01-02"
    with pytest.raises(DomainError) as e:
        filter_value(DEFS["vip"], "maybe")
    assert e.value.field == "custom_value"
