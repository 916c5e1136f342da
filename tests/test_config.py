"""Configuration: defaults, validation that reports every problem, the example file, `astrod config check`."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomli

from astrod.config import EX_CONFIG, Config, iter_options, parse_config
from astrod.errors import ConfigError
from astrod.io.config_file import load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "astrod.example.toml"


def test_no_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no config file astrod uses XDG paths for state and library, ./capture and ./stacks."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    env = {"XDG_STATE_HOME": "/s", "XDG_DATA_HOME": "/d", "HOME": "/h"}
    assert config.state_dir(env) == Path("/s/astrod")
    assert config.library_dir(env) == Path("/d/astrod/library")
    assert config.state_dir({"HOME": "/h"}) == Path("/h/.local/state/astrod")
    assert config.paths.watch == (tmp_path / "capture",)
    assert config.paths.output == tmp_path / "stacks"


def test_default_folders_resolve_against_the_config_file_like_written_ones(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """A config file that leaves watch or output out gets them beside the file, exactly where the same values
    written in the file would point; the working folder does not matter. Only without a file do they resolve
    against the working folder."""
    conf = tmp_path / "etc"
    conf.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (conf / "empty.toml").write_text("[stack]\nkappa = 3.0\n")
    (conf / "written.toml").write_text('[paths]\nwatch = ["capture"]\noutput = "stacks"\n')
    (conf / "half.toml").write_text('[paths]\noutput = "/srv/astro/stacks"\n')
    empty, written, half = (load_config(conf / n) for n in ("empty.toml", "written.toml", "half.toml"))
    assert empty.paths.watch == written.paths.watch == (conf / "capture",)
    assert empty.paths.output == written.paths.output == conf / "stacks"
    assert half.paths.watch == (conf / "capture",) and half.paths.output == Path("/srv/astro/stacks")
    assert load_config(None).paths.watch == (elsewhere / "capture",)


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    """Unknown keys (with a suggestion), wrong types, bad paths and out-of-range numbers all come back at once."""
    (tmp_path / "afile").write_text("x")
    text = """
[paths]
wacth = ["capture"]
output = "afile"
[library]
kappa = "three"
min_frames = 0
[stak]
kappa = 3.0
[stack]
weighting = "snrr"
[[headers.folders]]
pattern = "*/Ha/*"
set = { filtre = "Ha" }
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, base=tmp_path)
    problems = info.value.problems
    assert problems == [
        "paths.wacth: unknown key (did you mean 'watch'?)",
        f"paths.output: {tmp_path / 'afile'} exists and is not a folder",
        "library.kappa: expected number, got 'three'",
        "library.min_frames: 0 is out of range [1, 10000]",
        "stak: unknown key (did you mean 'stack'?)",
        "stack.weighting: 'snrr' is not one of none, snr, fwhm (did you mean 'snr'?)",
        "headers.folders[0].set.filtre: not a field a folder rule can set (did you mean 'filter'?)",
    ]


def test_invalid_toml_is_one_problem(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the position."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[paths\nwatch = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


def _example_option_lines(lines: list[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Line indexes of the example's options by dotted key: set (``key = ...``) and commented out
    (``# key = ...``, counted only for options that are unset by default: other commented lines are examples of
    nested tables, like ``# target = "M 31"`` in a ``# [[capture.steps]]`` block)."""
    unset = {key for key, f in iter_options() if f.default is None}
    written: dict[str, list[int]] = {}
    commented: dict[str, list[int]] = {}
    section = ""
    for i, line in enumerate(lines):
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
        elif option := re.match(r"(# )?(\w+) = ", line):
            key = f"{section}.{option[2]}"
            if option[1] is None:
                written.setdefault(key, []).append(i)
            elif key in unset:
                commented.setdefault(key, []).append(i)
    return written, commented


def test_example_covers_every_option_at_its_default_and_loads() -> None:
    """config/astrod.example.toml shows every option of the config dataclasses exactly once, each with a comment
    above it: set to its default value, or, when the default is unset, commented out with a valid example value.
    Loading it gives exactly the defaults (no site, no state or library folder), and uncommenting the examples
    gives a valid config that sets them."""
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    written, commented = _example_option_lines(lines)
    data = tomli.loads(text)
    assert {f"{section}.{key}" for section, table in data.items() for key in table} == set(written)
    options = {key for key, _ in iter_options()}
    unset = {key for key, f in iter_options() if f.default is None}
    assert set(written) == options - unset
    assert set(commented) == unset
    for key, found in {**written, **commented}.items():
        assert len(found) == 1, f"{key} is shown {len(found)} times"
        above = lines[found[0] - 1]
        assert above.startswith("#") and not re.match(r"# \w+ = ", above), f"{key} has no comment"

    config = load_config(EXAMPLE)
    assert config == parse_config("", base=EXAMPLE.parent)
    assert config.paths.watch == (EXAMPLE.parent / "capture",)
    assert config.site.latitude is None and config.paths.state is None

    for i in (found[0] for found in commented.values()):
        lines[i] = lines[i].removeprefix("# ")
    uncommented = parse_config("\n".join(lines), base=EXAMPLE.parent)
    for key in unset:
        section, name = key.split(".")
        assert getattr(getattr(uncommented, section), name) is not None, key


def test_config_dataclasses_are_frozen() -> None:
    """Configuration cannot be changed after loading."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stack = config.stack  # type: ignore[misc]


def test_config_check_prints_three_problems_and_exits_78(tmp_path: Path) -> None:
    """`astrod config check` on a file with three different mistakes prints three lines and exits 78."""
    bad = tmp_path / "astrod.toml"
    bad.write_text('[stack]\nkappa = -1.0\nwieghting = "snr"\n[log]\nlevel = 3\n')
    result = subprocess.run([sys.executable, "-m", "astrod", "config", "check", "--config", str(bad)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == EX_CONFIG
    assert result.stdout.splitlines() == [
        "stack.kappa: -1.0 is out of range [0.5, 20]",
        "stack.wieghting: unknown key (did you mean 'weighting'?)",
        "log.level: expected a string, got 3",
    ]
    ok = subprocess.run([sys.executable, "-m", "astrod", "config", "check", "--config", str(EXAMPLE)],
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_output_formats_are_checked(tmp_path: Path) -> None:
    """[output] formats defaults to fits and jpg; an unknown format (with a suggestion), an empty list and a
    repeated format are problems."""
    assert parse_config("", base=tmp_path).output.formats == ("fits", "jpg")
    assert parse_config('[output]\nformats = ["tiff", "xisf"]', base=tmp_path).output.formats == ("tiff", "xisf")
    for text, problem in (('formats = ["fits", "tif"]', "output.formats[1]: 'tif' is not one of fits, tiff, xisf, "
                                                        "png, jpg (did you mean 'tiff'?)"),
                          ("formats = []", "output.formats: empty: name at least one of fits, tiff, xisf, png, jpg"),
                          ('formats = ["png", "png"]', "output.formats: a format is listed twice")):
        with pytest.raises(ConfigError) as info:
            parse_config(f"[output]\n{text}", base=tmp_path)
        assert info.value.problems == [problem]


def test_photometry_targets_are_checked(tmp_path: Path) -> None:
    """[[photometry.targets]] load as tables; a target without a name, with x but no y, with neither a
    position nor coordinates, a name given twice, and an annulus that ends before it starts are one problem
    each."""
    good = parse_config('[[photometry.targets]]\nname = "TrES-1"\nx = 571.6\ny = 346.0\nra = 286.04\ndec = 36.63\n',
                        base=tmp_path)
    (target,) = good.photometry.targets
    assert (target.name, target.x, target.y, target.ra, target.dec) == ("TrES-1", 571.6, 346.0, 286.04, 36.63)
    text = ('[photometry]\nannulus_inner_fwhm = 5.0\nannulus_outer_fwhm = 4.0\n'
            '[[photometry.targets]]\nx = 1.0\ny = 2.0\n'
            '[[photometry.targets]]\nname = "A"\nx = 1.0\n'
            '[[photometry.targets]]\nname = "B"\n'
            '[[photometry.targets]]\nname = "B"\nra = 10.0\ndec = 20.0\n')
    with pytest.raises(ConfigError) as err:
        parse_config(text, base=tmp_path)
    assert err.value.problems == [
        "photometry.annulus_outer_fwhm: must be larger than annulus_inner_fwhm",
        "photometry.targets[0].name: missing",
        "photometry.targets[1]: x goes with y, ra with dec",
        "photometry.targets[2].name: 'B' is given twice",
        "photometry.targets[2]: give x and y, or ra and dec",
        "photometry.targets[3].name: 'B' is given twice",
    ]
