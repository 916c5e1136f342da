"""Picture formats: TIFF (tifffile), PNG and JPEG (OpenCV), XISF (the ``xisf`` package), read as frames and
written as products. No codec is written here: each format goes through its well-kept library.

Reading gives float32 pixels in the file's own units (8-bit 0–255, 16-bit 0–65535, float as stored), shape
(H, W) for grey and (3, H, W) in R, G, B order for colour (an alpha channel is dropped), and an `ImageInfo`
with what the file says about itself: EXIF/TIFF tags (date, exposure, ISO, camera, software) for TIFF, PNG and
JPEG, the FITS keywords an XISF file keeps. `image_meta` turns that into a `FrameMeta`; a file without a date
gets its modification time, and the meta's ``notes`` say so.

Writing: `write_tiff16` (the linear stack scaled to 0–65535, the scaling in the description tag, so that any
editor opens it), `write_xisf` (float32 with the FITS keywords and HISTORY of the product's provenance). The
8-bit pictures (PNG, JPEG) are written by `astrod.io.previews`. Every write is atomic.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.errors import FrameReadError
from astrod.io.atomic import atomic_path
from astrod.io.headers import PathRule, complete_from_path, normalise
from astrod.io.provenance import Card, ascii_text, history_lines
from astrod.io.raw import ExifFields, exif_fields
from astrod.model import FrameKind, FrameMeta

FloatArray = npt.NDArray[np.float32]

# suffix -> format name (FrameMeta.source_format)
IMAGE_FORMATS: Mapping[str, str] = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg",
                                    ".jpeg": "jpeg", ".xisf": "xisf"}
# Formats that never carry an exposure time of their own (EXIF may, but often does not): such a frame is
# stackable with its exposure unknown.
NO_EXPOSURE_FORMATS = frozenset({"tiff", "png", "jpeg"})
TIFF_SCALE_MAX = 65535.0


def image_format(path: Path) -> str | None:
    """The picture format a file name says (``tiff``, ``png``, ``jpeg``, ``xisf``), or None."""
    return IMAGE_FORMATS.get(path.suffix.lower())


def is_image_name(path: Path) -> bool:
    return image_format(path) is not None


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a picture file says about itself. ``sample`` is the stored sample type (``uint8``, ``uint16``,
    ``float32``, ...); ``exif`` its EXIF/TIFF tags (TIFF, PNG, JPEG); ``cards`` the FITS keywords of an XISF
    file (keyword -> value); ``notes`` what could not be read and why, one line each."""

    format: str
    width: int
    height: int
    planes: int
    sample: str
    exif: ExifFields = ExifFields()
    software: str | None = None
    pages: int = 1
    cards: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- reading


def read_image(path: Path) -> tuple[FloatArray, ImageInfo]:
    """Pixels (float32, (H, W) or (3, H, W) R, G, B) and metadata of a TIFF, PNG, JPEG or XISF file.
    Raises FrameReadError ``"<path>: cannot read <format>: <cause>"``."""
    return _read(Path(path), pixels=True)


def read_image_info(path: Path) -> ImageInfo:
    """Metadata of a picture file without decoding its pixels where the format allows it (TIFF, XISF; PNG and
    JPEG sizes come from a decode)."""
    return _read(Path(path), pixels=False)[1]


def _read(path: Path, *, pixels: bool) -> tuple[FloatArray, ImageInfo]:
    fmt = image_format(path)
    if fmt is None:
        raise FrameReadError(f"{path}: not a picture format astrod reads ({', '.join(sorted(IMAGE_FORMATS))})")
    try:
        if fmt == "tiff":
            data, info = _read_tiff(path, pixels=pixels)
        elif fmt == "xisf":
            data, info = _read_xisf(path, pixels=pixels)
        else:
            data, info = _read_cv2(path, fmt)
    except FrameReadError:
        raise
    except OSError as err:
        raise FrameReadError(f"{path}: cannot read {fmt}: {err.strerror or err}") from err
    # the libraries raise assorted built-in exceptions on malformed files
    except Exception as err:
        raise FrameReadError(f"{path}: cannot read {fmt}: {type(err).__name__}: {_one_line(err)}") from err
    if fmt != "xisf":
        info = _with_exif(path, info)
    return data, info


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or "no detail"


def _planes_first(arr: npt.NDArray[Any], axes: str, path: Path) -> tuple[npt.NDArray[Any], list[str]]:
    """A (H, W) or (3, H, W) array from a tifffile series (axes such as YX, YXS, SYX, IYX, QYXS)."""
    notes: list[str] = []
    while len(axes) > 3 or (len(axes) == 3 and "S" not in axes):
        notes.append(f"multi-page TIFF ({arr.shape[0]} pages along {axes[0]}): the first is read")
        arr, axes = arr[0], axes[1:]
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), 0)
        if arr.shape[0] == 1:
            arr = arr[0]
        elif arr.shape[0] in (3, 4):
            arr = arr[:3]  # RGBA: the alpha channel is not light
        else:
            raise FrameReadError(f"{path}: cannot read tiff: {arr.shape[0]} samples per pixel (1, 3 or 4 expected)")
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[0] == 3):
        raise FrameReadError(f"{path}: cannot read tiff: image shape {arr.shape} with axes {axes}")
    return arr, notes


def _read_tiff(path: Path, *, pixels: bool) -> tuple[FloatArray, ImageInfo]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise FrameReadError(f"{path}: cannot read tiff: no image in the file")
        series = tif.series[0]
        page = tif.pages.first
        photometric = tifffile.PHOTOMETRIC(int(page.photometric))
        notes: list[str] = []
        if len(tif.series) > 1:
            notes.append(f"{len(tif.series)} images in the file (thumbnails or pages): the first is read")
        if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE,
                               tifffile.PHOTOMETRIC.RGB):
            raise FrameReadError(f"{path}: cannot read tiff: photometric {photometric.name} (grey or RGB expected)")
        shape = dict(zip(series.axes, series.shape, strict=True))
        samples = shape.get("S", 1)
        info = ImageInfo(format="tiff", width=int(shape.get("X", 0)), height=int(shape.get("Y", 0)),
                         planes=3 if samples >= 3 else 1, sample=str(series.dtype), pages=len(tif.pages),
                         software=_tag_text(page, "Software"))
        if not pixels:
            return np.empty((0, 0), dtype=np.float32), info
        arr, page_notes = _planes_first(series.asarray(), series.axes, path)
        if photometric == tifffile.PHOTOMETRIC.MINISWHITE and np.issubdtype(arr.dtype, np.integer):
            arr = np.iinfo(arr.dtype).max - arr
    return _float32(arr), replace(info, notes=tuple(notes + page_notes))


def _tag_text(page: Any, name: str) -> str | None:
    tag = page.tags.get(name)
    if tag is None or not isinstance(tag.value, str):
        return None
    return tag.value.strip("\0 ") or None


def _read_cv2(path: Path, fmt: str) -> tuple[FloatArray, ImageInfo]:
    import cv2

    encoded = np.fromfile(path, dtype=np.uint8)
    # IMREAD_UNCHANGED keeps 16-bit PNG samples and does not rotate by EXIF orientation (stars do not care,
    # and frames of one sequence share it)
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise FrameReadError(f"{path}: cannot read {fmt}: OpenCV cannot decode the file (corrupt or not a {fmt})")
    if decoded.ndim == 3:
        if decoded.shape[2] == 1:
            decoded = decoded[:, :, 0]
        else:  # B, G, R(, A) -> R, G, B planes
            decoded = np.moveaxis(decoded[:, :, 2::-1], 2, 0)
    height, width = decoded.shape[-2:]
    info = ImageInfo(format=fmt, width=int(width), height=int(height), planes=1 if decoded.ndim == 2 else 3,
                     sample=str(decoded.dtype))
    return _float32(decoded), info


def _read_xisf(path: Path, *, pixels: bool) -> tuple[FloatArray, ImageInfo]:
    from xisf import XISF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            doc = XISF(str(path))
        except ValueError as err:  # the package's way of saying "not XISF"
            raise FrameReadError(f"{path}: cannot read xisf: {_one_line(err)}") from err
        images = doc.get_images_metadata()
        if not images:
            raise FrameReadError(f"{path}: cannot read xisf: no image in the file")
        meta = images[0]
        width, height, channels = (int(v) for v in meta["geometry"])
        notes = [f"{len(images)} images in the file: the first is read"] if len(images) > 1 else []
        cards = _xisf_cards(meta.get("FITSKeywords", {}))
        info = ImageInfo(format="xisf", width=width, height=height, planes=3 if channels >= 3 else 1,
                         sample=str(np.dtype(meta["dtype"])), cards=cards, notes=tuple(notes),
                         software=_xisf_property(doc.get_file_metadata(), "XISF:CreatorApplication"))
        if not pixels:
            return np.empty((0, 0), dtype=np.float32), info
        data = doc.read_image(0, data_format="channels_first")
    if channels == 1:
        data = data[0]
    elif channels >= 3:
        data = data[:3]
    else:
        raise FrameReadError(f"{path}: cannot read xisf: {channels} channels (1 or 3 expected)")
    return _float32(data), info


def _xisf_property(props: Mapping[str, Any], name: str) -> str | None:
    value = props.get(name, {}).get("value") if isinstance(props.get(name), Mapping) else None
    return str(value).strip() or None if value is not None else None


def _xisf_cards(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """XISF FITSKeyword elements (text) as header values: quoted text unquoted, numbers and T/F converted."""
    cards: dict[str, Any] = {}
    for key, entries in keywords.items():
        if key.upper() in ("HISTORY", "COMMENT", "") or not entries:
            continue
        cards[key.upper()] = _card_value(str(entries[0].get("value", "")))
    return cards


def _card_value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'").rstrip()
    if text in ("T", "F"):
        return text == "T"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _float32(arr: npt.NDArray[Any]) -> FloatArray:
    """The samples as a C-contiguous float32 array (a bool mask as 0/1)."""
    return np.ascontiguousarray(arr, dtype=np.float32)


def _with_exif(path: Path, info: ImageInfo) -> ImageInfo:
    """``info`` with the file's EXIF/TIFF tags (exifread; best effort: a malformed block becomes a note)."""
    try:
        with path.open("rb") as fh:
            exif = exif_fields(fh)
    # exifread raises assorted built-in exceptions on malformed tags; the pixels are still good
    except Exception as err:
        return replace(info, notes=(*info.notes, f"metadata: {type(err).__name__}: {_one_line(err)}"))
    notes = list(info.notes)
    if exif.date_is_local:
        notes.append("date: camera local time, the file records no UTC offset")
    return replace(info, exif=exif, software=exif.software or info.software, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------- metadata


def image_meta(path: Path, info: ImageInfo, *, rename: Mapping[str, str] | None = None,
               rules: Iterable[PathRule] = ()) -> FrameMeta:
    """A picture's FrameMeta: XISF FITS keywords normalised like a FITS header; EXIF/TIFF tags otherwise
    (ISO doubles as gain, as for camera raw files), the frame type from the folders and path rules. Without a
    date in the file, its modification time, with a note saying so."""
    p = Path(path)
    exif = info.exif
    if info.cards is not None:
        meta = normalise(info.cards, p, rename=rename, rules=rules)
    else:
        meta = complete_from_path(FrameMeta(
            kind=FrameKind.UNKNOWN, kind_reason=f"no frame type in {info.format} metadata", exposure=exif.exposure,
            camera=exif.camera, gain=float(exif.iso) if exif.iso is not None else None, iso=exif.iso,
            date_obs=exif.date_obs, software=info.software), p, rules=rules)
    notes = list(info.notes)
    date_obs = meta.date_obs
    if date_obs is None:
        date_obs = datetime.fromtimestamp(_mtime(p), tz=UTC)
        notes.append(f"date: none in the file; its modification time {date_obs.isoformat(timespec='seconds')}")
    if meta.exposure is None and info.format in NO_EXPOSURE_FORMATS:
        notes.append("exposure: unknown (none in the file)")
    return replace(meta, width=info.width, height=info.height, planes=info.planes, date_obs=date_obs,
                   source_format=info.format, notes=(*meta.notes, *notes))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError as err:
        raise FrameReadError(f"{path}: cannot stat: {err.strerror or err}") from err


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class TiffScaling:
    """How a 16-bit TIFF's samples map back onto the stack: ``value = offset + sample * scale``."""

    offset: float
    scale: float

    def description(self) -> str:
        return json.dumps({"astrod": "linear stack scaled to 16 bits", "value": "offset + sample * scale",
                           "offset": self.offset, "scale": self.scale})


def tiff_scaling(image: FloatArray) -> TiffScaling:
    """The scaling that maps the finite range of ``image`` onto 0–65535 (a flat image onto 0)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return TiffScaling(offset=0.0, scale=1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return TiffScaling(offset=lo, scale=(hi - lo) / TIFF_SCALE_MAX if hi > lo else 1.0)


def write_tiff16(path: str | os.PathLike[str], image: FloatArray, *, software: str = "",
                 scaling: TiffScaling | None = None) -> TiffScaling:
    """Write a float (H, W) or (3, H, W) R, G, B image as a 16-bit TIFF (uncompressed, which every editor opens:
    zlib saves under a fifth of a noisy stack at 200 times the time; interleaved RGB),
    linearly scaled to 0–65535 (NaN as 0), with the scaling as JSON in the ImageDescription tag. Atomic;
    returns the scaling."""
    import tifffile

    data = np.asarray(image, dtype=np.float32)
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[0] != 3):
        raise ValueError(f"a TIFF product must be (H, W) or (3, H, W), got {data.shape}")
    sc = scaling if scaling is not None else tiff_scaling(data)
    scaled = np.nan_to_num((data.astype(np.float64) - sc.offset) / sc.scale, nan=0.0, posinf=TIFF_SCALE_MAX,
                           neginf=0.0)
    samples = np.clip(np.rint(scaled), 0, TIFF_SCALE_MAX).astype(np.uint16)
    if samples.ndim == 3:
        samples = np.ascontiguousarray(np.moveaxis(samples, 0, 2))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, samples, photometric="rgb" if samples.ndim == 3 else "minisblack",
                         compression=None, description=sc.description(), software=software or None,
                         metadata=None)
    return sc


def write_picture_tiff16(path: str | os.PathLike[str], picture: npt.NDArray[np.uint16], *, software: str = "",
                         description: str = "") -> Path:
    """Write a stretched 16-bit picture, uint16 (H, W) grey or (H, W, 3) RGB, as an uncompressed TIFF. Atomic."""
    import tifffile

    if picture.dtype != np.uint16 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] != 3):
        raise ValueError(f"a 16-bit picture must be uint16 (H, W) or (H, W, 3), got {picture.dtype}{picture.shape}")
    target = Path(path)
    with atomic_path(target) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(picture), photometric="rgb" if picture.ndim == 3 else "minisblack",
                         compression=None, description=description or None, software=software or None,
                         metadata=None)
    return target


def write_xisf(path: str | os.PathLike[str], image: FloatArray, cards: Mapping[str, Card],
               history: Iterable[str] = (), *, creator: str = "astrod") -> Path:
    """Write a float32 (H, W) or (3, H, W) R, G, B image as XISF with ``cards`` (keyword -> (value, comment))
    and HISTORY lines as FITS keywords (PixInsight reads them as the image's FITS header). Atomic."""
    from xisf import XISF

    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim == 3 and data.shape[0] == 3:
        data = np.moveaxis(data, 0, 2)
    else:
        raise ValueError(f"an XISF product must be (H, W) or (3, H, W), got {data.shape}")
    keywords: dict[str, list[dict[str, str]]] = {}
    for key, (value, comment) in cards.items():
        if value is None:
            continue
        keywords[key] = [{"value": _fits_text(value), "comment": ascii_text(comment)}]
    lines = [part for line in history for part in history_lines(line)]
    if lines:
        keywords["HISTORY"] = [{"value": "", "comment": part} for part in lines]
    target = Path(path)
    with atomic_path(target) as tmp:
        XISF.write(str(tmp), np.ascontiguousarray(data), creator_app=creator,
                   image_metadata={"FITSKeywords": keywords}, codec=None)
    return target


def _fits_text(value: Any) -> str:
    """A value as a FITS card writes it: quoted text, T/F, numbers."""
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value)) if math.isfinite(value) else "0"
    return "'" + ascii_text(str(value)).replace("'", "''") + "'"
