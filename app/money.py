"""Money: exact yuan amounts, input in 元 / 万元 / 亿元, and a display form such as `30亿元`."""

from decimal import Decimal, InvalidOperation
from enum import StrEnum

CENT = Decimal("0.01")
# NUMERIC(18, 2): sixteen digits of yuan, which also fits SQLite's integer fen.
MAX_AMOUNT = Decimal("9999999999999999.99")


class MoneyUnit(StrEnum):
    YUAN = "元"
    WAN = "万元"
    YI = "亿元"


FACTORS = {
    MoneyUnit.YUAN: Decimal(1),
    MoneyUnit.WAN: Decimal(10_000),
    MoneyUnit.YI: Decimal(100_000_000),
}


def to_yuan(amount: Decimal, unit: MoneyUnit = MoneyUnit.YUAN) -> Decimal:
    """`30` 亿元 → `3000000000.00`; refuses what would need rounding, or is negative or too big."""
    try:
        yuan = amount * FACTORS[unit]
        exact = yuan.quantize(CENT)
    except InvalidOperation as exc:
        raise ValueError("not a finite decimal amount") from exc
    if exact != yuan:
        raise ValueError(f"an amount is kept to the fen (0.01 元); {amount} {unit} is finer")
    if exact < 0:
        raise ValueError("an amount cannot be negative")
    if exact > MAX_AMOUNT:
        raise ValueError(f"an amount cannot exceed {MAX_AMOUNT} 元")
    return exact


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def display(amount: Decimal | None) -> str | None:
    """The form staff read: `30亿元`, `1.5亿元`, `2000万元`, `800元`."""
    if amount is None:
        return None
    for unit in (MoneyUnit.YI, MoneyUnit.WAN):
        if abs(amount) >= FACTORS[unit]:
            return f"{_plain(amount / FACTORS[unit])}{unit}"
    return f"{_plain(amount)}{MoneyUnit.YUAN}"
