"""Resource amounts: the one fit test shared by the node and the global scheduler.

A resource set maps names (``"CPU"``, ``"GPU"``, custom ones) to amounts. Amounts are
floats, so a sum of fractions (``0.1 * 10``) may land a hair off a whole number: every
comparison allows :data:`EPSILON`.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Slack in every comparison of amounts (float sums of fractions).
EPSILON = 1e-9


def fits(need: Mapping[str, float], available: Mapping[str, float]) -> bool:
    """True when every amount in ``need`` is within what ``available`` has (missing: 0).

    >>> fits({"CPU": 1.0}, {"CPU": 2.0}), fits({"GPU": 1.0}, {"CPU": 8.0})
    (True, False)
    """
    for name, amount in need.items():  # noqa: SIM110 - hot path: a loop beats all() over a generator
        if amount > available.get(name, 0.0) + EPSILON:
            return False
    return True


def how_many_fit(need: Mapping[str, float], available: Mapping[str, float], limit: int) -> int:
    """How many tasks needing ``need`` fit at once in ``available``, at most ``limit``.

    >>> how_many_fit({"CPU": 0.5}, {"CPU": 2.0}, 10)
    4
    """
    n = limit
    for name, amount in need.items():
        if amount > 0:
            n = min(n, int(available.get(name, 0.0) / amount + EPSILON))
    return n


def describe(resources: Mapping[str, float]) -> str:
    """``{CPU: 1, GPU: 0.5}``: a resource set as error messages show it."""
    def amount(k: str, v: float) -> str:
        return f"{v / 2**30:.1f} GiB" if k == "memory" else f"{v:g}"
    return "{" + ", ".join(f"{k}: {amount(k, v)}" for k, v in sorted(resources.items())) + "}"
