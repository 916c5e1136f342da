"""sd_notify datagrams reach a real Unix socket the test creates, as systemd's would."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from astrod.service.notify import Notifier


def test_ready_status_watchdog_reach_the_socket(tmp_path: Path) -> None:
    """READY=1 with STATUS, then WATCHDOG=1, arrive as separate datagrams; WATCHDOG_USEC gives half the period."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000",
                             "WATCHDOG_PID": str(os.getpid())})
        assert notifier.enabled and notifier.watchdog_interval == 10.0
        assert notifier.ready("M31/L: 0 stacked")
        assert notifier.watchdog()
        assert server.recv(4096) == b"READY=1\nSTATUS=M31/L: 0 stacked"
        assert server.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_address() -> None:
    """An '@name' address is Linux's abstract namespace."""
    name = f"astrod-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert server.recv(100) == b"STATUS=hello"


def test_without_systemd_nothing_is_sent() -> None:
    """Outside systemd the notifier is disabled and says so; a watchdog for another PID is not ours."""
    assert not Notifier({}).ready()
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
