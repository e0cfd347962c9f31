"""Money in tool inputs and results, exact to the cent, in the organization's currency: every tool uses these."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from msgspec import Meta, Struct

from application.values import decimal_range
from domain.money import amount, format_money
from domain.values import MAX_AMOUNT

AmountArg = Annotated[Decimal, Meta(description="In the organization's currency, e.g. \"1250.50\".",
                                    **decimal_range(0, MAX_AMOUNT))]


class Money(Struct, kw_only=True, omit_defaults=True):
    """An exact amount: `cents` is the integer number of cents, `amount` the exact decimal, `formatted` for people."""

    cents: int
    amount: Decimal
    currency: str
    formatted: str


def money(cents: int | None, currency: str) -> Money:
    cents = int(cents or 0)
    return Money(cents=cents, amount=amount(cents), currency=currency, formatted=format_money(cents, currency))


def percentage(part: int, whole: int) -> tuple[float, float]:
    """(fraction, percent) rounded for display; rates are ratios, not money, so a float is fine here."""
    if not whole:
        return 0.0, 0.0
    frac = Decimal(part) / Decimal(whole)
    return float(frac.quantize(Decimal("0.0001"))), float((frac * 100).quantize(Decimal("0.1")))
