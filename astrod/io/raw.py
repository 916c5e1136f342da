"""Camera raw files: metadata through exifread (plus small CR3/RAF container readers), pixels through rawpy.

A raw file is read in three steps, each allowed to fail on its own:

1. tags: exifread reads the TIFF-based formats directly; CR3 (ISO-BMFF) keeps its TIFF blocks in
   CMT1..CMT4 boxes and RAF keeps an EXIF JPEG at a fixed header offset, so those are cut out first
   (exifread 3.5 does not recognise either container).
2. a structure check: strips, tiles, boxes and RAF blocks must lie inside the file, and the file must
   hold enough bytes for the raw image libraw announces. libraw happily "decodes" stripped or
   truncated DNG and RW2 files into zeros, so this check is what turns them into an error.
3. libraw (rawpy): visible size, CFA pattern, black and white levels, and the pixels.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from astrod.core.bayer import is_cfa_cell
from astrod.errors import FrameReadError
from astrod.model import FrameKind, FrameMeta

RAW_EXTENSIONS: frozenset[str] = frozenset({
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".rw2", ".raf", ".orf",
    ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".mef", ".mos", ".iiq", ".rwl", ".x3f",
})

# Canon's metadata box inside moov (ISO-BMFF 'uuid' user type).
_CANON_UUID = bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")
_CR3_TIFF_BOXES = {b"CMT1": "ifd0", b"CMT2": "exif", b"CMT3": "makernote", b"CMT4": "gps"}
_IFD_GROUP = re.compile(r"^(Image|Thumbnail|IFD \d+|EXIF SubIFD\d+|EXIF|MakerNote|Interoperability|GPS) ")

_Tags = dict[tuple[str, int], Any]  # (group, tag id) -> exifread IfdTag


@dataclass(frozen=True, slots=True)
class RawMetadata:
    """What a camera raw file says about itself. ``None`` where the file does not say (or cannot be read).

    ``date_obs`` is aware UTC when the file records a UTC offset, else naive camera-local time
    (``date_is_local``). ``width``/``height`` are libraw's visible area, the shape ``read_raw`` returns.
    ``bayer`` is the 2x2 CFA pattern at the visible area's top-left pixel; ``cfa_pattern`` is the full
    repeating pattern row by row (36 letters for X-Trans, which has no ``bayer``).
    ``notes`` says, one line each, what could not be read and why.
    """

    make: str | None = None
    model: str | None = None
    serial: str | None = None
    iso: int | None = None
    exposure: float | None = None
    date_obs: datetime | None = None
    date_is_local: bool = False
    width: int | None = None
    height: int | None = None
    bayer: str | None = None
    cfa_pattern: str | None = None
    black_level: float | None = None
    black_levels: tuple[float, ...] = ()
    white_level: float | None = None
    lens: str | None = None
    focal_length: float | None = None
    f_number: float | None = None
    software: str | None = None
    container: str = "unknown"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Libraw:
    """What libraw told us; ``problem`` is why pixels are not available (None when they are)."""

    width: int | None = None
    height: int | None = None
    bayer: str | None = None
    cfa_pattern: str | None = None
    black_levels: tuple[float, ...] = ()
    white_level: float | None = None
    iso: float | None = None
    exposure: float | None = None
    problem: str | None = None
    data: npt.NDArray[np.float32] | None = None


def read_raw_metadata(path: Path, *, decode: bool = True, min_bits_per_pixel: float = 0.25) -> RawMetadata:
    """Metadata of a camera raw file, read wherever the file allows it.

    ``decode`` lets libraw unpack the raw data to learn the CFA pattern and black/white levels (one full
    decode; skipped when the pixel data is missing). Raises FrameReadError only when the file cannot be
    opened or holds no recognisable raw metadata at all.
    """
    meta, _ = _read(Path(path), pixels=False, decode=decode, min_bits_per_pixel=min_bits_per_pixel)
    return meta


def read_raw(path: Path, *, min_bits_per_pixel: float = 0.25) -> tuple[npt.NDArray[np.float32], RawMetadata]:
    """The visible CFA mosaic as a float32 copy (black level not subtracted) and the file's metadata.

    ``min_bits_per_pixel``: the fewest file bits per raw pixel a file must hold to be believed
    (stripped files hold ~0.02, real raws several). Any failure raises FrameReadError
    ``"<path>: cannot decode raw pixels: <cause>"``.
    """
    meta, data = _read(Path(path), pixels=True, decode=True, min_bits_per_pixel=min_bits_per_pixel)
    if data is None:  # _read raises first; this keeps the type checker and a future edit honest
        raise FrameReadError(f"{path}: cannot decode raw pixels: no pixel data")
    return data, meta


def raw_to_meta(raw: RawMetadata, path: Path) -> FrameMeta:
    """Map raw metadata onto FrameMeta. ISO doubles as gain so DSLR frames group like CMOS ones.

    ``path`` matches ``headers.normalise(header, path)``; a raw file's folder is classified later by
    ``headers.complete_from_path``, so the kind stays UNKNOWN here.
    """
    del path  # raw metadata itself carries no frame type; classification from the path happens later
    return FrameMeta(
        kind=FrameKind.UNKNOWN,
        kind_reason="no frame type in raw metadata",
        exposure=raw.exposure,
        camera=camera_name(raw.make, raw.model),
        serial=raw.serial,
        gain=float(raw.iso) if raw.iso is not None else None,
        iso=raw.iso,
        width=raw.width or 0,
        height=raw.height or 0,
        bayer=raw.bayer,
        date_obs=_as_utc(raw.date_obs),
        black_level=raw.black_level,
        white_level=raw.white_level,
        software=raw.software,
        source_format="raw",
    )


@dataclass(frozen=True, slots=True)
class ExifFields:
    """What the EXIF/TIFF tags of a picture (JPEG, TIFF, PNG) say; None where they say nothing. ``date_obs`` is
    aware UTC (a camera clock without an offset taken as this computer's zone: ``date_is_local``)."""

    camera: str | None = None
    iso: int | None = None
    exposure: float | None = None
    date_obs: datetime | None = None
    date_is_local: bool = False
    software: str | None = None


def exif_fields(fh: BinaryIO) -> ExifFields:
    """The EXIF/TIFF tags of an open picture file, read by exifread with the same rules as camera raw files.
    Raises what exifread raises on a malformed file; callers treat metadata as best effort."""
    tags = _exif_tags(fh)
    date_obs, is_local = _date(tags)
    return ExifFields(camera=camera_name(_text(tags, ("ifd0",), 0x10F), _text(tags, ("ifd0",), 0x110)),
                      iso=_iso(tags, b""), exposure=_float(tags, ("exif", "ifd0"), 0x829A),
                      date_obs=_as_utc(date_obs), date_is_local=is_local and date_obs is not None,
                      software=_text(tags, ("ifd0",), 0x131))


def _as_utc(when: datetime | None) -> datetime | None:
    """FrameMeta dates are aware UTC. A camera clock without an offset is taken as this computer's local
    time zone: cameras are set to local time, and the observatory PC sits in the same zone."""
    if when is None:
        return None
    return (when.astimezone() if when.tzinfo is None else when).astimezone(UTC)


def camera_name(make: str | None, model: str | None) -> str | None:
    """'Make Model' without repeating the make: ('Canon', 'Canon EOS 40D') -> 'Canon EOS 40D',
    ('NIKON CORPORATION', 'NIKON D70') -> 'NIKON D70'."""
    make = (make or "").strip() or None
    model = (model or "").strip() or None
    if make is None or model is None:
        return model or make
    first_word = make.split()[0].lower()
    if model.lower().startswith(make.lower()) or model.lower().split()[0] == first_word:
        return model
    return f"{make} {model}"


# ---------------------------------------------------------------------------------------------- reading


def _read(path: Path, *, pixels: bool, decode: bool,
          min_bits_per_pixel: float) -> tuple[RawMetadata, npt.NDArray[np.float32] | None]:
    what = "cannot decode raw pixels" if pixels else "cannot read raw metadata"
    size = _file_size(path, what)
    try:
        with path.open("rb") as fh:
            head = fh.read(108)
            container = _container(head)
            tags, notes = _read_tags(fh, container, size)
            problem = _structure_problem(fh, container, head, tags, size)
    except OSError as err:
        raise FrameReadError(f"{path}: {what}: {err.strerror or err}") from err
    if pixels and problem is not None:
        raise FrameReadError(f"{path}: {what}: {problem}")
    lib = _libraw(path, size, unpack=pixels or (decode and problem is None), keep_pixels=pixels,
                  min_bits_per_pixel=min_bits_per_pixel)
    if pixels and (lib.problem is not None or lib.data is None):
        raise FrameReadError(f"{path}: {what}: {lib.problem or 'no pixel data'}")
    if problem is None:
        problem = lib.problem
    if problem is not None:
        notes.append(f"pixels: {problem}")
    meta = _metadata(tags, lib, container, head, notes)
    if meta.make is None and meta.model is None and lib.width is None:
        raise FrameReadError(f"{path}: {what}: no camera metadata found ({'; '.join(notes) or container})")
    return meta, lib.data


def _file_size(path: Path, what: str) -> int:
    try:
        st = path.stat()
    except FileNotFoundError as err:
        raise FrameReadError(f"{path}: {what}: file not found") from err
    except OSError as err:
        raise FrameReadError(f"{path}: {what}: {err.strerror or err}") from err
    if not path.is_file():
        raise FrameReadError(f"{path}: {what}: not a regular file")
    if st.st_size == 0:
        raise FrameReadError(f"{path}: {what}: file is empty")
    return st.st_size


def _container(head: bytes) -> str:
    if head[:2] in (b"II", b"MM"):
        return "tiff"  # TIFF and its raw dialects: CR2, NEF, DNG, ARW, PEF, ORF (IIRO), RW2 (IIU)
    if head[4:8] == b"ftyp":
        return "bmff"  # CR3
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "raf"
    return "unknown"


def _read_tags(fh: BinaryIO, container: str, size: int) -> tuple[_Tags, list[str]]:
    notes: list[str] = []
    tags: _Tags = {}
    try:
        if container == "tiff":
            fh.seek(0)
            tags = _exif_tags(fh)
        elif container == "bmff":
            blocks = _cr3_tiff_blocks(fh, size)
            if not blocks:
                notes.append("metadata: no CMT1..CMT4 boxes in this ISO-BMFF file")
            for group, blob in blocks.items():
                for (_, tag_id), tag in _exif_tags(io.BytesIO(blob)).items():
                    tags.setdefault((group, tag_id), tag)
        elif container == "raf":
            fh.seek(84)
            offset, length = struct.unpack(">II", fh.read(8))
            fh.seek(offset)
            tags = _exif_tags(io.BytesIO(fh.read(min(length, size))))
        else:
            notes.append("metadata: unknown container (not TIFF, ISO-BMFF or RAF)")
    # exifread and struct raise assorted built-in exceptions on malformed files; metadata is best effort
    except Exception as err:
        notes.append(f"metadata: {_cause(err)}")
    return tags, notes


def _exif_tags(fh: BinaryIO) -> _Tags:
    import exifread

    out: _Tags = {}
    for key, tag in exifread.process_file(fh, details=True, extract_thumbnail=False).items():
        m = _IFD_GROUP.match(key)
        if m is None or not hasattr(tag, "tag"):
            continue
        out.setdefault((_group_name(m.group(1)), int(tag.tag)), tag)
    return out


def _group_name(ifd_name: str) -> str:
    if ifd_name == "Image":
        return "ifd0"
    if ifd_name == "Thumbnail":
        return "ifd1"
    if ifd_name.startswith("IFD "):
        return f"ifd{ifd_name[4:]}"
    if ifd_name.startswith("EXIF SubIFD"):
        return f"sub{ifd_name[11:]}"
    return ifd_name.lower()


def _bmff_boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, declared end) of each box in buf[start:end]; 'uuid' payload skips its user type."""
    pos = start
    while pos + 8 <= end:
        box_size, box_type = struct.unpack(">I4s", buf[pos:pos + 8])
        header = 8
        if box_size == 1:
            if pos + 16 > end:
                return
            box_size = struct.unpack(">Q", buf[pos + 8:pos + 16])[0]
            header = 16
        elif box_size == 0:
            box_size = end - pos
        if box_size < header:
            return
        yield box_type, pos + header, pos + box_size
        pos += box_size


def _top_level_boxes(fh: BinaryIO, size: int) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes read by seeking, so mdat is never loaded."""
    boxes = []
    pos = 0
    while pos + 8 <= size:
        fh.seek(pos)
        header = fh.read(16)
        box = next(_bmff_boxes(header, 0, len(header)), None)
        if box is None:
            break
        box_type, payload, box_end = box
        if struct.unpack(">I", header[:4])[0] == 0:
            box_end = size  # a size of 0 means "to the end of the file"
        boxes.append((box_type, pos + payload, pos + box_end))
        pos += box_end
    return boxes


def _cr3_tiff_blocks(fh: BinaryIO, size: int) -> dict[str, bytes]:
    blocks: dict[str, bytes] = {}
    for box_type, payload, box_end in _top_level_boxes(fh, size):
        if box_type != b"moov":
            continue
        fh.seek(payload)
        moov = fh.read(min(box_end, size) - payload)
        for sub_type, sub_payload, sub_end in _bmff_boxes(moov, 0, len(moov)):
            if sub_type != b"uuid" or moov[sub_payload:sub_payload + 16] != _CANON_UUID:
                continue
            for cmt, cmt_payload, cmt_end in _bmff_boxes(moov, sub_payload + 16, min(sub_end, len(moov))):
                if cmt in _CR3_TIFF_BOXES:
                    blocks[_CR3_TIFF_BOXES[cmt]] = moov[cmt_payload:cmt_end]
    return blocks


def _structure_problem(fh: BinaryIO, container: str, head: bytes, tags: _Tags, size: int) -> str | None:
    """Why the file cannot hold its pixel data (a block beyond its end), or None."""
    extents: list[tuple[str, int, int]] = []  # (what, offset, length)
    if container == "tiff":
        raw_data_offset = _ints(tags, ("ifd0",), 0x118) if head[:4] == b"IIU\0" else []
        groups = {g for g, _ in tags if g.startswith(("ifd", "sub"))}
        for group in sorted(groups):
            for off_id, len_id, what in ((0x111, 0x117, "strip"), (0x144, 0x145, "tile")):
                offsets, lengths = _ints(tags, (group,), off_id), _ints(tags, (group,), len_id)
                if group == "ifd0" and off_id == 0x111 and raw_data_offset:
                    offsets = raw_data_offset[:1]  # RW2 keeps the raw offset in its own tag (0x118)
                extents += [(f"{group} {what}", o, n) for o, n in zip(offsets, lengths, strict=False)]
    elif container == "bmff":
        extents += [(f"'{t.decode('latin-1')}' box", p, e - p) for t, p, e in _top_level_boxes(fh, size)]
    elif container == "raf" and len(head) >= 108:
        values = struct.unpack(">6I", head[84:108])
        extents += [("RAF JPEG", values[0], values[1]), ("RAF CFA header", values[2], values[3]),
                    ("RAF CFA data", values[4], values[5])]
    for what, offset, length in extents:
        if offset + length > size:
            return (f"{what} ends at byte {offset + length} but the file has {size} bytes "
                    "(file truncated or pixel data stripped)")
    return None


def _libraw(path: Path, size: int, *, unpack: bool, keep_pixels: bool, min_bits_per_pixel: float) -> _Libraw:
    """Open with libraw; unpack only when asked and when the file can hold the announced raw image."""
    import rawpy

    errors = (rawpy.LibRawError, rawpy.NotSupportedError, RuntimeError, NotImplementedError, OSError,
              ValueError, MemoryError)
    try:
        with rawpy.imread(str(path)) as raw:
            s = raw.sizes
            width, height = int(s.width), int(s.height)
            raw_pixels = int(s.raw_width) * int(s.raw_height)
            if raw_pixels == 0 or width == 0 or height == 0:
                return _Libraw(problem="libraw found no raw image dimensions")
            if size * 8 < raw_pixels * min_bits_per_pixel:
                return _Libraw(width=width, height=height, problem=(
                    f"file has {size} bytes, too few for a {s.raw_width}x{s.raw_height} raw image "
                    "(pixel data stripped or truncated)"))
            if not unpack:
                return _Libraw(width=width, height=height)
            raw.unpack()
            visible = raw.raw_image_visible
            if visible.ndim != 2:
                return _Libraw(width=width, height=height,
                               problem=f"not a CFA mosaic (libraw gives {visible.ndim}-D data: sRAW or linear raw)")
            if visible.size == 0:
                return _Libraw(width=width, height=height, problem="libraw returned an empty image")
            # a copy: the libraw buffer dies with `raw`
            data = np.array(visible, dtype=np.float32) if keep_pixels else None
            bayer, cfa = _visible_pattern(raw.raw_pattern, raw.color_desc,
                                          top=int(s.top_margin), left=int(s.left_margin))
            other = raw.other
            return _Libraw(width=visible.shape[1], height=visible.shape[0], bayer=bayer, cfa_pattern=cfa,
                           black_levels=tuple(float(v) for v in raw.black_level_per_channel),
                           white_level=float(raw.white_level),
                           iso=float(other.iso_speed) or None, exposure=float(other.shutter_speed) or None,
                           data=data)
    except errors as err:
        return _Libraw(problem=_cause(err))


def _visible_pattern(pattern: npt.NDArray[np.uint8] | None, color_desc: bytes, *,
                     top: int, left: int) -> tuple[str | None, str | None]:
    """CFA letters at the visible area's origin; rawpy's raw_pattern is indexed from the full raw image."""
    if pattern is None or pattern.shape[0] < 2:
        return None, None  # monochrome sensor
    n = pattern.shape[0]
    desc = color_desc.decode("ascii", "replace")
    rolled = np.roll(pattern, shift=(-(top % n), -(left % n)), axis=(0, 1))
    letters = "".join(desc[int(i)] if int(i) < len(desc) else "?" for i in rolled.ravel())
    bayer = letters if n == 2 and is_cfa_cell(letters) else None
    return bayer, letters


# ---------------------------------------------------------------------------------------------- fields


def _metadata(tags: _Tags, lib: _Libraw, container: str, head: bytes, notes: list[str]) -> RawMetadata:
    make = _text(tags, ("ifd0",), 0x10F)
    model = _text(tags, ("ifd0",), 0x110)
    if model is None and container == "raf":
        model = head[28:60].split(b"\0")[0].decode("latin-1").strip() or None
    iso = _iso(tags, head)
    if iso is None and lib.iso is not None:
        iso = round(lib.iso)
    exposure = _float(tags, ("exif", "ifd0"), 0x829A)
    if exposure is None:
        exposure = lib.exposure
    date_obs, is_local = _date(tags)
    if date_obs is None:
        notes.append("date: no DateTimeOriginal/DateTime in the file")
    elif is_local:
        notes.append("date: camera local time, the file records no UTC offset")
    black = lib.black_levels or tuple(float(v) for v in _numbers(tags, _raw_groups(tags), 0xC61A))
    white = lib.white_level
    if white is None:
        whites = _numbers(tags, _raw_groups(tags), 0xC61D)
        white = float(whites[0]) if whites else None
    return RawMetadata(
        make=make, model=model, serial=_serial(tags, make, model), iso=iso, exposure=exposure,
        date_obs=date_obs, date_is_local=is_local, width=lib.width, height=lib.height,
        bayer=lib.bayer, cfa_pattern=lib.cfa_pattern,
        black_level=float(np.mean(black)) if black else None, black_levels=black, white_level=white,
        lens=_text(tags, ("exif", "ifd0"), 0xA434), focal_length=_float(tags, ("exif", "ifd0"), 0x920A),
        f_number=_float(tags, ("exif", "ifd0"), 0x829D), software=_text(tags, ("ifd0",), 0x131),
        container=container, notes=tuple(notes),
    )


def _raw_groups(tags: _Tags) -> tuple[str, ...]:
    """IFDs holding a CFA image (PhotometricInterpretation 32803), where DNG keeps its levels."""
    groups = sorted({g for g, t in tags if t == 0x106 and _ints(tags, (g,), 0x106)[:1] == [32803]})
    return tuple(groups)


def _iso(tags: _Tags, head: bytes) -> int | None:
    iso = next(iter(_ints(tags, ("exif", "ifd0"), 0x8827)), None)
    if iso == 65535:  # EXIF 2.3: ISOSpeedRatings saturates; the real value is in RecommendedExposureIndex
        iso = next(iter(_ints(tags, ("exif",), 0x8832)), iso)
    if iso is None and head[:4] == b"IIU\0":
        iso = next(iter(_ints(tags, ("ifd0",), 0x17)), None)  # Panasonic RW2 keeps ISO in its raw IFD
    return iso or None


def _date(tags: _Tags) -> tuple[datetime | None, bool]:
    for date_id, subsec_id, offset_id, groups in ((0x9003, 0x9291, 0x9011, ("exif", "ifd0")),
                                                  (0x0132, 0x9290, 0x9010, ("ifd0",))):
        text = _text(tags, groups, date_id)
        if text is None:
            continue
        try:
            stamp = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            continue
        subsec = re.sub(r"\D", "", _text(tags, ("exif", "ifd0"), subsec_id) or "")
        if subsec:
            stamp = stamp.replace(microsecond=int(subsec[:6].ljust(6, "0")))
        offset = _utc_offset(_text(tags, ("exif", "ifd0"), offset_id))
        if offset is None:
            return stamp, True
        return stamp.replace(tzinfo=offset).astimezone(UTC), False
    return None, False


def _utc_offset(text: str | None) -> timezone | None:
    m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", (text or "").strip())
    if m is None:
        return None
    delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-delta if m.group(1) == "-" else delta)


def _serial(tags: _Tags, make: str | None, model: str | None) -> str | None:
    """Body serial from EXIF, DNG, or the maker note (vendor tag ids), in that order."""
    for group, tag_id in (("exif", 0xA431), ("ifd0", 0xC62F), ("exif", 0xFDE9)):
        text = _text(tags, (group,), tag_id)
        if text:
            return text
    vendor = (make or "").split()[0].lower() if make else ""
    if vendor == "canon":
        number = next(iter(_ints(tags, ("makernote",), 0x000C)), None)
        if number is not None:
            return _canon_serial(number, model or "")
        return _text(tags, ("makernote",), 0x0096)
    vendor_tags = {"nikon": (0x001D, 0x00A0), "fujifilm": (0x0010,), "olympus": (0x0404, 0x101A)}
    for tag_id in vendor_tags.get(vendor, ()):
        text = _text(tags, ("makernote",), tag_id)
        if text:
            return text
    return None


def _canon_serial(number: int, model: str) -> str:
    """Canon's body number as printed on the camera (ExifTool's formatting rules)."""
    if re.search(r"EOS D30\b", model):
        return f"{number >> 16:x}-{number & 0xFFFF:05d}"
    if "EOS-1D" in model:
        return f"{number:06d}"
    return f"{number:010d}"


# ---------------------------------------------------------------------------------------------- tag values


def _find(tags: Mapping[tuple[str, int], Any], groups: tuple[str, ...], tag_id: int) -> Any:
    for group in groups:
        tag = tags.get((group, tag_id))
        if tag is not None:
            return tag
    return None


def _text(tags: _Tags, groups: tuple[str, ...], tag_id: int) -> str | None:
    tag = _find(tags, groups, tag_id)
    if tag is None:
        return None
    value = tag.values
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.split("\0")[0].strip()
    return text or None


def _numbers(tags: _Tags, groups: tuple[str, ...], tag_id: int) -> list[float]:
    tag = _find(tags, groups, tag_id)
    if tag is None or isinstance(tag.values, str | bytes):
        return []
    out: list[float] = []
    for v in tag.values:
        if isinstance(v, Fraction):
            if v.denominator == 0:  # exifread keeps n/0 rationals with a zero denominator
                continue
            out.append(float(v))
        elif isinstance(v, int | float):
            out.append(float(v))
    return out


def _ints(tags: _Tags, groups: tuple[str, ...], tag_id: int) -> list[int]:
    return [int(v) for v in _numbers(tags, groups, tag_id)]


def _float(tags: _Tags, groups: tuple[str, ...], tag_id: int) -> float | None:
    values = _numbers(tags, groups, tag_id)
    return values[0] if values and values[0] > 0 else None


def _cause(err: BaseException) -> str:
    message = err.args[0] if err.args else ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    text = " ".join(str(message).split()) or "no detail"
    return f"{type(err).__name__}: {text}"
