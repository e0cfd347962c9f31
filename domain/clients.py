"""Leads and clients: one aggregate, a lead becomes a client on conversion.

A lead moves through a funnel (new -> contacted -> qualified, or unqualified/lost). Contacts and tags
live inside the aggregate because they only make sense with it; notes and recordings are their own
aggregates (notes are shared with deals).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import apply_changes
from domain.personal_data import CLIENT_PERSONAL_FIELDS, CONTACT_PERSONAL_FIELDS, erased, is_erased
from domain.custom_fields import HasCustomFields
from domain.shared import Assignable, Editable, Taggable
from domain.errors import Conflict, DomainError, NotFound

LEAD_STATUSES = ("new", "contacted", "qualified", "unqualified", "lost")
KINDS = ("lead", "client")
CLIENT_FIELDS = ("business_name", "contact_name", "vat_number", "tax_code", "email", "phone", "website", "address",
                 "source")
"""What a lead/client records about itself, in the order tools and read models show it."""
EDITABLE_FIELDS = frozenset(CLIENT_FIELDS)
CONTACT_FIELDS = ("name", "role", "email", "phone")


class NotALead(DomainError):
    code = "not_a_lead"


class AlreadyAClient(Conflict):
    code = "already_a_client"


class ContactNotFound(NotFound):
    def __init__(self, contact_id: UUID) -> None:
        super().__init__("contact", contact_id, field="contact_id")


class CannotMergeIntoItself(DomainError):
    code = "invalid_merge"


class Client(Editable, Taggable, Assignable, HasCustomFields):
    entity_name = "client"
    editable_fields = EDITABLE_FIELDS

    @event("Created")
    def __init__(
        self,
        org_id: UUID,
        kind: str,
        status: str | None,
        fields: dict[str, Any],
        assigned_to: UUID | None,
        created_by: UUID | None,
    ) -> None:
        self.org_id = org_id
        self.kind = kind
        self.status = status
        self.business_name = ""
        self.contact_name = self.vat_number = self.tax_code = self.email = self.phone = self.website = None
        self.address = None
        self.source = None
        apply_changes(self, fields, EDITABLE_FIELDS)
        self.assigned_to = assigned_to
        self.created_by = created_by
        self.tags: list[str] = []
        self.contacts: dict[str, dict[str, Any]] = {}
        self.deleted = False
        self.merged_into: UUID | None = None

    @classmethod
    def create_lead(cls, org_id: UUID, fields: dict[str, Any], assigned_to: UUID | None, created_by: UUID | None) -> Client:
        return cls(org_id=org_id, kind="lead", status="new", fields=fields, assigned_to=assigned_to, created_by=created_by)

    @classmethod
    def create_client(cls, org_id: UUID, fields: dict[str, Any], assigned_to: UUID | None, created_by: UUID | None) -> Client:
        return cls(org_id=org_id, kind="client", status=None, fields=fields, assigned_to=assigned_to, created_by=created_by)

    # -- fields and funnel -------------------------------------------------------------------------------


    def set_status(self, status: str) -> None:
        if self.kind != "lead":
            raise NotALead("only leads have a funnel status; this is already a client", field="client_id")
        if status not in LEAD_STATUSES:
            raise DomainError(f"status must be one of {', '.join(LEAD_STATUSES)}", field="status")
        if status != self.status:
            self._status_changed(status=status, previous=self.status)

    @event("StatusChanged")
    def _status_changed(self, status: str, previous: str | None) -> None:
        self.status = status

    def convert_to_client(self) -> None:
        if self.kind == "client":
            raise AlreadyAClient("this lead is already a client", field="client_id")
        self._converted()

    @event("ConvertedToClient")
    def _converted(self) -> None:
        self.kind = "client"
        self.status = None

    # -- contacts ----------------------------------------------------------------------------------------
    def add_contact(self, fields: dict[str, Any]) -> UUID:
        contact_id = uuid4()
        self._contact_added(contact_id=contact_id, fields=fields)
        return contact_id

    @event("ContactAdded")
    def _contact_added(self, contact_id: UUID, fields: dict[str, Any]) -> None:
        unknown = set(fields).difference(CONTACT_FIELDS)
        if unknown:
            raise DomainError(f"unknown contact field {sorted(unknown)[0]}", field=sorted(unknown)[0])
        self.contacts = {**self.contacts, str(contact_id): {"id": str(contact_id), **fields}}

    def update_contact(self, contact_id: UUID, changes: dict[str, Any]) -> None:
        if str(contact_id) not in self.contacts:
            raise ContactNotFound(contact_id)
        if changes:
            self._contact_updated(contact_id=contact_id, changes=changes)

    @event("ContactUpdated")
    def _contact_updated(self, contact_id: UUID, changes: dict[str, Any]) -> None:
        self.contacts = {**self.contacts, str(contact_id): {**self.contacts[str(contact_id)], **changes}}

    def remove_contact(self, contact_id: UUID) -> None:
        if str(contact_id) not in self.contacts:
            raise ContactNotFound(contact_id)
        self._contact_removed(contact_id=contact_id)

    @event("ContactRemoved")
    def _contact_removed(self, contact_id: UUID) -> None:
        self.contacts = {k: v for k, v in self.contacts.items() if k != str(contact_id)}

    # -- merge -------------------------------------------------------------------------------------------
    def absorb(self, duplicate: Client) -> None:
        """Take over what the duplicate knows and the survivor does not: empty fields, tags, contacts."""
        if duplicate.id == self.id:
            raise CannotMergeIntoItself("a client cannot be merged into itself", field="duplicate_ids")
        filled = {f: getattr(duplicate, f) for f in EDITABLE_FIELDS
                  if not getattr(self, f) and getattr(duplicate, f) and not is_erased(getattr(duplicate, f))}
        tags = [t for t in duplicate.tags if t not in self.tags]
        contacts = [c for k, c in duplicate.contacts.items() if k not in self.contacts and not is_erased(c.get("name"))]
        self._absorbed(duplicate_id=duplicate.id, filled=filled, tags=tags, contacts=contacts)
        duplicate._merged_into(survivor_id=self.id)

    @event("Absorbed")
    def _absorbed(self, duplicate_id: UUID, filled: dict[str, Any], tags: list[str], contacts: list[dict[str, Any]]) -> None:
        self._absorbed_ids = [*getattr(self, "_absorbed_ids", []), duplicate_id]
        apply_changes(self, filled, EDITABLE_FIELDS)
        self.tags = [*self.tags, *tags]
        self.contacts = {**self.contacts, **{c["id"]: c for c in contacts}}

    @event("MergedInto")
    def _merged_into(self, survivor_id: UUID) -> None:
        self.merged_into = survivor_id
        self.deleted = True

    # -- erasure on request (GDPR art. 17) ----------------------------------------------------------------
    @property
    def absorbed_ids(self) -> list[UUID]:
        """The duplicates merged into this lead/client (their data became its data)."""
        return list(getattr(self, "_absorbed_ids", []))

    def erase_personal_data(self) -> None:
        """Blank the person's data (contact name, tax code, e-mail, phone, address, contact persons). The event
        carries no personal data; destroying the encryption keys is the application's part (crypto-shredding)."""
        if self.merged_into is not None:
            raise DomainError(f"this lead/client was merged into {self.merged_into}, which holds its data now: "
                              "erase that one", field="client_id")
        self._personal_data_erased()

    @event("PersonalDataErased")
    def _personal_data_erased(self) -> None:
        for name in CLIENT_PERSONAL_FIELDS:
            setattr(self, name, erased(getattr(self, name, None)))
        self.contacts = {k: {**c, **{f: erased(c[f]) for f in CONTACT_PERSONAL_FIELDS if c.get(f)}}
                         for k, c in self.contacts.items()}
        self.personal_data_erased = True


def vat_key(vat: str | None) -> str | None:
    """`IT 12345678901` and `12345678901` are the same VAT number."""
    if not vat:
        return None
    key = "".join(ch for ch in vat.upper() if ch.isalnum())
    if len(key) > 2 and key[:2].isalpha() and key[2:].isdigit():
        key = key[2:]
    return key or None


def email_key(email: str | None) -> str | None:
    return email.strip().lower() if email else None


def phone_key(phone: str | None) -> str | None:
    """Digits only, without the international 00 prefix: +39 02 1234 and 0039021234 match."""
    if not phone:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    if phone.strip().startswith("00"):
        digits = digits[2:]
    return digits or None
