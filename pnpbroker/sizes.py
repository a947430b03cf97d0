"""Sizes as the configuration and the command line write them: ``134217728``, ``"128M"``."""

from __future__ import annotations

_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(value: object) -> int | None:
    """Bytes for an integer, a string of digits, or digits with K, M or G (binary, any case).

    None for anything else (booleans, negative numbers, other text): the caller names the key.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    digits, unit = (value[:-1], value[-1:].upper()) if value[-1:].isalpha() else (value, "")
    if not digits.isascii() or not digits.isdigit() or (unit and unit not in _SUFFIXES):
        return None
    return int(digits) * _SUFFIXES.get(unit, 1)
