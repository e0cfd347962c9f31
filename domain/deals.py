"""Deals: an opportunity with a client, sitting in a stage of one pipeline, worth a value in the org's currency.

- Status: `open`, `accepted` (won) or `rejected` (lost, with an optional reason). Closing records the close
  date (today in the organization's timezone, or an explicit earlier date to enter history); reopening clears it.
- Value: the sum of the service lines (quantity x unit price x (1 - discount)) unless set explicitly; an
  explicit value can be cleared to go back to the computed one. Every event that changes the value carries
  the new value, so read models never recompute it.
- A deal always sits in a stage of its own pipeline: moves are checked against the Pipeline aggregate.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import apply_changes
from domain.custom_fields import HasCustomFields
from domain.shared import Editable
from domain.errors import DomainError, NotFound
from domain.money import decimal_in, line_total_cents
from domain.pipelines import Pipeline, StageNotFound
from domain.services import CatalogService
from domain.values import check_minor_units

STATUSES = ("open", "accepted", "rejected")
DEAL_FIELDS = ("title", "description", "expected_close_date", "client_id")
"""What an update may change directly; value, status, stage and owner have their own events."""
EDITABLE_FIELDS = frozenset(DEAL_FIELDS)


class LineNotFound(NotFound):
    def __init__(self, line_id: object) -> None:
        super().__init__("service line", line_id, field="line_id")


class InvalidClose(DomainError):
    code = "invalid_close_date"


def _ensure_stage(pipeline: Pipeline, stage_id: UUID) -> None:
    if not pipeline.has_stage(stage_id):
        raise StageNotFound(stage_id)


class Deal(Editable, HasCustomFields):
    entity_name = "deal"
    editable_fields = EDITABLE_FIELDS

    @event("Created")
    def __init__(
        self, org_id: UUID, client_id: UUID | None, title: str, pipeline_id: UUID, stage_id: UUID, currency: str,
        owner_id: UUID | None, explicit_value_cents: int | None, fields: dict[str, Any], created_by: UUID | None,
    ) -> None:
        self.org_id = org_id
        self.client_id = client_id
        self.title = title
        self.pipeline_id = pipeline_id
        self.stage_id = stage_id
        self.currency = currency
        self.owner_id = owner_id
        self.description = None
        self.expected_close_date: date | None = None
        apply_changes(self, fields, EDITABLE_FIELDS)
        self.explicit_value_cents = explicit_value_cents
        self.value_cents = explicit_value_cents or 0
        self.status = "open"
        self.close_date: date | None = None
        self.lost_reason: str | None = None
        self.lines: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.commissions: dict[str, dict[str, Any]] = {}
        self.created_by = created_by
        self.deleted = False

    @classmethod
    def create(
        cls, org_id: UUID, *, client_id: UUID | None, title: str, pipeline: Pipeline, stage_id: UUID | None,
        currency: str, owner_id: UUID | None = None, value_cents: int | None = None,
        fields: dict[str, Any] | None = None, created_by: UUID | None = None,
    ) -> Deal:
        stage = stage_id or pipeline.first_stage_id()
        _ensure_stage(pipeline, stage)
        if value_cents is not None and value_cents < 0:
            raise DomainError("value must not be negative", field="value")
        return cls(org_id=org_id, client_id=client_id, title=title, pipeline_id=pipeline.id, stage_id=stage,
                   currency=currency, owner_id=owner_id, explicit_value_cents=value_cents, fields=fields or {},
                   created_by=created_by)

    # -- value -------------------------------------------------------------------------------------------
    def computed_value_cents(self, lines: dict[str, dict[str, Any]] | None = None) -> int:
        return sum(line["total_cents"] for line in (self.lines if lines is None else lines).values())

    def _value_with(self, lines: dict[str, dict[str, Any]]) -> int:
        """The deal's value with these lines; their sum must stay storable even while an explicit value hides it."""
        computed = check_minor_units(self.computed_value_cents(lines), field="quantity")
        return self.explicit_value_cents if self.explicit_value_cents is not None else computed

    def set_value(self, value_cents: int | None) -> None:
        """An explicit value, or None to go back to the sum of the service lines."""
        if value_cents is not None and value_cents < 0:
            raise DomainError("value must not be negative", field="value")
        if value_cents != self.explicit_value_cents:
            new = value_cents if value_cents is not None else self.computed_value_cents()
            self._value_set(explicit_value_cents=value_cents, value_cents=new)

    @event("ValueSet")
    def _value_set(self, explicit_value_cents: int | None, value_cents: int) -> None:
        self.explicit_value_cents = explicit_value_cents
        self.value_cents = value_cents

    # -- fields ------------------------------------------------------------------------------------------


    # -- status ------------------------------------------------------------------------------------------
    def set_status(self, status: str, *, today: date, reason: str | None = None, close_date: date | None = None) -> None:
        """open / accepted / rejected. Closing records `close_date` (default today, never in the future)."""
        if status not in STATUSES:
            raise DomainError(f"status must be one of {', '.join(STATUSES)}", field="status")
        if status == "open":
            if close_date is not None:
                raise InvalidClose("an open deal has no close date; omit close_date", field="close_date")
            if reason is not None:
                raise DomainError("a reason is given only when rejecting", field="reason")
            if self.status != "open":
                self._status_changed(status="open", previous=self.status, close_date=None, reason=None)
            return
        if reason is not None and status != "rejected":
            raise DomainError("a reason is given only when rejecting", field="reason")
        when = close_date or today
        if when > today:
            raise InvalidClose(f"close_date cannot be in the future (today is {today.isoformat()})", field="close_date")
        if (status, when, reason) != (self.status, self.close_date, self.lost_reason):
            self._status_changed(status=status, previous=self.status, close_date=when, reason=reason)

    @event("StatusChanged")
    def _status_changed(self, status: str, previous: str, close_date: date | None, reason: str | None) -> None:
        self.status = status
        self.close_date = close_date
        self.lost_reason = reason

    # -- stage -------------------------------------------------------------------------------------------
    def move_to(self, pipeline: Pipeline, stage_id: UUID | None = None) -> None:
        """Move to a stage of `pipeline` (the deal's own, or another one: then the deal changes pipeline)."""
        target = stage_id or pipeline.first_stage_id()
        _ensure_stage(pipeline, target)
        if (pipeline.id, target) != (self.pipeline_id, self.stage_id):
            self._stage_moved(pipeline_id=pipeline.id, stage_id=target, previous_pipeline_id=self.pipeline_id,
                              previous_stage_id=self.stage_id)

    @event("StageMoved")
    def _stage_moved(self, pipeline_id: UUID, stage_id: UUID, previous_pipeline_id: UUID, previous_stage_id: UUID) -> None:
        self.pipeline_id = pipeline_id
        self.stage_id = stage_id

    # -- owner -------------------------------------------------------------------------------------------
    def assign(self, user_id: UUID) -> None:
        if user_id != self.owner_id:
            self._assigned(user_id=user_id)

    @event("Assigned")
    def _assigned(self, user_id: UUID) -> None:
        self.owner_id = user_id

    def unassign(self) -> None:
        if self.owner_id is not None:
            self._unassigned()

    @event("Unassigned")
    def _unassigned(self) -> None:
        self.owner_id = None

    # -- service lines -----------------------------------------------------------------------------------
    def add_service(self, service: CatalogService, quantity: Decimal, unit_price_cents: int | None = None,
                    discount_percent: Decimal = Decimal(0)) -> UUID:
        service.ensure_sellable()
        qty = decimal_in(quantity, field="quantity", low=Decimal("0.0001"), high=Decimal(10**9))
        disc = decimal_in(discount_percent, field="discount_percent", low=Decimal(0), high=Decimal(100))
        price = service.unit_price_cents if unit_price_cents is None else unit_price_cents
        if price < 0:
            raise DomainError("unit price must not be negative", field="unit_price")
        line_id = uuid4()
        line = {"id": str(line_id), "service_id": str(service.id), "name": service.name, "code": service.code,
                "unit": service.unit, "vat_rate": service.vat_rate, "quantity": str(qty), "unit_price_cents": price,
                "discount_percent": str(disc), "total_cents": line_total_cents(qty, price, disc),
                "position": len(self.lines)}
        lines = {**self.lines, line["id"]: line}
        self._line_added(line=line, value_cents=self._value_with(lines))
        return line_id

    @event("ServiceAdded")
    def _line_added(self, line: dict[str, Any], value_cents: int) -> None:
        self.lines = {**self.lines, line["id"]: line}
        self.value_cents = value_cents

    def update_service(self, line_id: UUID, *, quantity: Decimal | None = None, unit_price_cents: int | None = None,
                       discount_percent: Decimal | None = None) -> None:
        line = self.lines.get(str(line_id))
        if line is None:
            raise LineNotFound(line_id)
        new = dict(line)
        if quantity is not None:
            new["quantity"] = str(decimal_in(quantity, field="quantity", low=Decimal("0.0001"), high=Decimal(10**9)))
        if unit_price_cents is not None:
            if unit_price_cents < 0:
                raise DomainError("unit price must not be negative", field="unit_price")
            new["unit_price_cents"] = unit_price_cents
        if discount_percent is not None:
            new["discount_percent"] = str(decimal_in(discount_percent, field="discount_percent", low=Decimal(0),
                                                     high=Decimal(100)))
        new["total_cents"] = line_total_cents(new["quantity"], new["unit_price_cents"], new["discount_percent"])
        if new != line:
            lines = {**self.lines, new["id"]: new}
            self._line_updated(line=new, value_cents=self._value_with(lines))

    @event("ServiceUpdated")
    def _line_updated(self, line: dict[str, Any], value_cents: int) -> None:
        self.lines = {**self.lines, line["id"]: line}
        self.value_cents = value_cents

    def remove_service(self, line_id: UUID) -> None:
        if str(line_id) not in self.lines:
            raise LineNotFound(line_id)
        lines = {k: v for k, v in self.lines.items() if k != str(line_id)}
        self._line_removed(line_id=line_id, value_cents=self._value_with(lines))

    @event("ServiceRemoved")
    def _line_removed(self, line_id: UUID, value_cents: int) -> None:
        self.lines = {k: v for k, v in self.lines.items() if k != str(line_id)}
        self.value_cents = value_cents

    # -- contacts ----------------------------------------------------------------------------------------
    def add_contact(self, client_id: UUID, contact: dict[str, Any], role: str | None) -> None:
        """Link a contact person of the deal's client (the caller has checked it belongs to that client)."""
        if self.client_id is None or client_id != self.client_id:
            raise DomainError("the contact must belong to the deal's client", field="contact_id")
        if contact["id"] not in self.contacts:
            self._contact_added(contact_id=UUID(contact["id"]), name=contact.get("name"), role=role)

    @event("ContactAdded")
    def _contact_added(self, contact_id: UUID, name: str | None, role: str | None) -> None:
        self.contacts = {**self.contacts, str(contact_id): {"id": str(contact_id), "name": name, "role": role}}

    def remove_contact(self, contact_id: UUID) -> None:
        if str(contact_id) not in self.contacts:
            raise NotFound("deal contact", contact_id, field="contact_id")
        self._contact_removed(contact_id=contact_id)

    @event("ContactRemoved")
    def _contact_removed(self, contact_id: UUID) -> None:
        self.contacts = {k: v for k, v in self.contacts.items() if k != str(contact_id)}

    # -- commissions -------------------------------------------------------------------------------------
    def set_commission(self, user_id: UUID, *, percent: Decimal | None = None, amount_cents: int | None = None) -> None:
        """A user's commission: either a percentage of the deal value or a fixed amount, never both."""
        if (percent is None) == (amount_cents is None):
            raise DomainError("give exactly one of percent or amount", field="percent")
        pct = None if percent is None else str(decimal_in(percent, field="percent", low=Decimal(0), high=Decimal(100)))
        if amount_cents is not None and amount_cents < 0:
            raise DomainError("amount must not be negative", field="amount")
        current = self.commissions.get(str(user_id))
        if current != {"user_id": str(user_id), "percent": pct, "amount_cents": amount_cents}:
            self._commission_set(user_id=user_id, percent=pct, amount_cents=amount_cents)

    @event("CommissionSet")
    def _commission_set(self, user_id: UUID, percent: str | None, amount_cents: int | None) -> None:
        self.commissions = {**self.commissions,
                            str(user_id): {"user_id": str(user_id), "percent": percent, "amount_cents": amount_cents}}

    def remove_commission(self, user_id: UUID) -> None:
        if str(user_id) not in self.commissions:
            raise NotFound("commission", user_id, field="user_id")
        self._commission_removed(user_id=user_id)

    @event("CommissionRemoved")
    def _commission_removed(self, user_id: UUID) -> None:
        self.commissions = {k: v for k, v in self.commissions.items() if k != str(user_id)}
