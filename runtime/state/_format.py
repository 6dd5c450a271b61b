"""Presenting state to people: sizes in binary units."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """A byte count for people: ``format_bytes(1536)`` is ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
