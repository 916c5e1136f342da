"""The shipped systemd unit asks for what the daemon provides, is hardened, and passes systemd-analyze verify."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "astrod.service"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_unit_has_notify_watchdog_restart_and_hardening() -> None:
    """Type=notify with a watchdog, restart on failure, a state directory, a dedicated user, and hardening."""
    service = read_unit()["Service"]
    expected = {"Type": "notify", "Restart": "on-failure", "StateDirectory": "astrod", "User": "astrod",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}
    assert {k: service.get(k) for k in expected} == expected
    assert service.get("WatchdogSec") and service.get("ReadWritePaths")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with ExecStart pointing at this environment's astrod)."""
    astrod = Path(sys.executable).parent / "astrod"
    if not astrod.exists():
        pytest.skip("astrod console script is not installed in this environment")
    unit = tmp_path / "astrod.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/astrod/.venv/bin/astrod", str(astrod)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
