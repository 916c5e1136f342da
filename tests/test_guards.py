"""The test suite's own guards work: a test that leaks a thread fails."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_leaked_thread_fails_the_test(pytester: pytest.Pytester) -> None:
    """A test that starts a thread and does not join it is reported as failed by the autouse fixture."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_leak="""
import threading
import time


def test_leaks():
    threading.Thread(target=time.sleep, args=(30,), name="leaky", daemon=True).start()


def test_joins():
    t = threading.Thread(target=time.sleep, args=(0.01,))
    t.start()
    t.join()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.re_match_lines([r".*AssertionError: test leaked threads: \['leaky'\]"])
