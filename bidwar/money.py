"""Exact money: integer cents inside, decimal strings outside.

Amounts cross the wire and the screen as decimal strings in the currency's main
unit ("12", "12.5", "12.50").  They are parsed exactly once, at the edge, into
an ``int`` number of cents; nothing in bidwar ever holds money in a float.

The grammar is deliberately narrow: ASCII digits, an optional dot and at most
two decimals.  Anything else ("-5", "1e3", "NaN", "١٢", " 12") is refused
rather than guessed at, because a bidder who typed something odd should be
told, not surprised by what was bid on their behalf.
"""

import re

CENTS_PER_UNIT = 100

# One billion in the main unit: far above any real lot, far below anything
# that could overflow a 64-bit SQLite integer or confuse a JSON reader.
MAX_CENTS = 1_000_000_000 * CENTS_PER_UNIT

# Bounded repetition so that a hostile megabyte of digits is refused by the
# pattern's length check instead of being converted to a huge int first.
_AMOUNT_PATTERN = re.compile(r"(?P<units>[0-9]{1,10})(?:\.(?P<cents>[0-9]{1,2}))?")


class AmountError(ValueError):
    """A text amount is not a valid positive amount of money."""


def parse_amount(text: str) -> int:
    """Return ``text`` (such as ``"12.50"``) as a positive number of cents.

    Raises :class:`AmountError` with a message fit to show a user when the
    text is not a plain decimal with at most two decimals, is zero, or is
    above :data:`MAX_CENTS`.
    """
    if not isinstance(text, str):
        raise AmountError("an amount must be a decimal string such as 12.50")

    match = _AMOUNT_PATTERN.fullmatch(text)
    if match is None:
        raise AmountError(
            f"{_preview(text)} is not an amount: use digits with at most two "
            "decimals, such as 12 or 12.50"
        )

    cents = int(match["units"]) * CENTS_PER_UNIT + int(
        (match["cents"] or "0").ljust(2, "0")
    )
    if cents <= 0:
        raise AmountError("an amount must be more than zero")
    if cents > MAX_CENTS:
        raise AmountError(f"an amount may not exceed {format_cents(MAX_CENTS)}")
    return cents


def format_cents(cents: int) -> str:
    """Return ``cents`` as a decimal string with exactly two decimals."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), CENTS_PER_UNIT)
    return f"{sign}{units}.{rest:02d}"


def _preview(text: str, limit: int = 20) -> str:
    """Quote user text for an error message without echoing a huge payload."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return repr(shown)
