"""Configuration: defaults, validation that reports every problem, the example file, `astrod config check`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tomli

from astrod.config import EX_CONFIG, Config, iter_options, load_config, parse_config
from astrod.errors import ConfigError

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


def test_example_covers_every_option_and_loads() -> None:
    """config/astrod.example.toml sets every option of the config dataclasses, each with a comment above it,
    and is itself valid."""
    data = tomli.loads(EXAMPLE.read_text(encoding="utf-8"))
    present = {f"{section}.{key}" for section, table in data.items() for key in table}
    options = {key for key, _ in iter_options()}
    assert present == options
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for key in options:
        name = key.split(".")[1]
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        assert lines[index - 1].startswith("#"), f"{key} has no comment"
    config = load_config(EXAMPLE)
    assert isinstance(config, Config)
    assert config.paths.watch == (EXAMPLE.parent / "capture",)


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
