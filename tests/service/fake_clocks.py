"""Fake wall and monotonic clocks for the daemon's close scheduling: each a one-element list read by a
callable, as the daemon reads its clocks; the test thread moves them by hand."""

from __future__ import annotations

from datetime import datetime, timedelta


class Clocks:
    """A wall clock and a monotonic clock, each a one-element list read by a callable (as the daemon's are)."""

    def __init__(self, wall: datetime, mono: float = 1000.0) -> None:
        self._wall = [wall]
        self._mono = [mono]

    def wall(self) -> datetime:
        return self._wall[0]

    def mono(self) -> float:
        return self._mono[0]

    def tick(self, seconds: float) -> None:
        """Time passes normally: both clocks move by ``seconds``."""
        self._wall[0] += timedelta(seconds=seconds)
        self._mono[0] += seconds

    def pass_until(self, wall: datetime) -> None:
        """Time passes normally until the wall clock reads ``wall``."""
        self.tick((wall - self._wall[0]).total_seconds())

    def jump(self, by: timedelta) -> None:
        """The wall clock is set (NTP, a user, an RTC-less boot syncing); the monotonic clock does not move."""
        self._wall[0] += by

    def set_wall(self, to: datetime) -> None:
        self._wall[0] = to

    def advance_mono(self, seconds: float) -> None:
        """Only the monotonic clock moves (the wall clock held still by the test)."""
        self._mono[0] += seconds
