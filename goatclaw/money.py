"""Dollars as a person reads them: the one formatter for costs, budgets and caps.

LLM calls cost fractions of a cent, so a fixed ``:.2f`` prints a ``$0.001`` budget as
``$0.00`` and a fixed ``:.6f`` prints ``$12.000000``. :func:`usd` keeps two decimals from a
dollar up and, below, as many as the amount needs (up to six).
"""

from __future__ import annotations

__all__ = ["usd"]


def usd(amount: float | int | None) -> str:
    """``$12.35``, ``$0.50``, ``$0.001``, ``$0.000123``, ``$0``; under a millionth ``<$0.000001``."""
    if amount is None:
        return "-"
    value = float(amount)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "$0"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    text = f"{value:.6f}".rstrip("0")
    if text == "0.":
        return "<$0.000001"
    decimals = len(text.split(".")[1])
    return f"{sign}${value:.{max(2, decimals)}f}"
