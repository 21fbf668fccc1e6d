"""Money: exact yuan amounts, input in 元 / 万元 / 亿元, and a display form such as `30亿元`."""

import re
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from enum import StrEnum

CENT = Decimal("0.01")
# NUMERIC(18, 2): sixteen digits of yuan, which also fits SQLite's integer fen.
MAX_AMOUNT = Decimal("9999999999999999.99")


class MoneyUnit(StrEnum):
    """元 人民币元 (yuan), 万元 一万元 (10,000 yuan), 亿元 一亿元 (100,000,000 yuan)"""

    YUAN = "元"
    WAN = "万元"
    YI = "亿元"


FACTORS = {
    MoneyUnit.YUAN: Decimal(1),
    MoneyUnit.WAN: Decimal(10_000),
    MoneyUnit.YI: Decimal(100_000_000),
}


# Exact arithmetic for `to_yuan`: an amount bounded as it is there has at most a few dozen
# significant digits that matter, and any digit that would be rounded away is an error.
EXACT = Context(prec=64, traps=[InvalidOperation, Overflow, DivisionByZero, Inexact])


def to_yuan(amount: Decimal, unit: MoneyUnit = MoneyUnit.YUAN) -> Decimal:
    """`30` 亿元 → `3000000000.00`; refuses what would need rounding, or is negative or too big.

    Checked before any arithmetic: `1e1000000` overflowed the default context (a 500), and a
    number of more than 28 digits was rounded by it before the fen check could see it."""
    if not amount.is_finite():
        raise ValueError("金额须为有限的十进制数 (not a finite decimal amount)")
    if amount < 0:
        raise ValueError("金额不能为负 (an amount cannot be negative)")
    too_big = ValueError(f"金额不能超过 {MAX_AMOUNT} 元 (an amount cannot exceed {MAX_AMOUNT} 元)")
    if amount and amount.adjusted() > MAX_AMOUNT.adjusted():  # too many digits in any unit
        raise too_big
    try:
        exact = EXACT.multiply(amount, FACTORS[unit]).quantize(CENT, context=EXACT)
    except Inexact:
        raise ValueError(
            f"金额按{unit}换算成元后须精确到分 (an amount is kept to the fen, 0.01 元)"
        ) from None
    if exact > MAX_AMOUNT:
        raise too_big
    return exact.copy_abs()  # -0 is 0


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


AMOUNT_TEXT_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*(亿元|亿|万元|万|元)?\s*$"
_WITH_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(亿元|亿|万元|万|元)?\s*")
_UNIT_NAMES = {"亿元": MoneyUnit.YI, "亿": MoneyUnit.YI, "万元": MoneyUnit.WAN, "万": MoneyUnit.WAN}


def amount_text(value: object) -> object:
    """A query's amount as staff write it — `100000000`, `1亿`, `1.5亿元`, `5000万` — as exact
    yuan (a Decimal), by `to_yuan`'s rules; other text is refused, saying what is expected."""
    if not isinstance(value, str):
        return value
    if not (match := _WITH_UNIT.fullmatch(value)):
        raise ValueError(
            f"应为金额，单位为元或写明单位，如 100000000、1亿、1.5亿元、5000万，而不是“{value[:50]}” "
            "(an amount in yuan, or with its unit)"
        )
    unit = _UNIT_NAMES.get(match.group(2) or "", MoneyUnit.YUAN)
    return to_yuan(Decimal(match.group(1)), unit)
