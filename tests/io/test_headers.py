"""Header normalisation and classification against real headers from N.I.N.A., ASIAIR, Seestar, DWARF 3 and INDI.

Each real header dump becomes a FITS file (the real header, synthetic zero pixels written as a sparse file so
the sizes stay real) placed at the path the capture program used, then goes through ``astrod inspect --json``.
The expected values below were read off the dumps by eye, not produced by the code under test.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from astrod.cli import main
from astrod.io.headers import (
    BUILTIN_PATH_RULES,
    SETTABLE_FIELDS,
    PathRule,
    kind_from_folders,
    kind_from_value,
    normalise,
    parse_date_obs,
)
from astrod.model import SETTABLE_RULE_FIELDS, FrameKind


def header_from_dump(text: str) -> tuple[fits.Header, str]:
    """Cards of a `fitsheader` dump and the original file path named in its comment lines."""
    header = fits.Header()
    original = ""
    for line in text.splitlines():
        if line.startswith("#"):
            for marker in (" in ", " from "):
                if marker in line and line.rstrip().endswith((".fits:", ".fit:", ".fits", ".fit")):
                    found = line.split(marker, 1)[1].rstrip().rstrip(":")
                    # DWARF dumps name the file twice: keep the full path, which carries its folders
                    if found.count("/") >= original.count("/"):
                        original = found
            continue
        if not line.strip() or line.startswith(("COMMENT", "HISTORY", "END")):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            card = fits.Card.fromstring(line[:80])
            card.verify("silentfix")
        if card.keyword in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND") or card.keyword.startswith("NAXIS"):
            header[card.keyword] = card.value
            continue
        header.append(card)
    return header, original


def write_like_capture(dump: Path, root: Path) -> Path:
    """A FITS file with the dump's header at the dump's original path under ``root`` (sparse pixels)."""
    header, original = header_from_dump(dump.read_text(encoding="utf-8"))
    rel = PurePath(original.lstrip("/")) if original else PurePath(dump.stem + ".fits")
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    bitpix = int(header["BITPIX"])
    shape = [int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]
    hdr = header.copy()
    for key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "NAXIS1", "NAXIS2", "NAXIS3"):
        hdr.remove(key, ignore_missing=True)
    # Write only the header block, then extend the file to the real data size without writing pixels.
    full = fits.Header([("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", len(shape))]
                       + [(f"NAXIS{i + 1}", n) for i, n in enumerate(shape)] + [("EXTEND", True)])
    full.extend(hdr, unique=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        block = full.tostring().encode("ascii")
    data_bytes = math.prod(shape) * abs(bitpix) // 8
    with target.open("wb") as handle:
        handle.write(block)
        handle.truncate(len(block) + -(-data_bytes // 2880) * 2880)
    return target


def utc(text: str) -> str:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).isoformat()


NINA = {"camera": "ZWO ASI2600MC Duo", "gain": 100.0, "offset": 50.0, "bayer": "RGGB", "binning": [1, 1],
        "width": 6248, "height": 4176, "set_temperature": -10.0}
ASIAIR = {"camera": "ZWO ASI2600MC Duo", "gain": 100.0, "offset": 50.0, "bayer": "RGGB", "binning": [1, 1],
          "width": 6248, "height": 4176, "set_temperature": -10.0, "temperature": -10.0, "exposure": 30.0,
          "filter": None, "kind": "light"}
SEESTAR = {"camera": "Seestar S50", "gain": 80.0, "offset": None, "bayer": "GRBG", "binning": [1, 1],
           "width": 1080, "height": 1920, "set_temperature": None, "exposure": 10.0, "kind": "light"}
DWARF = {"camera": "DWARFIII", "bayer": "RGGB", "binning": [1, 1], "width": 3856, "height": 2180,
         "offset": None, "set_temperature": None}

EXPECTED: dict[str, dict[str, Any]] = {
    "nina/nina-typ-light.txt": {**NINA, "kind": "light", "exposure": 120.0, "temperature": -10.0,
                                "filter": "HaOiii", "object": "M 27", "date_obs": utc("2025-09-17T03:34:02.647710"),
                                "ra": 299.882295250292, "dec": 22.7189964020313, "pier_side": "West"},
    "nina/nina-dark-raw.txt": {**NINA, "kind": "dark", "exposure": 1.0, "temperature": -10.5, "filter": "Dark",
                               "date_obs": utc("2025-09-10T03:25:08.165562"), "pier_side": "East"},
    "nina/nina-bias-raw.txt": {**NINA, "kind": "bias", "exposure": 0.0001, "temperature": -9.8,
                               "filter": "Dark", "date_obs": utc("2025-09-10T03:32:01.736405"),
                               "pier_side": "East"},
    "nina/nina-typ-flat.txt": {**NINA, "kind": "flat", "exposure": 6.24656, "temperature": -10.0,
                               "filter": "HaOiii", "object": "M 27"},
    "asiair/asiair-typ-light.txt": {**ASIAIR, "object": "M 31", "date_obs": utc("2025-08-25T05:52:13.488569"),
                                    "ra": 10.99584, "dec": 41.415833},
    "asiair/asiair-typ-live-light.txt": {**ASIAIR, "object": "M 13", "ra": 250.64166, "dec": 36.403333},
    "seestar/seestar-typ-light.txt": {**SEESTAR, "temperature": 18.375, "filter": "IRCUT", "object": "M 101",
                                      "date_obs": utc("2025-07-05T06:23:58.931528"), "ra": 211.000005,
                                      "dec": 54.233611},
    "seestar/seestar-typ-light2.txt": {**SEESTAR, "temperature": 20.1875, "filter": "LP", "object": "Sadr"},
    "seestar/seestar-stacked.txt": {**SEESTAR, "temperature": 18.75, "filter": "LP", "object": "Sadr",
                                    "stack_count": 614, "planes": 3},
    "seestar/seestar-stacked2.txt": {**SEESTAR, "filter": "IRCUT", "object": "M 100", "stack_count": 425,
                                     "planes": 3},
    "dwarf3/typ-light.txt": {**DWARF, "kind": "light", "exposure": 60.0, "gain": 60.0, "temperature": 16.0,
                             "filter": "Astro", "object": "IC 434", "ra": 85.28743, "dec": -2.492014,
                             "date_obs": utc("2025-10-18T04:59:26.401")},
    "dwarf3/typ-raw-dark.txt": {**DWARF, "kind": "dark", "exposure": 60.0, "gain": 60.0, "temperature": 20.0,
                                "filter": None, "object": None},
    "dwarf3/typ-CALI_FRAME-dark.txt": {**DWARF, "kind": "dark", "exposure": 60.0, "gain": 60.0,
                                       "temperature": 20.0},
    "dwarf3/typ-CALI_FRAME-bias.txt": {**DWARF, "kind": "bias", "exposure": None, "gain": 2.0},
    "dwarf3/typ-CALI_FRAME-flat.txt": {**DWARF, "kind": "flat", "gain": 2.0},
    "bias-stacked.txt": {"kind": "bias", "camera": "ASI Camera (1) (ASCOM)", "exposure": 0.001, "gain": 100.0,
                         "offset": 50.0, "temperature": 10.7, "set_temperature": -10.0, "stack_count": 10,
                         "filter": "Dark", "width": 6248, "height": 4176},
    "flat-stacked.txt": {"kind": "flat", "camera": "ASI Camera (1) (ASCOM)", "exposure": 0.04982,
                         "filter": None, "stack_count": 10, "temperature": 6.8},
    "malformedasimaster.txt": {"kind": "bias", "camera": "ZWO ASI2600MC Duo", "stack_count": 100,
                               "gain": 100.0, "offset": 50.0, "set_temperature": -10.0, "filter": "Dark"},
    "typ-processed-file.txt": {"kind": "light", "planes": 3, "stack_count": 234, "object": "M 45",
                               "exposure": 30.0, "pier_side": "West"},
}


def dump_paths() -> list[str]:
    return sorted(EXPECTED)


@pytest.fixture(scope="module")
def inspected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`astrod inspect --json` over a FITS file made from every real header dump."""
    from tests.conftest import SHARED_DATA

    dumps = SHARED_DATA / "starbash_header_dumps"
    if not dumps.is_dir():
        pytest.skip(f"{dumps} is absent")
    root = tmp_path_factory.mktemp("captures")
    files = {name: write_like_capture(dumps / name, root) for name in EXPECTED}
    out = root / "out.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["inspect", "--json", *map(str, files.values())])
    assert rc == 0, buf.getvalue()
    out.write_text(buf.getvalue(), encoding="utf-8")
    records = {r["path"]: r for r in json.loads(buf.getvalue())}
    return {name: records[str(path)] for name, path in files.items()}


def test_every_dump_in_the_data_folder_is_covered(shared_data: Path) -> None:
    """Every frame header dump shipped in shared/data has expectations here (none silently untested)."""
    dumps = shared_data / "starbash_header_dumps"
    found = {p.relative_to(dumps).as_posix() for p in dumps.rglob("*.txt")}
    found -= {"MANIFEST.txt", "dwarf3/stacked-16_IC 434_60s60_Astro_20251018-045127226.txt",
              "dwarf3/failed_IC 434_60s60_Astro_20251018-051725998_15C.txt"}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", dump_paths())
def test_real_header_normalises_to_expected_fields(inspected: dict[str, dict[str, Any]], name: str) -> None:
    """Each normalised field of each real header equals the value read off the dump."""
    record = inspected[name]
    assert "error" not in record, record
    for key, want in EXPECTED[name].items():
        got = record[key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-9), f"{name}: {key}"
        else:
            assert got == want, f"{name}: {key} is {got!r}, expected {want!r}"


def test_dwarf_failed_and_stacked_frames_are_lights(shared_data: Path, tmp_path: Path) -> None:
    """DWARF's own stacks and failed frames carry no type keyword and no folder: they are reported unknown,
    with a reason, unless they sit in a Lights folder."""
    dump = shared_data / "starbash_header_dumps" / "dwarf3" / "failed_IC 434_60s60_Astro_20251018-051725998_15C.txt"
    header, _ = header_from_dump(dump.read_text(encoding="utf-8"))
    meta = normalise(header, tmp_path / "somewhere" / "failed.fits")
    assert meta.kind is FrameKind.UNKNOWN
    assert "no frame type keyword" in meta.kind_reason
    meta = normalise(header, tmp_path / "IC434" / "Lights" / "failed.fits")
    assert meta.kind is FrameKind.LIGHT and meta.kind_reason == "folder 'Lights'"


INDI_HEADER = {"SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": 1280, "NAXIS2": 1024, "BZERO": 32768,
               "EXTEND": True, "ROWORDER": "TOP-DOWN", "INSTRUME": "CCD Simulator", "TELESCOP": "Telescope Simulator",
               "OBSERVER": "Unknown", "OBJECT": "Unknown", "EXPTIME": 1.0, "CCD-TEMP": -5.0, "PIXSIZE1": 5.2,
               "PIXSIZE2": 5.2, "XBINNING": 1, "YBINNING": 1, "XPIXSZ": 5.2, "YPIXSZ": 5.2, "FRAME": "Light",
               "IMAGETYP": "Light Frame", "FILTER": "Red", "GAIN": 90.0, "FOCALLEN": 900.0,
               "OBJCTRA": "5 35 17.30", "OBJCTDEC": "-5 23 28.00", "DATE-OBS": "2026-11-21T20:01:02.345"}


def test_indi_simulator_header(tmp_path: Path) -> None:
    """The INDI CCD simulator's dialect: IMAGETYP 'Light Frame', FRAME, sexagesimal OBJCTRA/OBJCTDEC."""
    path = tmp_path / "indi.fits"
    import numpy as np

    hdr = fits.Header()
    for key, value in INDI_HEADER.items():
        if key not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "EXTEND"):
            hdr[key] = value
    fits.PrimaryHDU(np.zeros((1024, 1280), dtype=np.uint16), header=hdr).writeto(path)
    from astrod.io.frames import read_frame

    frame = read_frame(path)
    m = frame.meta
    assert (m.kind, m.kind_reason) == (FrameKind.LIGHT, "IMAGETYP='Light Frame'")
    assert (m.exposure, m.temperature, m.gain, m.filter, m.camera) == (1.0, -5.0, 90.0, "Red", "CCD Simulator")
    assert (m.width, m.height, m.binning) == (1280, 1024, (1, 1))
    assert m.ra == pytest.approx((5 + 35 / 60 + 17.30 / 3600) * 15)
    assert m.dec == pytest.approx(-(5 + 23 / 60 + 28 / 3600))
    assert m.object == "Unknown"
    assert m.date_obs == datetime(2026, 11, 21, 20, 1, 2, 345000, tzinfo=UTC)
    assert frame.data.dtype.name == "float32" and frame.data.shape == (1024, 1280)


@pytest.mark.parametrize(("value", "kind"), [
    ("Light Frame", FrameKind.LIGHT), ("LIGHT", FrameKind.LIGHT), ("Object", FrameKind.LIGHT),
    ("light", FrameKind.LIGHT), ("Dark Frame", FrameKind.DARK), ("Flat Field", FrameKind.FLAT),
    ("Bias Frame", FrameKind.BIAS), ("zero", FrameKind.BIAS), ("DARKFLAT", FrameKind.DARKFLAT),
    ("Dark Flat", FrameKind.DARKFLAT), ("FlatDark", FrameKind.DARKFLAT), ("Master Dark", FrameKind.DARK),
    ("focus", None),
])
def test_kind_values(value: str, kind: FrameKind | None) -> None:
    """Type keyword values of every dialect fold onto the five kinds; anything else is not guessed."""
    assert kind_from_value(value) is kind


@pytest.mark.parametrize(("folder", "kind"), [
    ("night/Lights/a.fits", FrameKind.LIGHT), ("night/Darks/300s/a.fits", FrameKind.DARK),
    ("night/Flats/a.fits", FrameKind.FLAT), ("night/Bias/a.fits", FrameKind.BIAS),
    ("night/Dark Flats/a.fits", FrameKind.DARKFLAT), ("night/FlatDarks/a.fits", FrameKind.DARKFLAT),
    ("x/DWARF_DARK/tele/a.fits", FrameKind.DARK), ("night/misc/a.fits", None),
])
def test_kind_from_folder_names(folder: str, kind: FrameKind | None) -> None:
    """A frame without a type keyword is classified by its nearest folder name."""
    found = kind_from_folders(PurePath("/data") / folder)
    assert (found[0] if found else None) is kind


def test_header_keyword_beats_folder_and_unknown_has_a_reason(tmp_path: Path) -> None:
    """A type keyword wins over the folder; an unrecognised keyword with no folder is unknown, with why."""
    meta = normalise({"IMAGETYP": "DARK", "NAXIS": 0}, tmp_path / "Lights" / "x.fits")
    assert meta.kind is FrameKind.DARK
    meta = normalise({"IMAGETYP": "Focus", "NAXIS": 0}, tmp_path / "misc" / "x.fits")
    assert meta.kind is FrameKind.UNKNOWN
    assert "'Focus' is not a known frame type" in meta.kind_reason


def test_user_renames_and_folder_rules(tmp_path: Path) -> None:
    """[headers] renames map a program's own keywords; folder rules fill what the header lacks, never override."""
    header = {"NAXIS": 2, "NAXIS1": 10, "NAXIS2": 10, "MYEXPO": 42.0, "FILTER": "OIII"}
    rule = PathRule("*/Ha-night/*", {"kind": "light", "filter": "Ha", "gain": "120"})
    meta = normalise(header, tmp_path / "Ha-night" / "a.fits", rename={"MYEXPO": "EXPTIME"}, rules=[rule])
    assert meta.exposure == 42.0
    assert meta.kind is FrameKind.LIGHT and "config" not in meta.kind_reason
    assert meta.filter == "OIII"  # the header's value stands
    assert meta.gain == 120.0


def test_date_obs_parsing() -> None:
    """DATE-OBS is UTC; seven fractional digits (N.I.N.A.) and date-only with TIME-OBS both parse."""
    assert parse_date_obs("2025-09-17T03:34:02.6477108") == datetime(2025, 9, 17, 3, 34, 2, 647710, tzinfo=UTC)
    assert parse_date_obs("2013-07-13", "00:57:33") == datetime(2013, 7, 13, 0, 57, 33, tzinfo=UTC)
    assert parse_date_obs("garbage") is None


def test_rule_fields_agree_with_model() -> None:
    """The fields path rules may set are the same set in the model (config validation) and in headers."""
    assert set(SETTABLE_FIELDS) == set(SETTABLE_RULE_FIELDS)
    assert all(rule.regex for rule in BUILTIN_PATH_RULES)


def test_inspect_reports_unreadable_files_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inspect --json` gives an error object naming the file for unreadable input, and exit status 1."""
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"this is not a FITS file at all" * 100)
    empty = tmp_path / "empty.fits"
    empty.touch()
    rc = main(["inspect", "--json", str(bad), str(empty)])
    records = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert records[0]["error"] == f"{bad}: not a FITS file (no SIMPLE card at the start)"
    assert records[1]["error"] == f"{empty}: empty file"
    assert os.path.getsize(bad) == 3000  # the source is untouched
