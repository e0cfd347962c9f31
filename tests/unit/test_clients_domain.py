"""Leads/clients domain rules: given events, when a command, then events or an error. No database."""

from __future__ import annotations

from uuid import uuid4

import pytest

from domain.clients import (AlreadyAClient, CannotMergeIntoItself, Client, ContactNotFound, NotALead,
                            email_key, phone_key, vat_key)
from domain.errors import DomainError, NotFound
from domain.shared import TagNotFound

ORG = uuid4()


def lead(**fields) -> Client:
    client = Client.create_lead(ORG, {"business_name": "Studio Bianchi", **fields}, None, None)
    client.collect_events()
    return client


def event_names(client: Client) -> list[str]:
    return [type(e).__name__ for e in client.collect_events()]


def test_new_lead_starts_in_the_funnel():
    client = Client.create_lead(ORG, {"business_name": "Studio Bianchi", "vat_number": "123"}, None, None)
    assert (client.kind, client.status, client.vat_number) == ("lead", "new", "123")
    assert event_names(client) == ["Created"]


def test_client_created_directly_has_no_funnel_status():
    client = Client.create_client(ORG, {"business_name": "ACME"}, None, None)
    assert (client.kind, client.status) == ("client", None)


def test_status_moves_through_the_funnel_and_ignores_repeats():
    client = lead()
    client.set_status("contacted")
    client.set_status("contacted")
    assert event_names(client) == ["StatusChanged"]


def test_unknown_status_is_refused_naming_the_field():
    with pytest.raises(DomainError) as err:
        lead().set_status("won")
    assert err.value.field == "status"


def test_a_client_has_no_funnel_status():
    client = lead()
    client.convert_to_client()
    with pytest.raises(NotALead):
        client.set_status("qualified")


def test_converting_twice_is_refused():
    client = lead()
    client.convert_to_client()
    assert (client.kind, client.status) == ("client", None)
    with pytest.raises(AlreadyAClient):
        client.convert_to_client()


def test_update_records_only_what_changed():
    client = lead(email="a@b.it")
    client.update({"email": "a@b.it", "phone": "02 1234"})
    events = client.collect_events()
    assert [e.changes for e in events] == [{"phone": "02 1234"}]


def test_update_refuses_unknown_fields():
    with pytest.raises(DomainError) as err:
        lead().update({"kind": "client"})
    assert err.value.field == "kind"


def test_assign_and_unassign_are_idempotent():
    client, user = lead(), uuid4()
    client.assign(user)
    client.assign(user)
    client.unassign()
    client.unassign()
    assert event_names(client) == ["Assigned", "Unassigned"]
    assert client.assigned_to is None


def test_removing_a_missing_tag_is_an_error():
    client = lead()
    client.add_tag("vip")
    client.add_tag("vip")
    assert client.tags == ["vip"]
    with pytest.raises(TagNotFound):
        client.remove_tag("cold")


def test_contacts_are_added_changed_and_removed():
    client = lead()
    contact_id = client.add_contact({"name": "Mario Rossi", "role": "CEO"})
    client.update_contact(contact_id, {"role": "CFO"})
    assert client.contacts[str(contact_id)]["role"] == "CFO"
    client.remove_contact(contact_id)
    assert client.contacts == {}
    with pytest.raises(ContactNotFound):
        client.remove_contact(contact_id)


def test_merge_fills_empty_fields_and_takes_tags_and_contacts():
    survivor, duplicate = lead(email="s@x.it"), lead(email="d@x.it", phone="333", vat_number="IT1")
    duplicate.add_tag("fair")
    duplicate.add_contact({"name": "Anna"})
    survivor.absorb(duplicate)
    assert (survivor.email, survivor.phone, survivor.vat_number) == ("s@x.it", "333", "IT1")
    assert survivor.tags == ["fair"] and [c["name"] for c in survivor.contacts.values()] == ["Anna"]
    assert duplicate.deleted and duplicate.merged_into == survivor.id
    assert event_names(duplicate)[-1] == "MergedInto"


def test_merge_into_itself_is_refused():
    client = lead()
    with pytest.raises(CannotMergeIntoItself):
        client.absorb(client)


def test_deleted_or_foreign_clients_do_not_exist():
    client = lead()
    with pytest.raises(NotFound):
        client.ensure_usable(uuid4())
    client.delete()
    assert event_names(client) == ["Deleted"]
    with pytest.raises(NotFound):
        client.ensure_usable(ORG)


@pytest.mark.parametrize(("raw", "key"), [("IT 12345678901", "12345678901"), ("12345678901", "12345678901"), (None, None)])
def test_vat_numbers_match_with_or_without_country_prefix(raw, key):
    assert vat_key(raw) == key


def test_phone_and_email_keys_normalise():
    assert phone_key("+39 02 1234") == phone_key("0039 02 1234") == "39021234"
    assert email_key(" Mario@Example.IT ") == "mario@example.it"
