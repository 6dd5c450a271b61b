"""Many tasks submitted at once over several nodes: every one finishes, each exactly once.

Issue 11: 10,000 no-op tasks on four 1-CPU nodes stalled for good at about 85 %. The
driver's node spills nearly all of them at once; the results of thousands of tasks then
came back home at once, overflowed the home's gRPC backlog (calls cancelled), and a report
was given up after a few tries, so its task stayed "spilled" forever. ``Schedule`` calls
without a deadline hung the same way. Real processes throughout.
"""

from __future__ import annotations

import pathlib
from collections import Counter

import pytest

import runtime as rt

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]

N = 10_000


def test_ten_thousand_tasks_over_four_nodes_all_finish_each_exactly_once(tmp_path: pathlib.Path) -> None:
    ran = str(tmp_path / "ran")

    @rt.remote
    def mark(i: int) -> int:
        with open(ran, "a") as f:  # one short O_APPEND write per run: lines never interleave
            f.write(f"{i}\n")
        return i

    rt.init(num_nodes=4, num_cpus=1)
    try:
        refs = [mark.remote(i) for i in range(N)]
        _, pending = rt.wait(refs, num_returns=N, timeout=300)
        assert not pending, f"{len(pending)} of {N} tasks did not finish within 300 s"
        assert rt.get(refs, timeout=60) == list(range(N))
        runs = Counter(int(line) for line in pathlib.Path(ran).read_text().split())
        assert sorted(runs) == list(range(N))
        twice = {i: n for i, n in runs.items() if n > 1}
        assert not twice, f"{len(twice)} tasks ran more than once, e.g. {list(twice.items())[:5]}"
    finally:
        rt.shutdown()
