"""A session's products: the stack with its provenance (`StackProduct`, its header cards and HISTORY lines from
`stack_cards`, built by `astrod.io.provenance`) and the files under ``<output>/<night>/<target>/<filter>/``
(the rolling preview and the final products in the ``[output] formats``), written through `astrod.io`.

The linear stack is written as FITS (float32), TIFF (16-bit, scaled to 0–65535, the scaling in its description
tag) or XISF (float32 with the FITS keywords); `stack_writer` picks one by the file's suffix. PNG and JPEG hold
the auto-stretched picture."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.core.colour import ColourBalance, apply_colour, colour_balance
from astrod.core.stretch import apply_stretch, auto_stretch, downsample, stretch_parameters
from astrod.io.fits import FITS_EXTENSIONS, Header, write_fits
from astrod.io.images import write_tiff16, write_xisf
from astrod.io.previews import write_frames_table
from astrod.io.previews import write_preview as write_image
from astrod.io.provenance import Card, ParamValue, Provenance, ProvenanceCards, provenance_cards, write_cards
from astrod.pipeline.settings import PipelineSettings
from astrod.pipeline.state import TABLE_COLUMNS, Reference, Session

FloatArray = npt.NDArray[np.float32]

PREVIEW_JPEG = "preview.jpg"
PREVIEW_FITS = "preview.fits"
STACK = "stack.fits"
STACK_NAME = "stack"  # the final products are stack.fits, stack.tif, stack.xisf, stack.png, stack.jpg
FORMAT_SUFFIXES = {"fits": ".fits", "tiff": ".tif", "xisf": ".xisf", "png": ".png", "jpg": ".jpg"}
LINEAR_SUFFIXES = {**{ext: "fits" for ext in FITS_EXTENSIONS if not ext.endswith((".gz", ".fz"))},
                   ".tif": "tiff", ".tiff": "tiff", ".xisf": "xisf"}
FRAMES = "frames.csv"
SESSION = "session.json"


@dataclass(frozen=True, slots=True, eq=False)
class StackProduct:
    """A finished stack: float32 (H, W) or (3, H, W) in R, G, B order, NaN where no frame covered; header cards
    (key -> (value, comment)); HISTORY lines; the frames table; the per-pixel count of frames used; and the
    file names of the calibration masters used."""

    image: FloatArray
    header: dict[str, Card]
    rows: list[dict[str, object]]
    history: tuple[str, ...] = ()
    count: npt.NDArray[np.uint16] | None = None
    masters: tuple[str, ...] = ()


def stack_provenance(session: Session, settings: PipelineSettings, *, reference: Reference, method: str,
                     notes: tuple[str, ...] = ()) -> Provenance:
    """The provenance of a session's stack: the frames combined, ``method`` (mean, online-sigma or the final
    rejection), the settings that shaped it, the calibration masters as inputs (HISTORY ``master: <name>``)
    and ``notes`` then the session's notes (HISTORY ``astrod: <note>``)."""
    s, st = session, settings
    kappa = st.kappa if math.isfinite(st.kappa) else 0.0
    params: dict[str, tuple[ParamValue, str]] = {
        "KAPPA": (kappa, "rejection threshold, sigma (0: none)"),
        "NREJECT": (s.n_rejected, "frames rejected (see the frames table)"),
        "NFRAMES": (s.n_stacked + s.n_rejected, "frames offered to the stack"),
        "WEIGHTNG": (st.weighting, "frame weights"),
        "REGMODEL": (st.transform, "registration model"),
        "INTERP": (st.interpolation, "warp interpolation"),
        "NORMALIS": ("additive", "background normalisation onto the reference"),
        "FLUXCONS": (True, "warped frames scaled by 1/area ratio: flux conserved"),
        "REFFRAME": (Path(reference.path).name[:68], "registration reference"),
        "NMASTERS": (len(s.masters), "calibration masters used"),
    }
    return Provenance(kind="stack", inputs=tuple(s.masters), input_label="master:", method=method,
                      method_card="STACKMTH", method_comment="combination: mean, online-sigma or final rejection",
                      ncombine=s.n_stacked, parameters=params, notes=notes + tuple(s.notes))


def stack_cards(session: Session, settings: PipelineSettings, *, reference: Reference, method: str,
                notes: tuple[str, ...] = ()) -> ProvenanceCards:
    """The header cards of a session's stack (key -> (value, comment)) and its HISTORY lines: its provenance
    (`stack_provenance`, through `astrod.io.provenance`), then what the stack is (exposure, date, target,
    camera, planes). EXPTIME and EXPTOTAL are left out when the frames' exposure is unknown (pictures)."""
    s = session
    built = provenance_cards(stack_provenance(session, settings, reference=reference, method=method, notes=notes))
    cards = built.cards
    if s.first_meta.get("exposure") is not None:  # pictures may not say: the stack's exposure is then unknown
        cards["EXPTIME"] = (round(s.total_exposure, 3), "total exposure of the combined frames, s")
        cards["EXPTOTAL"] = (round(s.total_exposure, 3), "total exposure of the combined frames, s")
    cards["DATE"] = (datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "file written, UTC")
    if len(reference.stack_shape) == 3 and reference.stack_shape[0] == 3:
        cards["PLANES"] = ("R,G,B", "colour planes, in order")
    meta = s.first_meta
    for key, name, comment in (("OBJECT", "object", "target"), ("FILTER", "filter", "filter"),
                               ("INSTRUME", "camera", "camera"), ("GAIN", "gain", "camera gain setting"),
                               ("OFFSET", "offset", "camera offset setting"),
                               ("SET-TEMP", "set_temperature", "sensor set temperature, C")):
        value = meta.get(name)
        if value is not None:
            cards[key] = (value if not isinstance(value, str) else value[:68], comment)
    if s.date_first is not None:
        cards["DATE-OBS"] = (s.date_first, "start of the first frame, UTC")
        cards["DATE-END"] = (s.date_last, "start of the last frame, UTC")
    return built


def product_header(product: StackProduct) -> Header:
    """The FITS header of a stack: its cards, then its HISTORY lines (cut at 72 characters)."""
    return write_cards(Header(), product.header, product.history)


def stack_writer(path: Path) -> str | None:
    """The format the linear stack is written in for this file name (``fits``, ``tiff``, ``xisf``), or None."""
    return LINEAR_SUFFIXES.get(path.suffix.lower())


def write_stack(product: StackProduct, path: Path) -> Path:
    """Write the linear stack in the format its suffix names (`stack_writer`): FITS float32, 16-bit TIFF or
    XISF float32, each with the product's provenance. Raises ValueError for another suffix."""
    fmt = stack_writer(path)
    image = np.asarray(product.image, dtype=np.float32)
    if fmt == "fits":
        write_fits(path, image, product_header(product))
    elif fmt == "tiff":
        write_tiff16(path, image, software=str(product.header["CREATOR"][0]))
    elif fmt == "xisf":
        write_xisf(path, image, product.header, product.history, creator=str(product.header["CREATOR"][0]))
    else:
        raise ValueError(f"{path}: no stack writer for {path.suffix!r}; use one of {', '.join(LINEAR_SUFFIXES)}")
    return path


def stretched_picture(product: StackProduct, *, max_size: int = 0, colour: bool = True) -> npt.NDArray[np.uint8]:
    """The auto-stretched 8-bit picture of the stack, the longer side at most ``max_size`` px (0: full size);
    a colour stack colour-calibrated first (``colour``; `astrod.core.colour`, factors from a binned copy)."""
    h, w = product.image.shape[-2:]
    factor = max(1, math.ceil(max(h, w) / max_size)) if max_size > 0 else 1
    image = product.image
    if colour and image.ndim == 3 and image.shape[0] == 3:
        balance = colour_balance(image)
        small = downsample(image, factor) if factor > 1 else image
        # the stretch from a binned calibrated copy; the picture calibrated band by band (no full-size copy)
        params = stretch_parameters(apply_colour(downsample(small, max(1, math.ceil(max(h, w) / factor / 2048))),
                                                 balance))
        out = np.empty((*small.shape[-2:], 3), dtype=np.uint8)
        for r0 in range(0, small.shape[-2], 256):
            out[r0:r0 + 256] = apply_stretch(apply_colour(small[:, r0:r0 + 256], balance), params)
        return out
    return auto_stretch(image, downsample_factor=factor)


def preview_picture(small: FloatArray, *, colour: bool = True) -> tuple[npt.NDArray[np.uint8], ColourBalance | None]:
    """The auto-stretched picture of a (reduced) preview and the colour factors it was calibrated with: a colour
    image colour-calibrated first when ``colour`` (factors from a copy of at most 0.6 MP per plane: ~0.1-0.3 s
    at 1600 px), else None. The linear preview itself stays as stacked (its header names the factors)."""
    if colour and small.ndim == 3 and small.shape[0] == 3:
        balance = colour_balance(small, max_pixels=600_000)
        return auto_stretch(apply_colour(small, balance), downsample_factor=1), balance
    return auto_stretch(small, downsample_factor=1), None


def write_outputs(product: StackProduct, *, stack_path: Path, preview_path: Path | None = None,
                  table_path: Path | None = None, preview_max_size: int = 1600) -> None:
    """Write the stack (by its suffix: FITS float32, 16-bit TIFF or XISF; colour as 3 planes), its
    auto-stretched preview (PNG or JPEG by suffix, the longer side at most ``preview_max_size`` px) and the
    frames table (CSV); every write atomic."""
    write_stack(product, stack_path)
    if preview_path is not None:
        write_image(preview_path, stretched_picture(product, max_size=preview_max_size))
    if table_path is not None:
        write_frames_table(table_path, product.rows, TABLE_COLUMNS)


def write_preview(folder: Path, *, linear: npt.NDArray[np.float32], stretched: npt.NDArray[np.uint8],
                  wcs: Mapping[str, Card] | None = None) -> None:
    """The auto-stretched JPEG people look at and the linear FITS they can process further (both atomic; the
    FITS first, so that whoever sees a new JPEG finds its FITS beside it). ``wcs``: the preview's WCS cards
    once the session's reference is solved (`astrod.pipeline.solving.product_wcs_cards`), and the colour
    factors of the JPEG (`astrod.core.colour.ColourBalance.cards`)."""
    write_fits(folder / PREVIEW_FITS, np.asarray(linear, dtype=np.float32),
               {"IMAGETYP": ("Preview", "live stack preview, may be downsampled"), **(wcs or {})})
    write_image(folder / PREVIEW_JPEG, stretched)


def write_session_outputs(product: StackProduct, folder: Path, *,
                          formats: tuple[str, ...] = ("fits", "jpg"), colour: bool = True) -> list[Path]:
    """The final products in ``formats`` (``[output] formats``: the linear stack as fits/tiff/xisf with its
    provenance, the auto-stretched picture as png/jpg, colour-calibrated when ``colour``, each
    ``stack.<suffix>``) and the frames table; returns the products written."""
    written: list[Path] = []
    picture: npt.NDArray[np.uint8] | None = None
    for fmt in formats:
        path = folder / f"{STACK_NAME}{FORMAT_SUFFIXES[fmt]}"
        if fmt in ("png", "jpg"):
            picture = stretched_picture(product, colour=colour) if picture is None else picture
            write_image(path, picture)
        else:
            write_stack(product, path)
        written.append(path)
    write_frames_table(folder / FRAMES, product.rows, TABLE_COLUMNS)
    return written
