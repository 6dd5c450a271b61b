"""The cell strip's text and HTML (pure), and the widget's fallbacks. No cluster, no kernel."""

from __future__ import annotations

import re

import pytest
from IPython.core.formatters import DisplayFormatter

from widgets.cell_strip import CellStrip, StripCounts, strip_html, strip_line


def test_counts_of_task_states() -> None:
    counts = StripCounts.of(["FINISHED", "FAILED", "CANCELLED", "RUNNING", "QUEUED", "SUBMITTED",
                             "SENT_AHEAD", "RETRYING", "INFEASIBLE", None])
    assert counts == StripCounts(done=1, failed=1, cancelled=1, running=1, pending=6)
    assert (counts.total, counts.unfinished) == (10, 7)
    assert StripCounts.of([]) == StripCounts()


@pytest.mark.parametrize("counts, line", [
    (StripCounts(done=5, running=4, pending=3), "12 tasks: 5 done · 4 running · 3 pending · 0 failed"),
    (StripCounts(pending=1), "1 task: 0 done · 0 running · 1 pending · 0 failed"),
    (StripCounts(done=1, failed=1, cancelled=2, running=1),
     "5 tasks: 1 done · 1 running · 0 pending · 1 failed · 2 cancelled"),
])
def test_live_line_has_a_fixed_shape(counts: StripCounts, line: str) -> None:
    assert strip_line(counts) == line


@pytest.mark.parametrize("counts, elapsed, ended, line", [
    (StripCounts(done=11, failed=1), 3.21, "", "12 tasks: 11 done · 1 failed (in 3.2 s)"),
    (StripCounts(done=6), 0.04, "", "6 tasks: 6 done (in 0.0 s)"),
    (StripCounts(done=1), 125.0, "", "1 task: 1 done (in 2 min 5 s)"),
    (StripCounts(cancelled=3), 1.0, "", "3 tasks: 0 done · 3 cancelled (in 1.0 s)"),
    (StripCounts(done=5, running=3, pending=4), 3.2, "cluster disconnected",
     "12 tasks: 5 done · 7 unfinished (cluster disconnected after 3.2 s)"),
])
def test_final_line_keeps_what_happened(counts: StripCounts, elapsed: float, ended: str, line: str) -> None:
    assert strip_line(counts, elapsed=elapsed, ended=ended) == line


def test_html_has_one_segment_per_nonzero_state_and_escapes_the_line() -> None:
    text = strip_html(StripCounts(done=2, failed=0, running=1, pending=3), "a <b> & c")
    assert re.findall(r'title="(\d+ \w+)"', text) == ["2 done", "1 running", "3 pending"]
    assert "flex:2 0 0" in text and "flex:3 0 0" in text
    assert "a &lt;b&gt; &amp; c" in text and "<b>" not in text


def test_widget_sends_only_changes_and_falls_back_to_text() -> None:
    strip = CellStrip(StripCounts(pending=2))
    try:
        assert strip.line == "2 tasks: 0 done · 0 running · 2 pending · 0 failed"
        assert not strip.show(StripCounts(pending=2))                      # same text: nothing sent
        assert strip.show(StripCounts(done=1, running=1))
        assert "1 running" in strip.value
        bundle, _ = DisplayFormatter().format(strip)
        assert bundle["text/plain"] == strip.line
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert strip.show(StripCounts(done=2), elapsed=1.5)
        assert strip.static() == {"text/html": strip_html(StripCounts(done=2), strip.line),
                                  "text/plain": "2 tasks: 2 done (in 1.5 s)"}
    finally:
        strip.close()
    assert strip.comm is None and strip.layout.comm is None and strip.style.comm is None
    bundle, _ = DisplayFormatter().format(strip)   # closed: static HTML and text, no widget view
    assert bundle["text/plain"] == "2 tasks: 2 done (in 1.5 s)"
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert "cellray-strip" in bundle["text/html"]
