"""统一社会信用代码 (unified social credit code) check, GB 32100-2015."""

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
WEIGHTS = [pow(3, i, 31) for i in range(17)]


def check_character(first17: str) -> str:
    total = sum(ALPHABET.index(ch) * w for ch, w in zip(first17, WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def validate(code: str) -> str:
    """The code, upper-cased, or ValueError saying what is wrong with it."""
    code = code.strip().upper()
    if len(code) != 18:
        raise ValueError(f"a credit code has 18 characters, this one has {len(code)}")
    bad = sorted({ch for ch in code if ch not in ALPHABET})
    if bad:
        raise ValueError(f"characters not allowed in a credit code: {' '.join(bad)}")
    expected = check_character(code[:17])
    if code[17] != expected:
        raise ValueError(f"check character is {code[17]}, expected {expected}")
    return code
