"""Exact money: integer cents everywhere, Decimal only for quantities, discounts and percentages.

Nothing here uses float. Amounts enter as Decimal (from a string or JSON number) and are rounded half-up
to whole cents once; percentages are Decimal strings inside events so that replay is exact.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from domain.errors import DomainError
from domain.values import MAX_AMOUNT, check_minor_units

CENT = Decimal("0.01")
SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "CHF": "CHF ", "JPY": "¥"}


def to_cents(amount: Decimal | int | str, *, field: str) -> int:
    """A currency amount (e.g. Decimal('45000.50')) as integer cents; refuses negatives and non-numbers."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise DomainError("must be a decimal amount, e.g. 45000 or 45000.50", field=field) from None
    if not value.is_finite() or value < 0:
        raise DomainError("must be a non-negative amount", field=field)
    if value > MAX_AMOUNT:
        raise DomainError(f"must be at most {MAX_AMOUNT:.0f}", field=field)
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def decimal_in(value: Decimal | int | str, *, field: str, low: Decimal, high: Decimal) -> Decimal:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise DomainError("must be a decimal number", field=field) from None
    if not d.is_finite() or d < low or d > high:
        raise DomainError(f"must be between {low} and {high}", field=field)
    return d.normalize() if d != 0 else Decimal(0)


def line_total_cents(quantity: Decimal | str, unit_price_cents: int, discount_percent: Decimal | str) -> int:
    """quantity x unit price x (1 - discount), rounded half-up to the cent; never beyond what can be stored."""
    total = Decimal(str(quantity)) * unit_price_cents * (1 - Decimal(str(discount_percent)) / 100)
    return check_minor_units(int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP)), field="quantity")


def percent_of(cents: int, percent: Decimal | str) -> int:
    return int((Decimal(cents) * Decimal(str(percent)) / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def amount(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def format_money(cents: int, currency: str) -> str:
    """`€45,000.00`: the symbol, thousands separators, always two decimals."""
    sign = "-" if cents < 0 else ""
    symbol = SYMBOLS.get(currency, currency + " ")
    return f"{sign}{symbol}{amount(abs(cents)):,.2f}"
