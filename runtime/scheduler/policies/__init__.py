"""Placement policies, one per module; ``make_policy(name)`` builds one by name.

``locality`` (default)
    Least estimated wait + input transfer time (``locality.LocalityPolicy``).
``spread``
    Least loaded node (``spread.SpreadPolicy``).
"""

from __future__ import annotations

import random
from typing import Any

from runtime.scheduler.policies.base import Choice, Policy

__all__ = ["POLICY_NAMES", "Choice", "Policy", "make_policy"]

#: Names accepted by ``make_policy`` and ``python -m runtime.scheduler --policy``.
POLICY_NAMES = ("locality", "spread")


def make_policy(name: str = "locality", *, rng: random.Random | None = None, **options: Any) -> Policy:
    """The policy called ``name``; ``options`` go to its constructor (e.g. ``task_time_s``).

    Raises ``ValueError`` naming the accepted names when ``name`` is unknown.
    """
    # Imported here: the policy modules import ``state``, which imports this package.
    if name == "locality":
        from runtime.scheduler.policies.locality import LocalityPolicy
        return LocalityPolicy(rng=rng, **options)
    if name == "spread":
        from runtime.scheduler.policies.spread import SpreadPolicy
        return SpreadPolicy(rng=rng, **options)
    raise ValueError(f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
