"""A session's products: the stack with its provenance (`StackProduct`, its header cards and HISTORY lines from
`stack_cards`, built by `astrod.io.provenance`) and the files under ``<output>/<night>/<target>/<filter>/``
(the rolling preview and the final products), written through `astrod.io`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.core.stretch import auto_stretch
from astrod.io.fits import Header, write_fits
from astrod.io.previews import write_frames_table
from astrod.io.previews import write_preview as write_image
from astrod.io.provenance import Card, ParamValue, Provenance, ProvenanceCards, provenance_cards, write_cards
from astrod.pipeline.settings import PipelineSettings
from astrod.pipeline.state import TABLE_COLUMNS, Reference, Session

FloatArray = npt.NDArray[np.float32]

PREVIEW_JPEG = "preview.jpg"
PREVIEW_FITS = "preview.fits"
STACK = "stack.fits"
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
    camera, planes)."""
    s = session
    built = provenance_cards(stack_provenance(session, settings, reference=reference, method=method, notes=notes))
    cards = built.cards
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


def write_outputs(product: StackProduct, *, stack_path: Path, preview_path: Path | None = None,
                  table_path: Path | None = None, preview_max_size: int = 1600) -> None:
    """Write the stack (FITS float32, colour as a 3-plane cube), its auto-stretched preview (PNG or JPEG by
    suffix, the longer side at most ``preview_max_size`` px) and the frames table (CSV); every write atomic."""
    write_fits(stack_path, np.asarray(product.image, dtype=np.float32), product_header(product))
    if preview_path is not None:
        h, w = product.image.shape[-2:]
        factor = max(1, math.ceil(max(h, w) / max(1, preview_max_size)))
        write_image(preview_path, auto_stretch(product.image, downsample_factor=factor))
    if table_path is not None:
        write_frames_table(table_path, product.rows, TABLE_COLUMNS)


def write_preview(folder: Path, *, linear: npt.NDArray[np.float32], stretched: npt.NDArray[np.uint8],
                  wcs: Mapping[str, Card] | None = None) -> None:
    """The auto-stretched JPEG people look at and the linear FITS they can process further (both atomic; the
    FITS first, so that whoever sees a new JPEG finds its FITS beside it). ``wcs``: the preview's WCS cards
    once the session's reference is solved (`astrod.pipeline.solving.product_wcs_cards`)."""
    write_fits(folder / PREVIEW_FITS, np.asarray(linear, dtype=np.float32),
               {"IMAGETYP": ("Preview", "live stack preview, may be downsampled"), **(wcs or {})})
    write_image(folder / PREVIEW_JPEG, stretched)


def write_session_outputs(product: StackProduct, folder: Path) -> None:
    """The final stack (FITS float32 with provenance) and the frames table."""
    write_outputs(product, stack_path=folder / STACK, table_path=folder / FRAMES)
