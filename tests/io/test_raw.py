"""Camera raw reading: metadata of real (pixel-stripped) raw files, clean errors for every unreadable pixel
block, and the pixel path on a small DNG written here with known content.

Expected metadata is ExifTool's, from its own test outputs for the same files (exiftool/exiftool, t/*.out:
CanonRaw_6 for CanonRaw.cr2, CanonRaw_8 for CanonRaw.cr3, DNG_2, FujiFilm_4, Nikon_7, Panasonic_4), not
from the code under test.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from astrod.errors import FrameReadError
from astrod.io.raw import (
    RAW_EXTENSIONS,
    RawMetadata,
    _visible_pattern,
    camera_name,
    raw_to_meta,
    read_raw,
    read_raw_metadata,
)
from astrod.model import FrameKind

RAW_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "raw_metadata_only"

# file: (make, model, ISO, exposure, DateTimeOriginal, serial) as ExifTool prints them
EXIFTOOL: dict[str, tuple[str, str, int, Fraction, datetime, str | None]] = {
    "CanonRaw.cr2": ("Canon", "Canon EOS 350D DIGITAL", 400, Fraction(1, 15),
                     datetime(2005, 8, 3, 18, 59, 18), "0123456789"),  # MakerNotes Serial Number
    "CanonRaw.cr3": ("Canon", "Canon EOS M50", 12800, Fraction(1, 80),
                     datetime(2018, 2, 21, 12, 8, 56, 210000, tzinfo=UTC), "613040000565"),  # ExifIFD 42033
    "DNG.dng": ("Canon", "Canon EOS 350D DIGITAL", 400, Fraction(1, 15),
                datetime(2005, 8, 3, 18, 59, 18), "012345678"),  # IFD0 Camera Serial Number
    "FujiFilm.raf": ("FUJIFILM", "FinePix S5Pro", 100, Fraction(1, 250),
                     datetime(2007, 5, 22, 13, 58, 30), "FPX20582698"),  # start of Internal Serial Number
    "Nikon.nef": ("NIKON CORPORATION", "NIKON D70", 200, Fraction(1, 20),
                  datetime(2004, 6, 9, 16, 2, 35), "12345678"),  # MakerNotes Serial Number
    "Panasonic.rw2": ("Panasonic", "DMC-LX3", 80, Fraction(1, 250),
                      datetime(2008, 8, 6, 15, 21, 56), None),  # ISO from the RW2 IFD0 (tag 23)
}
CAMERA = {"CanonRaw.cr2": "Canon EOS 350D DIGITAL", "CanonRaw.cr3": "Canon EOS M50",
          "DNG.dng": "Canon EOS 350D DIGITAL", "FujiFilm.raf": "FUJIFILM FinePix S5Pro",
          "Nikon.nef": "NIKON D70", "Panasonic.rw2": "Panasonic DMC-LX3"}


@pytest.fixture
def raw_dir() -> Path:
    """The real raw files beside the project; skip where they are absent."""
    if not RAW_DIR.is_dir():
        pytest.skip(f"real data folder {RAW_DIR} is absent")
    return RAW_DIR


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.parametrize("name", sorted(EXIFTOOL))
def test_metadata_matches_exiftool(raw_dir: Path, name: str) -> None:
    """Make, model, ISO, exposure, DateTimeOriginal and serial equal what ExifTool reads from the file."""
    make, model, iso, exposure, date_obs, serial = EXIFTOOL[name]
    meta = read_raw_metadata(raw_dir / name)
    assert (meta.make, meta.model, meta.iso) == (make, model, iso)
    assert meta.exposure == pytest.approx(float(exposure), rel=1e-12)
    assert meta.date_obs == date_obs
    assert meta.date_is_local == (date_obs.tzinfo is None)
    if serial is None:
        assert meta.serial is None
    else:
        assert meta.serial is not None and meta.serial.startswith(serial)
    if name != "FujiFilm.raf":  # the Fuji internal serial is longer than its decoded prefix
        assert meta.serial == serial
    # stripped pixels: metadata says why, and no CFA pattern was invented without a decode
    assert any(note.startswith("pixels: ") for note in meta.notes)
    assert meta.bayer is None


def test_cr3_and_dng_extras_match_exiftool(raw_dir: Path) -> None:
    """CR3 lens and focal length (CMT2) and DNG black/white levels (raw SubIFD) are those ExifTool reports."""
    cr3 = read_raw_metadata(raw_dir / "CanonRaw.cr3")
    assert cr3.container == "bmff"
    assert cr3.lens == "EF-M15-45mm f/3.5-6.3 IS STM"
    assert (cr3.focal_length, cr3.f_number) == (15.0, 3.5)
    dng = read_raw_metadata(raw_dir / "DNG.dng")
    assert (dng.black_level, dng.white_level) == (0.0, 4095.0)
    assert dng.focal_length == 55.0


@pytest.mark.parametrize("name", sorted(EXIFTOOL))
def test_raw_to_meta_maps_fields(raw_dir: Path, name: str) -> None:
    """FrameMeta gets the camera without a doubled make, ISO as iso and gain, kind UNKNOWN with its reason."""
    path = raw_dir / name
    raw = read_raw_metadata(path)
    meta = raw_to_meta(raw, path)
    assert meta.camera == CAMERA[name]
    assert meta.iso == EXIFTOOL[name][2]
    assert meta.gain == float(EXIFTOOL[name][2])
    assert meta.exposure == raw.exposure and meta.serial == raw.serial
    # FrameMeta dates are aware UTC; a camera clock without an offset is read as this computer's local zone
    assert raw.date_obs is not None and meta.date_obs is not None and meta.date_obs.utcoffset() == timedelta(0)
    local = raw.date_obs.astimezone() if raw.date_obs.tzinfo is None else raw.date_obs
    assert meta.date_obs == local
    assert meta.kind is FrameKind.UNKNOWN
    assert meta.kind_reason == "no frame type in raw metadata"
    assert meta.source_format == "raw"
    assert (meta.width, meta.height) == (raw.width or 0, raw.height or 0)


@pytest.mark.parametrize("name", sorted(EXIFTOOL))
def test_stripped_pixels_raise_one_line_error(raw_dir: Path, name: str) -> None:
    """Reading pixels of a stripped file raises FrameReadError: one line, naming the file and a cause."""
    path = raw_dir / name
    with pytest.raises(FrameReadError) as info:
        read_raw(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode raw pixels: ")
    assert "\n" not in message and len(message) > len(f"{path}: cannot decode raw pixels: ")


def test_pixel_reads_never_kill_the_interpreter(raw_dir: Path, tmp_path: Path) -> None:
    """In a fresh interpreter, every real file and a truncated copy of each give FrameReadError, exit 0.

    libraw runs C code: a crash there would take the daemon down, so it is watched from outside here.
    """
    paths = []
    for name in sorted(EXIFTOOL):
        paths.append(raw_dir / name)
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes((raw_dir / name).read_bytes()[:2000])
        paths.append(cut)
    script = (
        "import sys\nfrom pathlib import Path\nfrom astrod.errors import FrameReadError\n"
        "from astrod.io.raw import read_raw\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        read_raw(Path(p))\n        print('DECODED', p)\n"
        "    except FrameReadError:\n        print('FrameReadError', p)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"FrameReadError {p}" for p in paths]


@pytest.mark.parametrize("name", sorted(EXIFTOOL))
def test_truncated_copy_keeps_header_metadata(raw_dir: Path, tmp_path: Path, name: str) -> None:
    """A copy cut to its first half still yields make and model; its pixels fail naming the cut-off block."""
    data = (raw_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrameReadError, match=rf"cannot decode raw pixels: .* but the file has {len(data) // 2} bytes"):
        read_raw(path)
    meta = read_raw_metadata(path)
    assert (meta.make, meta.model) == EXIFTOOL[name][:2]


def test_zero_byte_nef(tmp_path: Path) -> None:
    """An empty .nef gives FrameReadError naming the file, for pixels and for metadata."""
    path = tmp_path / "empty.nef"
    path.touch()
    with pytest.raises(FrameReadError, match=r"empty\.nef: cannot decode raw pixels: file is empty$"):
        read_raw(path)
    with pytest.raises(FrameReadError, match=r"empty\.nef: cannot read raw metadata: file is empty$"):
        read_raw_metadata(path)


def test_missing_and_non_raw_files(tmp_path: Path) -> None:
    """A missing file and a text file named .cr2 give one-line FrameReadErrors naming them."""
    with pytest.raises(FrameReadError, match=r"nothere\.cr2: cannot decode raw pixels: file not found$"):
        read_raw(tmp_path / "nothere.cr2")
    text = tmp_path / "notes.cr2"
    text.write_text("this is not a raw file\n" * 20)
    for reader in (read_raw, read_raw_metadata):
        with pytest.raises(FrameReadError) as info:
            reader(text)
        assert str(info.value).startswith(f"{text}: cannot ") and "\n" not in str(info.value)


def test_raw_extensions() -> None:
    """Every real raw format here is a raw extension; extensions are lower-case with their dot."""
    assert {Path(n).suffix for n in EXIFTOOL} <= RAW_EXTENSIONS
    assert {".arw", ".orf", ".pef", ".srw", ".nrw"} <= RAW_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in RAW_EXTENSIONS)
    assert ".fits" not in RAW_EXTENSIONS


@pytest.mark.parametrize(("make", "model", "expected"), [
    ("Canon", "Canon EOS 40D", "Canon EOS 40D"),
    ("NIKON CORPORATION", "NIKON D70", "NIKON D70"),
    ("FUJIFILM", "FinePix S5Pro  ", "FUJIFILM FinePix S5Pro"),
    ("Panasonic", "DMC-LX3", "Panasonic DMC-LX3"),
    ("SONY", "ILCE-7M3", "SONY ILCE-7M3"),
    (None, "EOS R", "EOS R"),
    ("Canon", None, "Canon"),
    (None, None, None),
])
def test_camera_name(make: str | None, model: str | None, expected: str | None) -> None:
    """The camera name is 'Make Model' unless the model already starts with the make (or its first word)."""
    assert camera_name(make, model) == expected


# ------------------------------------------------------------------------------------------ a real decode


def _ifd(entries: list[tuple[int, int, Any]], start: int) -> bytes:
    """A little-endian TIFF IFD at byte ``start``, its out-of-line values right after it."""
    codes = {1: "B", 3: "H", 4: "I", 5: "II", 10: "ii"}
    entries = sorted(entries)
    data_at = start + 2 + 12 * len(entries) + 4
    table, extra = struct.pack("<H", len(entries)), b""
    for tag, kind, values in entries:
        if kind == 2:
            payload, count = values.encode("ascii") + b"\0", len(values) + 1
        elif kind in (5, 10):
            payload, count = b"".join(struct.pack("<" + codes[kind], *v) for v in values), len(values)
        else:
            payload, count = struct.pack(f"<{len(values)}{codes[kind]}", *values), len(values)
        if len(payload) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, kind, count, data_at + len(extra))
            extra += payload + b"\0" * (len(payload) % 2)
    return table + b"\0\0\0\0" + extra


def write_dng(path: Path, mosaic: np.ndarray, *, active_area: tuple[int, int, int, int], black: int,
              white: int, iso: int, exposure: tuple[int, int], date: str, subsec: str, utc_offset: str,
              serial: str) -> None:
    """A minimal uncompressed CFA DNG (RGGB at the raw origin) with an EXIF IFD."""
    height, width = mosaic.shape

    def ifd0(exif_at: int, strip_at: int) -> list[tuple[int, int, Any]]:
        return [(254, 4, [0]), (256, 4, [width]), (257, 4, [height]), (258, 3, [16]), (259, 3, [1]),
                (262, 3, [32803]), (271, 2, "Testmaker"), (272, 2, "Testmaker TM-1"), (273, 4, [strip_at]),
                (277, 3, [1]), (278, 4, [height]), (279, 4, [mosaic.nbytes]), (284, 3, [1]),
                (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]), (34665, 4, [exif_at]),
                (50706, 1, [1, 4, 0, 0]), (50708, 2, "Testmaker TM-1"), (50714, 4, [black]),
                (50717, 4, [white]), (50721, 10, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1),
                                                  (0, 1), (1, 1)]),
                (50778, 3, [21]), (50829, 4, list(active_area))]

    exif = [(33434, 5, [exposure]), (34855, 3, [iso]), (36867, 2, date), (36881, 2, utc_offset),
            (37521, 2, subsec), (42033, 2, serial)]
    size0 = len(_ifd(ifd0(0, 0), 8))
    exif_blob = _ifd(exif, 8 + size0)
    strip_at = 8 + size0 + len(exif_blob)
    blob = _ifd(ifd0(8 + size0, strip_at), 8)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + blob + exif_blob + mosaic.astype("<u2").tobytes())


# (ActiveArea top, left, bottom, right) -> where libraw's visible area starts and its (height, width).
# The DNG spec puts the CFA origin at the ActiveArea's top-left corner; libraw keeps the visible area on even
# rows and columns of that origin, so an odd origin (1, 3) moves in to (2, 4).
LAYOUTS = {
    "odd-origin": ((1, 3, 47, 63), (2, 4), (45, 59)),
    "even-origin": ((2, 2, 46, 62), (2, 2), (44, 60)),
}


@pytest.fixture(params=sorted(LAYOUTS))
def dng(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, np.ndarray, str]:
    """A 64x48 DNG with seeded pixel values in each active-area layout; returns its layout name too."""
    mosaic = np.random.default_rng(7).integers(200, 4000, size=(48, 64), dtype=np.uint16)
    path = tmp_path / "tiny.dng"
    write_dng(path, mosaic, active_area=LAYOUTS[request.param][0], black=128, white=4000, iso=1600,
              exposure=(300, 1), date="2024:03:09 22:15:07", subsec="5", utc_offset="+02:00", serial="TM1-0042")
    return path, mosaic, request.param


def test_dng_pixels_are_the_visible_mosaic(dng: tuple[Path, np.ndarray, str]) -> None:
    """read_raw returns exactly the written values of the visible area as float32, black not subtracted."""
    path, mosaic, layout = dng
    _, (top, left), (height, width) = LAYOUTS[layout]
    data, meta = read_raw(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, mosaic[top:top + height, left:left + width].astype(np.float32))
    assert (meta.width, meta.height) == (width, height)
    assert (meta.black_level, meta.black_levels, meta.white_level) == (128.0, (128.0,) * 4, 4000.0)


def test_dng_pattern_follows_the_visible_origin(dng: tuple[Path, np.ndarray, str]) -> None:
    """The pattern describes data[0:2, 0:2]: the written RGGB seen from the visible origin."""
    path, _, layout = dng
    (aa_top, aa_left, _, _), (top, left), _ = LAYOUTS[layout]
    rggb = [["R", "G"], ["G", "B"]]
    expected = "".join(rggb[(top - aa_top + y) % 2][(left - aa_left + x) % 2] for y in range(2) for x in range(2))
    assert expected == {"odd-origin": "BGGR", "even-origin": "RGGB"}[layout]
    _, meta = read_raw(path)
    assert meta.bayer == expected and meta.cfa_pattern == expected
    assert read_raw_metadata(path).bayer == expected


def test_pattern_shift_matches_rawpy_definition() -> None:
    """With odd margins the visible pattern is rawpy's raw_pattern tiled over the full raw image, then cut."""
    pattern = np.array([[0, 1], [3, 2]], dtype=np.uint8)
    for top, left in [(19, 52), (0, 1), (1, 1), (2, 4)]:
        tiled = np.pad(pattern, ((0, top + 2), (0, left + 2)), mode="wrap")[top:top + 2, left:left + 2]
        expected = "".join("RGBG"[i] for i in tiled.ravel())
        assert _visible_pattern(pattern, b"RGBG", top=top, left=left) == (expected, expected)


def test_dng_metadata_and_utc_date(dng: tuple[Path, np.ndarray, str]) -> None:
    """EXIF values come back exactly; an OffsetTimeOriginal makes the date aware UTC, sub-seconds kept."""
    path, _, layout = dng
    _, _, (height, width) = LAYOUTS[layout]
    meta = read_raw_metadata(path)
    assert isinstance(meta, RawMetadata)
    assert (meta.make, meta.model, meta.serial, meta.iso, meta.exposure) == (
        "Testmaker", "Testmaker TM-1", "TM1-0042", 1600, 300.0)
    assert meta.date_obs == datetime(2024, 3, 9, 20, 15, 7, 500000, tzinfo=UTC)
    assert not meta.date_is_local
    assert not any(n.startswith("pixels:") for n in meta.notes)
    frame_meta = raw_to_meta(meta, path)
    assert (frame_meta.camera, frame_meta.gain, frame_meta.bayer) == ("Testmaker TM-1", 1600.0, meta.bayer)
    assert (frame_meta.width, frame_meta.height, frame_meta.black_level) == (width, height, 128.0)


def test_dng_metadata_without_decode(dng: tuple[Path, np.ndarray, str]) -> None:
    """decode=False skips the unpack: size and EXIF values are there, the CFA pattern is not."""
    path, _, layout = dng
    _, _, (height, width) = LAYOUTS[layout]
    meta = read_raw_metadata(path, decode=False)
    assert (meta.width, meta.height, meta.iso) == (width, height, 1600)
    assert meta.bayer is None
    assert meta.black_level == 128.0  # from the DNG BlackLevel tag itself


def test_truncated_dng_is_refused_not_zero_filled(dng: tuple[Path, np.ndarray, str], tmp_path: Path) -> None:
    """A cut-off strip is refused by the strip check before libraw decodes (libraw zero-fills some formats)."""
    path, _, _ = dng
    cut = tmp_path / "cut.dng"
    shutil.copyfile(path, cut)
    with cut.open("r+b") as fh:
        fh.truncate(cut.stat().st_size - 1000)
    with pytest.raises(FrameReadError, match=r"cut\.dng: cannot decode raw pixels: ifd0 strip ends at byte"):
        read_raw(cut)
    meta = read_raw_metadata(cut)
    assert meta.iso == 1600 and meta.bayer is None
