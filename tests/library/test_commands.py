"""The `astrod library build|list|match` and `astrod calibrate` commands: output, JSON and exit status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from astrod.cli import main
from astrod.library.commands import cmd_library_list, register
from tests import synth
from tests.library.observatory import CAMERA_A, NIGHT_1, PLAN, Observatory


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "astrod.toml"
    path.write_text("[site]\nlatitude = 51.5\nlongitude = 0.0\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(observatory: Observatory, config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    library = tmp_path_factory.mktemp("cli") / "lib"
    assert main(["library", "build", "--source", str(observatory.sources), "--library", str(library),
                 "--config", str(config), "-j", "2"]) == 0
    return library


def light(folder: Path, name: str, observatory: Observatory, **header: object) -> Path:
    values: dict[str, object] = {"kind": "light", "exposure": 300.0, "camera": CAMERA_A, "filter": "L",
                                 "date_obs": NIGHT_1}
    values.update(header)
    data = observatory.sensors[CAMERA_A].bias(seed=1)
    return synth.write_fits(folder / name, data, **values)  # type: ignore[arg-type]


def test_build_prints_a_summary_and_skipped_files(observatory: Observatory, config: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The build prints its counts and one line per master (LOW_N marked), the skipped files on stderr; a second
    run keeps everything."""
    args = ["library", "build", "--source", str(observatory.sources), "--library", str(tmp_path / "lib"),
            "--config", str(config)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"library {tmp_path / 'lib'}: {len(PLAN) + 2} new, 0 rebuilt, 0 kept, 0 failed")
    assert sum(1 for line in lines if line.startswith("new ")) == len(PLAN) + 2
    assert any("LOW_N" in line and "gain 0" in line for line in lines)
    assert "skipped: " in err and "notes.fits" in err
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {m["status"] for m in report["masters"]} == {"exists", "up to date"}
    assert report["lights_ignored"] == 1


def test_list_as_a_table_and_as_json(built: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`library list` prints one row per master (with LOW_N), and the same masters as JSON."""
    assert main(["library", "list", "--library", str(built), "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["kind", "camera", "gain", "offset"]
    assert len(lines) == 1 + len(PLAN) + 2
    assert sum("LOW_N" in line for line in lines) == 1
    assert main(["library", "list", "--library", str(built), "--json"]) == 0
    masters = json.loads(capsys.readouterr().out)
    assert len(masters) == len(PLAN) + 2
    assert {m["kind"] for m in masters} == {"bias", "dark", "darkflat", "flat", "badpixels"}
    assert all(Path(m["path"]).is_file() and m["n_frames"] >= 1 for m in masters)


def test_match_explains_and_exits_0_when_all_is_there(built: Path, config: Path, observatory: Observatory,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A light with every master: each role is printed with its reason, exit 0; a scaled dark says so."""
    exact = light(tmp_path, "exact.fits", observatory)
    scaled = light(tmp_path, "scaled.fits", observatory, exposure=90.0)
    assert main(["library", "match", str(exact), str(scaled), "--library", str(built), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "  dark      dark_g100_o50_bin1x1_160x120_m10C_300s_" in out
    assert "(exact; temperature exact (-10 °C))" in out
    assert "dark scaled 60 s → 90 s (×1.5)" in out
    assert "flat      flat_g100_o50_bin1x1_160x120_m10C_L_2024-10-05_" in out
    assert "missing" not in out


def test_match_reports_missing_masters_with_exit_1(built: Path, config: Path, observatory: Observatory,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A light at a gain without darks and in a filter without flats is darkless and flatless: exit 1, the
    reasons in words and in JSON."""
    path = light(tmp_path, "odd.fits", observatory, gain=200, filter="OIII")
    args = ["library", "match", str(path), "--library", str(built), "--config", str(config)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "missing   darkless: no dark for ZWO ASI2600MM Pro gain 200 offset 50 -10 °C 300 s" in out
    assert "missing   flatless: no flat for ZWO ASI2600MM Pro bin 1x1 160x120 filter OIII" in out
    assert main([*args, "--json"]) == 1
    [record] = json.loads(capsys.readouterr().out)
    assert record["ok"] is False and record["dark"] is None and len(record["missing"]) == 2
    assert record["path"] == str(path)


def test_match_of_an_unreadable_file_exits_1(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable frame is reported on stderr (one line) and the command exits 1."""
    bad = tmp_path / "bad.fits"
    bad.write_text("nothing")
    assert main(["library", "match", str(bad), "--library", str(built)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}" in err


def test_library_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No index, or a source folder that does not exist: one error line and exit 2; a bad config exits 78."""
    assert main(["library", "list", "--library", str(tmp_path / "none")]) == 2
    assert "no master library index" in capsys.readouterr().err
    assert main(["library", "build", "--source", str(tmp_path / "nowhere"), "--library", str(tmp_path / "l")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[library]\nkappa = -1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["library", "list", "--library", str(tmp_path), "--config", str(bad)])
    assert exit_info.value.code == 78


def test_register_adds_the_commands_to_any_parser() -> None:
    """register() adds `library build|list|match` and `calibrate` to a parser's subcommands."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["library", "list", "--json"])
    assert args.func is cmd_library_list and args.json
    args = parser.parse_args(["library", "build", "--source", "a", "--source", "b", "-j", "3", "--refresh"])
    assert args.source == ["a", "b"] and args.jobs == 3 and args.refresh
    args = parser.parse_args(["calibrate", "x.fits", "-o", "out"])
    assert args.output == "out" and args.files == ["x.fits"]
    with pytest.raises(SystemExit):
        parser.parse_args(["library", "build", "--source", "a", "-j", "0"])
