"""``get_with_progress``: rt.get's values and errors, and the bar's text fallbacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
from IPython.core.formatters import DisplayFormatter
from IPython.lib.pretty import pretty

import runtime as rt
from runtime.exceptions import GetTimeoutError
from widgets.progress import GetProgress, get_with_progress

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote
def held(flag: Any, x: int) -> int:
    flag.wait()
    return x


@rt.remote(max_retries=0)
def boom() -> None:
    raise ValueError("boom")


def test_values_in_order_like_rt_get(cluster: rt.ClusterInfo) -> None:
    refs = [square.remote(i) for i in range(30)]
    assert get_with_progress(refs) == [i * i for i in range(30)]
    assert get_with_progress(refs + refs[:2], delay=0) == rt.get(refs + refs[:2])  # repeats too
    assert get_with_progress(refs[3]) == 9                                        # one ref
    assert get_with_progress([]) == []


def test_waits_for_tasks_that_take_longer_than_the_delay(cluster: rt.ClusterInfo,
                                                         make_flag: Callable[[str], Any]) -> None:
    flag = make_flag("slow")
    refs = [held.remote(flag, i) for i in range(4)]
    with pytest.raises(GetTimeoutError):
        get_with_progress(refs, timeout=0.3, delay=0.1)  # held: cannot be ready in time
    flag.set()
    assert get_with_progress(refs, delay=0) == [0, 1, 2, 3]


def test_a_failed_task_raises_its_error(cluster: rt.ClusterInfo) -> None:
    with pytest.raises(ValueError, match="boom"):
        get_with_progress([square.remote(1), boom.remote()], delay=0)


def test_bad_arguments(cluster: rt.ClusterInfo) -> None:
    with pytest.raises(ValueError, match="timeout"):
        get_with_progress([square.remote(1)], timeout=-1)


def test_the_bar_counts_and_reads_as_text() -> None:
    bar = GetProgress(100, "rt.get")
    bar.update(40, 1.23)
    assert bar.bar.value == 40 and pretty(bar) == "rt.get: 40/100 ready · 1.2 s"
    assert bar._repr_mimebundle_()["text/plain"] == "rt.get: 40/100 ready · 1.2 s"
    bar.finish(2.5)
    assert bar.bar.bar_style == "success" and bar.summary() == "rt.get: 100/100 ready · 2.5 s"
    bar.close()
    # Closed, it is a static picture: what replaces the live bar in the notebook.
    data, _ = DisplayFormatter().format(bar)
    assert data["text/plain"] == "rt.get: 100/100 ready · 2.5 s"
    assert '<progress value="100" max="100"' in data["text/html"]
    failed = GetProgress(10)
    failed.update(3, 0.5)
    failed.finish(0.6, ok=False)
    assert failed.summary() == "rt.get: 3/10 ready, then failed · 0.6 s"
    assert failed.bar.bar_style == "danger"
    failed.close()
