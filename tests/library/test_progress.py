"""Progress: a bar redrawn in place on a terminal, throttled log events otherwise."""

from __future__ import annotations

import io

from structlog.testing import capture_logs

from astrod.library.progress import BarProgress, EventProgress, progress_for


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_redraws_one_line() -> None:
    """The bar redraws with carriage returns, shows done/total and ends with one newline."""
    out = io.StringIO()
    bar = BarProgress(out, width=10)
    bar.start("build", 4)
    for i in range(4):
        bar.advance(f"item {i}")
    bar.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = [f for f in text.split("\r") if f.startswith("build")]
    assert frames[0].startswith("build  [----------] 0/4")
    assert "[#####-----] 2/4  item 1" in text
    assert frames[-1].startswith("build  [##########] 4/4")


def test_events_are_throttled_and_close_each_stage() -> None:
    """Without a terminal, a stage logs its start and end, and in between at most one event per interval."""
    with capture_logs() as logs:
        events = EventProgress(every_seconds=3600)
        events.start("scan", 100)
        for _ in range(100):
            events.advance("f.fits")
        events.finish()
    assert [e["event"] for e in logs] == ["progress_started", "progress_finished"]
    assert logs[-1]["done"] == 100 and logs[-1]["total"] == 100 and logs[-1]["stage"] == "scan"
    with capture_logs() as logs:
        events = EventProgress(every_seconds=0.0)
        events.start("scan", 2)
        events.advance("a")
        events.advance("b")
        events.finish()
    assert [e.get("item") for e in logs if e["event"] == "progress_advanced"] == ["a", "b"]


def test_progress_for_picks_by_terminal() -> None:
    """A terminal gets the bar, anything else the events."""
    assert isinstance(progress_for(FakeTTY()), BarProgress)
    assert isinstance(progress_for(io.StringIO()), EventProgress)
