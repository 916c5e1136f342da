"""When sessions close: after ``idle_minutes`` without a frame, and at astronomical dawn.

Checked periodically by the daemon's main loop, not by one-shot timers: idle time runs on the monotonic clock,
which no NTP correction or RTC-less boot moves, and the dawn is compared with the wall clock at every check.
A wall-clock jump (the wall clock moving by more than `JUMP_S` more or less than the monotonic one) is logged,
and the next dawn is worked out again from the new time; the open sessions are closed if the jump went past
their dawn, unless it went more than `MAX_LATE` beyond it (the clock was simply wrong before, as after a boot
at 1970).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from astrod.config import SiteConfig
from astrod.pipeline.night import next_dawn

log = structlog.get_logger()

JUMP_S = 60.0
MAX_LATE = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class CloseDecision:
    idle: tuple[str, ...]  # sessions idle for long enough
    dawn: bool  # the night is over: close every session


class CloseClock:
    """``dawn_after(t)`` gives the first dawn after ``t`` (None: no site, or no dawn within 36 h)."""

    def __init__(self, *, idle_s: float, wall: Callable[[], datetime], monotonic: Callable[[], float],
                 dawn_after: Callable[[datetime], datetime | None]) -> None:
        self.idle_s = idle_s
        self._wall = wall
        self._mono = monotonic
        self._dawn_after = dawn_after
        self._activity: dict[str, float] = {}  # touched by the router, read by the main thread
        self._lock = threading.Lock()
        self._last = (wall(), monotonic())
        self.next_dawn = dawn_after(self._last[0])
        if self.next_dawn is not None:
            log.info("dawn_scheduled", at=self.next_dawn.isoformat())

    def mark_active(self, session: str) -> None:
        """A frame arrived for ``session`` (or it opened): its idle time starts again."""
        with self._lock:
            self._activity[session] = self._mono()

    def forget(self, session: str) -> None:
        with self._lock:
            self._activity.pop(session, None)

    def reconfigure(self, *, idle_s: float, dawn_after: Callable[[datetime], datetime | None]) -> None:
        """New settings (SIGHUP): the idle time applies at once, the dawn is worked out again."""
        self.idle_s = idle_s
        self._dawn_after = dawn_after
        self.next_dawn = dawn_after(self._wall())

    def check(self, *, busy: Callable[[str], bool]) -> CloseDecision:
        """What is due now; ``busy(session)`` tells whether a session still has frames in its queue (an idle
        close waits for them)."""
        wall, mono = self._wall(), self._mono()
        last_wall, last_mono = self._last
        self._last = (wall, mono)
        drift = (wall - last_wall).total_seconds() - (mono - last_mono)
        dawn = False
        if abs(drift) > JUMP_S:
            log.warning("clock_jumped", by_s=round(drift, 1), now=wall.isoformat())
            if self.next_dawn is not None and self.next_dawn <= wall < self.next_dawn + MAX_LATE:
                dawn = True
            else:
                self.next_dawn = self._dawn_after(wall)
        elif self.next_dawn is not None and wall >= self.next_dawn:
            dawn = True
        if dawn:
            self.next_dawn = self._dawn_after(wall + timedelta(minutes=1))
            if self.next_dawn is not None:
                log.info("dawn_scheduled", at=self.next_dawn.isoformat())
        with self._lock:
            quiet = [sid for sid, at in self._activity.items() if mono - at >= self.idle_s]
        idle = tuple(sid for sid in quiet if not busy(sid))
        return CloseDecision(idle=idle, dawn=dawn)


def dawn_at_site(site: SiteConfig) -> Callable[[datetime], datetime | None]:
    """The next astronomical dawn after a time at the configured site (never, without its latitude and
    longitude): sessions still open then are closed."""
    if site.latitude is None or site.longitude is None:
        return lambda _: None
    lat, lon, elev = site.latitude, site.longitude, site.elevation
    return lambda t: next_dawn(t, latitude=lat, longitude=lon, elevation=elev)
