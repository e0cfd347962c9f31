"""Custom fields on clients, deals, tasks and projects through the real tool runner: validated on every entity's
create and update (unknown key, wrong type, missing required: an error naming the custom field), returned by get and
list, filterable in lists, searchable where text, and hidden everywhere once the field is deleted."""

from __future__ import annotations

import pytest

from tests.inprocess import Caller

ENTITIES = {
    # entity type: (create tool, its required arguments, get tool, id argument, update tool, list tool)
    "client": ("crm_clients_create", {"business_name": "Acme"}, "crm_clients_get", "client_id", "crm_clients_update",
               "crm_clients_list"),
    "deal": ("crm_deals_create", {"title": "Sito"}, "crm_deals_get", "deal_id", "crm_deals_update", "crm_deals_list"),
    "task": ("crm_tasks_create", {"title": "Chiamare"}, "crm_tasks_get", "task_id", "crm_tasks_update", "crm_tasks_list"),
    "project": ("crm_projects_create", {"name": "Lancio"}, "crm_projects_get", "project_id", "crm_projects_update",
                "crm_projects_list"),
}


@pytest.fixture
def org(runtime, make_org, database_url):
    org = make_org("Custom")
    call = Caller(runtime, org.principal(database_url))
    client = call("crm_clients_create", {"business_name": "Base client"})
    return call, client["id"]


def fields_for(call, entity: str) -> None:
    for key, label, kind, extra in (("industry", "Industry", "single_choice", {"choices": ["Dental", "Legal"], "required": True}),
                                    ("employees", "Employees", "number", {}),
                                    ("areas", "Areas", "multiple_choice", {"choices": ["North", "South"]}),
                                    ("notes", "Notes", "text", {}), ("vip", "VIP", "boolean", {}),
                                    ("since", "Since", "date", {})):
        call("crm_settings_create_custom_field", {"entity_type": entity, "key": key, "label": label, "type": kind, **extra})


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_values_are_validated_on_create_and_update_returned_and_filtered(org, entity):
    call, base_client = org
    create, required, get, id_arg, update, listing = ENTITIES[entity]
    if entity == "deal":
        required = {**required, "client_id": base_client}
    fields_for(call, entity)
    err = call.error(create, required)
    assert err.field == "custom_fields.industry" and "required" in err.message
    bad = {"custom_fields.color": {"industry": "Dental", "color": "red"},
           "custom_fields.employees": {"industry": "Dental", "employees": "many"},
           "custom_fields.industry": {"industry": "Retail"},
           "custom_fields.areas": {"industry": "Dental", "areas": ["East"]},
           "custom_fields.vip": {"industry": "Dental", "vip": "yes"},
           "custom_fields.since": {"industry": "Dental", "since": "31/01/2025"}}
    for field, values in bad.items():
        err = call.error(create, {**required, "custom_fields": values})
        assert (err.code, err.field) == ("rule_violation", field), (field, err.message)
    err = call.error(create, {**required, "custom_fields": {"Bad Key": 1}})
    assert err.code == "invalid_arguments" and "custom_fields" in err.message
    made = call(create, {**required, "custom_fields": {"industry": "dental", "employees": "12", "areas": ["South", "North"],
                                                       "notes": "Studio molto noto", "vip": True, "since": "2021-03-04"}})
    entity_id = made["id"]
    shown = call(get, {id_arg: entity_id})["custom_fields"]
    assert shown == {"industry": "Dental", "employees": 12, "areas": ["North", "South"], "notes": "Studio molto noto",
                     "vip": True, "since": "2021-03-04"}
    other = call(create, {**required, "custom_fields": {"industry": "Legal", "employees": 3}})["id"]
    err = call.error(update, {id_arg: entity_id, "custom_fields": {"industry": None}})
    assert err.field == "custom_fields.industry" and "cannot be cleared" in err.message
    err = call.error(update, {id_arg: entity_id, "custom_fields": {"employees": 1.5, "nope": 1}})
    assert err.field == "custom_fields.nope"
    assert call(get, {id_arg: entity_id})["custom_fields"]["employees"] == 12  # nothing half-written
    call(update, {id_arg: entity_id, "custom_fields": {"employees": 12.5, "notes": None}})
    assert call(get, {id_arg: entity_id})["custom_fields"] == {"industry": "Dental", "employees": 12.5,
                                                                "areas": ["North", "South"], "vip": True,
                                                                "since": "2021-03-04"}

    def listed(key: str, value: str) -> set[str]:
        return {i["id"] for i in call(listing, {"custom_fields": {key: value}, "limit": 100})["items"]}

    assert listed("industry", "dental") == {entity_id} and listed("industry", "Legal") == {other}
    assert listed("employees", "12.5") == {entity_id} and listed("areas", "north") == {entity_id}
    assert listed("vip", "true") == {entity_id} and listed("since", "2021-03-04") == {entity_id}
    both = {"industry": "dental", "vip": "true"}  # every one must match
    assert {i["id"] for i in call(listing, {"custom_fields": both})["items"]} == {entity_id}
    assert call(listing, {"custom_fields": {**both, "employees": "13"}})["items"] == []
    items = {i["id"]: i for i in call(listing, {"limit": 100})["items"]}
    assert items[entity_id]["custom_fields"]["industry"] == "Dental"
    for args, field in (({"custom_fields": {"color": "x"}}, "custom_fields.color"),
                        ({"custom_fields": {"industry": "Dental", "vip": "maybe"}}, "custom_fields.vip"),
                        ({"custom_fields": {}}, "custom_fields")):
        assert call.error(listing, args).field == field


def test_custom_text_is_searchable_and_a_deleted_field_is_hidden_everywhere(org):
    call, base_client = org
    notes = {}
    for entity in ("client", "deal", "task"):
        notes[entity] = call("crm_settings_create_custom_field", {"entity_type": entity, "key": "notes", "label": "Notes",
                                                                  "type": "text"})["id"]
    client = call("crm_clients_create", {"business_name": "Rossi Srl", "custom_fields": {"notes": "Zanzibar fornitore"}})
    deal = call("crm_deals_create", {"title": "Rinnovo", "client_id": base_client,
                                     "custom_fields": {"notes": "Zanzibar contratto"}})
    task = call("crm_tasks_create", {"title": "Chiamata", "custom_fields": {"notes": "Zanzibar richiamare"}})
    assert [h["id"] for h in call("crm_clients_search", {"q": "zanzibar"})["items"]] == [client["id"]]
    assert [h["id"] for h in call("crm_deals_search", {"q": "zanzibar"})["items"]] == [deal["id"]]
    assert [h["id"] for h in call("crm_tasks_search", {"q": "zanzib"})["items"]] == [task["id"]]
    call("crm_clients_update", {"client_id": client["id"], "business_name": "Rossi e Figli Srl"})  # search text rebuilt
    assert [h["id"] for h in call("crm_clients_search", {"q": "zanzibar"})["items"]] == [client["id"]]

    field = call("crm_settings_create_custom_field", {"entity_type": "client", "key": "tier", "label": "Tier",
                                                      "type": "single_choice", "choices": ["Gold", "Silver"]})
    call("crm_clients_update", {"client_id": client["id"], "custom_fields": {"tier": "Gold"}})
    call("crm_settings_delete_custom_field", {"field_id": field["id"]})
    call("crm_settings_delete_custom_field", {"field_id": notes["client"]})
    assert call("crm_clients_get", {"client_id": client["id"]}).get("custom_fields", {}) == {}
    assert call("crm_clients_search", {"q": "zanzibar"})["items"] == []
    assert call.error("crm_clients_list", {"custom_fields": {"tier": "Gold"}}).field == "custom_fields.tier"
    err = call.error("crm_clients_update", {"client_id": client["id"], "custom_fields": {"tier": "Gold"}})
    assert err.field == "custom_fields.tier" and "unknown custom field" in err.message
    err = call.error("crm_settings_create_custom_field", {"entity_type": "client", "key": "tier", "label": "Again",
                                                          "type": "text"})
    assert err.code == "custom_field_exists" and "was deleted" in err.message
    assert call("crm_deals_get", {"deal_id": deal["id"]})["custom_fields"] == {"notes": "Zanzibar contratto"}
    names = [f["key"] for f in call("crm_settings_list_custom_fields", {"entity_type": "client"})["items"]]
    assert names == []
    assert {f["entity_type"] for f in call("crm_settings_list_custom_fields")["items"]} == {"deal", "task"}


def test_template_placeholders_can_name_custom_fields(org):
    call, _ = org
    call("crm_settings_create_custom_field", {"entity_type": "client", "key": "industry", "label": "Industry", "type": "text"})
    made = call("crm_settings_create_template", {"kind": "email", "name": "Per settore", "entity": "deal",
                                                 "subject": "Offerta per {{client.custom.industry}}", "text_body": "."})
    assert "client.custom.industry" in made["placeholders"] and "client.custom.industry" in made["available_placeholders"]
    err = call.error("crm_settings_create_template", {"kind": "email", "name": "X", "entity": "deal",
                                                      "subject": "{{deal.custom.industry}}", "text_body": "."})
    assert err.field == "subject" and "no custom field 'industry' is defined for deals" in err.message
