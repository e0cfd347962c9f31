"""What the sales tools share: money in results, the organization's currency and 'today', and the generic
'load one aggregate, call one domain method, save' tool declaration used by deals, pipelines, services
and activities (the clients module has its own older copy, `client_command`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo

from msgspec import Meta, Struct

from application.registry import registry
from application.service import UnitOfWork
from domain.base import TenantAggregate
from domain.money import amount, format_money

AmountArg = Annotated[Decimal, Meta(description="An amount in the organization's currency, as a decimal string or number, "
                                                "e.g. \"45000\" or \"1250.50\". Never more than 2 decimals are kept.")]


class Money(Struct, kw_only=True):
    """An exact amount: `cents` is the integer number of cents, `amount` the exact decimal, `formatted` for people."""

    cents: int
    amount: Decimal
    currency: str
    formatted: str


def money(cents: int | None, currency: str) -> Money:
    cents = int(cents or 0)
    return Money(cents=cents, amount=amount(cents), currency=currency, formatted=format_money(cents, currency))


def org_settings(conn: Any, org_id: UUID) -> dict[str, Any]:
    row = conn.execute("SELECT currency, timezone FROM organizations WHERE id = %s", (org_id,)).fetchone()
    return row or {"currency": "EUR", "timezone": "UTC"}


def org_today(conn: Any, org_id: UUID) -> date:
    """'Today' in the organization's timezone: what a close date of 'today' means to its users."""
    return datetime.now(ZoneInfo(org_settings(conn, org_id)["timezone"])).date()


def percentage(part: int, whole: int) -> tuple[float, float]:
    """(fraction, percent) rounded for display; rates are ratios, not money, so a float is fine here."""
    if not whole:
        return 0.0, 0.0
    frac = Decimal(part) / Decimal(whole)
    return float(frac.quantize(Decimal("0.0001"))), float((frac * 100).quantize(Decimal("0.1")))


def aggregate_command(
    name: str, input: type[Struct], aggregate: type[TenantAggregate], id_field: str,
    act: Callable[[Any, Any, UnitOfWork], None], *, output: type, present: Callable[..., Any],
    destructive: bool = False,
) -> None:
    """Declare a tool whose handler is only: load the aggregate named by `id_field`, call the domain, save."""

    def handle(cmd: Any, uow: UnitOfWork) -> UUID:
        agg = uow.get(aggregate, getattr(cmd, id_field), field=id_field)
        act(agg, cmd, uow)
        return agg.id

    handle.__name__ = handle.__qualname__ = name
    registry.command(name, input=input, output=output, returns=UUID, present=present, destructive=destructive)(handle)
