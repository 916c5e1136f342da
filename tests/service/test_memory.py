"""The huge-page advice astrod's processes turn off (astrod.service.memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from astrod.service import memory


@pytest.fixture
def switch() -> Iterator[Callable[[bool], bool]]:
    setter = memory._numpy_switch()
    assert setter is not None, "numpy no longer has the setter behind NUMPY_MADVISE_HUGEPAGE"
    before = setter(True)  # a known state; the setter returns the one it replaces
    yield setter
    setter(before)


def test_turns_numpy_huge_page_advice_off(switch: Callable[[bool], bool]) -> None:
    assert memory.prefer_small_pages(environ={}) is True
    assert switch(True) is False  # what it replaced: the advice was off


def test_leaves_it_to_the_users_environment_variable(switch: Callable[[bool], bool]) -> None:
    assert memory.prefer_small_pages(environ={memory.ENV: "1"}) is False
    assert switch(True) is True  # untouched


@pytest.mark.parametrize(("argv", "small"), [(["stack", "x.fits", "-o", "y.fits"], True), (["run"], False),
                                             (["demo"], False)])
def test_a_command_says_which_pages_it_wants(argv: list[str], small: bool) -> None:
    """`astrod stack` asks for small pages; the daemon keeps numpy's default (see the module's measurements)."""
    from astrod.cli import build_parser

    assert getattr(build_parser().parse_args(argv), "small_pages", False) is small


def test_the_stack_command_turns_it_off(switch: Callable[[bool], bool], monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from astrod.cli import main

    monkeypatch.delenv(memory.ENV, raising=False)
    assert main(["stack", str(tmp_path / "none.fits"), "-o", str(tmp_path / "out.fits")]) != 0  # nothing to stack
    capsys.readouterr()
    assert switch(True) is False
