"""When sessions close: idle time on the monotonic clock, the dawn against the wall clock, wall-clock jumps.

The clocks are fakes the tests move by hand; the dawn is "the next 06:00 UTC", so every expected instant is
exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from astrod.service.closing import JUMP_S, CloseClock
from tests.service.fake_clocks import Clocks

EVENING = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)


def six_utc_after(t: datetime) -> datetime:
    """The first 06:00 UTC strictly after ``t``: a dawn that is easy to reason about."""
    dawn = t.replace(hour=6, minute=0, second=0, microsecond=0)
    return dawn if dawn > t else dawn + timedelta(days=1)


def never_busy(_: str) -> bool:
    return False


def make(clocks: Clocks, *, idle_s: float = 600.0, dawn: bool = True) -> CloseClock:
    return CloseClock(idle_s=idle_s, wall=clocks.wall, monotonic=clocks.mono,
                      dawn_after=six_utc_after if dawn else (lambda _: None))


def test_idle_close_counts_monotonic_seconds_not_wall_clock_jumps() -> None:
    """A session is idle after ``idle_s`` seconds of the monotonic clock: a +2 h wall jump does not make it
    idle (nor does a -2 h jump delay it); it is reported at exactly ``idle_s`` and not a second before."""
    clocks = Clocks(EVENING)
    closes = make(clocks, idle_s=600.0, dawn=False)
    closes.mark_active("m31")
    clocks.tick(1.0)
    clocks.jump(timedelta(hours=2))
    assert closes.check(busy=never_busy).idle == ()
    clocks.tick(300.0)
    clocks.jump(timedelta(hours=-2))
    assert closes.check(busy=never_busy).idle == ()
    clocks.tick(298.0)  # 599 s since the last frame
    assert closes.check(busy=never_busy).idle == ()
    clocks.tick(1.0)
    decision = closes.check(busy=never_busy)
    assert decision.idle == ("m31",) and decision.dawn is False


def test_a_frame_restarts_the_idle_time_and_forget_drops_the_session() -> None:
    """touch() starts the idle time again; a forgotten (closed) session is never reported."""
    clocks = Clocks(EVENING)
    closes = make(clocks, idle_s=60.0, dawn=False)
    closes.mark_active("a")
    closes.mark_active("b")
    clocks.tick(50.0)
    closes.mark_active("a")
    clocks.tick(10.0)
    assert closes.check(busy=never_busy).idle == ("b",)
    closes.forget("b")
    clocks.tick(49.0)
    assert closes.check(busy=never_busy).idle == ()
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).idle == ("a",)


def test_a_busy_session_is_not_closed_until_its_queue_is_empty() -> None:
    """An idle session with frames still in its queue waits; it is reported at the first check after its queue
    emptied, without another idle period."""
    clocks = Clocks(EVENING)
    closes = make(clocks, idle_s=60.0, dawn=False)
    closes.mark_active("a")
    busy = {"a": True}
    clocks.tick(3600.0)
    asked: list[str] = []

    def is_busy(sid: str) -> bool:
        asked.append(sid)
        return busy[sid]

    assert closes.check(busy=is_busy).idle == ()
    assert asked == ["a"]
    clocks.tick(1.0)
    assert closes.check(busy=is_busy).idle == ()
    busy["a"] = False
    clocks.tick(1.0)
    assert closes.check(busy=is_busy).idle == ("a",)


def test_dawn_closes_once_when_the_wall_clock_passes_it_then_the_next_dawn_is_tomorrow() -> None:
    """Checked every second through the night, the dawn is due at the first check at or after 06:00 UTC, once;
    the next dawn is then 06:00 the day after."""
    clocks = Clocks(datetime(2026, 11, 22, 5, 59, 58, tzinfo=UTC))
    closes = make(clocks)
    assert closes.next_dawn == datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).dawn is False  # 05:59:59
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).dawn is True  # 06:00:00
    assert closes.next_dawn == datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).dawn is False


def test_a_two_hour_jump_across_the_dawn_closes_the_night() -> None:
    """05:00 -> 07:00 in one step (an NTP correction after a night on a drifting clock): the jump is logged
    and the night is over."""
    clocks = Clocks(datetime(2026, 11, 22, 5, 0, tzinfo=UTC))
    closes = make(clocks)
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).dawn is False
    clocks.jump(timedelta(hours=2))
    clocks.tick(1.0)
    with capture_logs() as logs:
        decision = closes.check(busy=never_busy)
    assert decision.dawn is True
    (jumped,) = [e for e in logs if e["event"] == "clock_jumped"]
    assert jumped["by_s"] == 7200.0
    assert closes.next_dawn == datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def test_a_jump_that_stays_before_the_dawn_does_not_close() -> None:
    """20:00 -> 22:00: logged as a jump, but it is still night: nothing closes and the dawn stays 06:00."""
    clocks = Clocks(EVENING)
    closes = make(clocks)
    clocks.jump(timedelta(hours=2))
    clocks.tick(1.0)
    with capture_logs() as logs:
        decision = closes.check(busy=never_busy)
    assert decision.dawn is False and decision.idle == ()
    assert [e["event"] for e in logs if e["event"] == "clock_jumped"] == ["clock_jumped"]
    assert closes.next_dawn == datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def test_a_boot_at_1970_then_ntp_does_not_close_and_finds_the_real_next_dawn() -> None:
    """A PC without an RTC battery boots at 1970-01-01 00:00:10 (the dawn it works out is 1970-01-01 06:00),
    then NTP sets the clock to 2026-12-03 20:00: that jump passes the 1970 dawn by 56 years, which is a wrong
    clock, not the end of a night. Nothing closes, the next dawn is 2026-12-04 06:00, and that one closes."""
    clocks = Clocks(datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC), mono=12.0)
    closes = make(clocks, idle_s=600.0)
    assert closes.next_dawn == datetime(1970, 1, 1, 6, 0, tzinfo=UTC)
    closes.mark_active("m31")
    clocks.tick(5.0)
    clocks.set_wall(datetime(2026, 12, 3, 20, 0, tzinfo=UTC))
    decision = closes.check(busy=never_busy)
    assert decision.dawn is False and decision.idle == ()
    assert closes.next_dawn == datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    clocks.tick(60.0)
    assert closes.check(busy=never_busy).dawn is False
    clocks.pass_until(datetime(2026, 12, 4, 5, 59, 59, tzinfo=UTC))  # the night passes: not a jump
    assert closes.check(busy=never_busy).dawn is False
    clocks.tick(1.0)
    assert closes.check(busy=never_busy).dawn is True


def test_small_wall_steps_are_not_jumps() -> None:
    """A wall clock slewed by less than JUMP_S against the monotonic one is not logged as a jump."""
    clocks = Clocks(EVENING)
    closes = make(clocks)
    clocks.tick(10.0)
    clocks.jump(timedelta(seconds=JUMP_S - 1.0))
    with capture_logs() as logs:
        closes.check(busy=never_busy)
    assert not [e for e in logs if e["event"] == "clock_jumped"]


def test_without_a_site_there_is_no_dawn_even_across_jumps() -> None:
    """dawn_after gives None (no [site]): no dawn is ever due, whatever the wall clock does."""
    clocks = Clocks(EVENING)
    closes = make(clocks, dawn=False)
    assert closes.next_dawn is None
    for jump in (timedelta(hours=12), timedelta(days=-3), timedelta(hours=2)):
        clocks.jump(jump)
        clocks.tick(1.0)
        assert closes.check(busy=never_busy).dawn is False


def test_reconfigure_applies_the_new_idle_time_at_once_and_recomputes_the_dawn() -> None:
    """After 120 s of quiet with idle_s = 3600, a SIGHUP setting idle_s = 60 makes the session idle at the very
    next check; a new dawn function (the site removed) applies at once too."""
    clocks = Clocks(EVENING)
    closes = make(clocks, idle_s=3600.0)
    closes.mark_active("m31")
    clocks.tick(120.0)
    assert closes.check(busy=never_busy).idle == ()
    closes.reconfigure(idle_s=60.0, dawn_after=lambda _: None)
    assert closes.idle_s == 60.0 and closes.next_dawn is None
    clocks.tick(0.5)
    assert closes.check(busy=never_busy).idle == ("m31",)
    closes.reconfigure(idle_s=60.0, dawn_after=six_utc_after)
    assert closes.next_dawn == datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
