"""Calibrating frames with the library's masters: the function the daemon calls per frame, and its file wrapper.

:func:`calibrate_frame` matches a frame, prepares its masters (cached by the library) and runs the pure kernel
:func:`astrod.core.calibrate.apply`; the input frame is never modified. :func:`calibrate_files` is ``astrod
calibrate``: read, calibrate, write float32 FITS with provenance (masters, reasons, steps).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.calibrate import CalibrationRecipe, apply
from astrod.errors import AstrodError, FrameRejected
from astrod.io.fits import Header, is_fits_name, read_fits_header, write_fits
from astrod.io.frames import read_frame
from astrod.io.headers import PathRule
from astrod.io.provenance import ParamValue, Provenance, provenance_cards, write_cards
from astrod.library.masters import MasterLibrary
from astrod.library.match import MasterChoice, MatchResult
from astrod.model import Frame, FrameMeta

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class CalibratedFrame:
    """A calibrated frame (float32), the match that chose its masters, the steps applied and the header
    cards that record them."""

    data: FloatArray
    meta: FrameMeta
    match: MatchResult
    steps: tuple[str, ...]
    dark_scale: float
    cards: tuple[tuple[str, Any, str], ...]
    recipe: CalibrationRecipe | None = None  # rows can be calibrated again alike (None after cosmic cleaning)


def calibrate_frame(library: MasterLibrary, frame: Frame, *, match: MatchResult | None = None,
                    cosmic: bool = False, electrons: bool = False, bad_pixels: bool = True,
                    out: FloatArray | None = None) -> CalibratedFrame:
    """Calibrate one frame with the masters the library matches to it (or those of ``match``).

    Missing masters are left out (``match.missing`` says which); ``electrons`` multiplies by the frame's EGAIN;
    ``cosmic`` cleans cosmic rays (L.A.Cosmic). ``out`` (float32, the frame's shape) receives the result when
    given. Raises FrameRejected for a frame that cannot be calibrated.
    """
    meta = frame.meta
    if frame.data.ndim != 2:
        raise FrameRejected(f"{frame.path or 'frame'}: {frame.data.shape[0]}-plane image: only single-plane "
                            "sensor data can be calibrated")
    if frame.data.shape != (meta.height, meta.width):
        meta = _with_shape(meta, frame.data.shape)
    result = match if match is not None else library.match(meta)
    gain = None
    if electrons:
        if not (meta.egain is not None and meta.egain > 0):
            raise FrameRejected(f"{frame.path or 'frame'}: no EGAIN (e-/ADU) in the header: cannot convert to "
                                "electrons")
        gain = meta.egain
    try:
        prepared = library.prepared(result, use_badpixels=bad_pixels)
        done = apply(prepared, frame.data, light_exposure=meta.exposure, gain=gain, cosmic=cosmic,
                     out=out if out is not None and out.shape == frame.data.shape else None)
    except ValueError as err:
        raise FrameRejected(f"{frame.path or 'frame'}: cannot be calibrated: {err}") from err
    used = used_masters(result, bad_pixels=bad_pixels)
    card_of = {"bias": "CALBIAS", "dark": "CALDARK", "flat": "CALFLAT", "badpixels": "CALBPM"}
    # long master names leave no room for a comment
    params: dict[str, tuple[ParamValue, str]] = {card_of[c.role]: (c.record.name, "") for c in used}
    if result.dark is not None:
        params["DARKMODE"] = (result.dark_mode or "exact", "exact, scaled (exposure) or optimised")
        params["DARKSCAL"] = (round(float(done.dark_scale), 6), "factor applied to the dark current")
    if result.missing:
        params["CALMISS"] = ("; ".join(result.missing)[:68], "required masters that were missing")
    if gain is not None:
        params["BUNIT"] = ("electron", "pixel unit")
    built = provenance_cards(Provenance(
        kind="calibrated frame", inputs=tuple(c.record.name for c in used), input_label="master:",
        parameters=params, software_cards=("CALSOFT",),
        notes=done.steps + tuple(f"{c.role}: {c.reason}" for c in used)))
    cards = [(key, value, comment) for key, (value, comment) in built.cards.items()]
    cards += [("HISTORY", line, "") for line in built.history]
    recipe = None if cosmic else CalibrationRecipe(prepared=prepared, dark_scale=done.dark_scale, gain=gain)
    return CalibratedFrame(data=done.data, meta=meta, match=result, steps=done.steps, dark_scale=done.dark_scale,
                           cards=tuple(cards), recipe=recipe)


def used_masters(result: MatchResult, *, bad_pixels: bool = True) -> tuple[MasterChoice, ...]:
    """The chosen masters calibration actually applies: not the bias when an exact dark (which includes it) is
    subtracted, not the bad-pixel map when ``bad_pixels`` is off."""
    out = []
    for choice in result.choices():
        if choice.role == "bias" and result.dark is not None and result.dark_mode == "exact":
            continue
        if choice.role == "badpixels" and not bad_pixels:
            continue
        out.append(choice)
    return tuple(out)


def _with_shape(meta: FrameMeta, shape: tuple[int, ...]) -> FrameMeta:
    return replace(meta, height=int(shape[0]), width=int(shape[1]))


@dataclass(frozen=True, slots=True)
class CalibrateOutcome:
    """What happened to one input file of :func:`calibrate_files`."""

    path: Path
    output: Path | None
    match: MatchResult | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.match is not None and self.match.ok


_FITS_SUFFIX = re.compile(r"\.(fits|fit|fts)(\.gz|\.fz)?$|\.fz$", re.IGNORECASE)


def output_name(path: Path) -> str:
    """``light_001.fits`` -> ``light_001_cal.fits`` (any FITS or raw suffix replaced)."""
    stem = _FITS_SUFFIX.sub("", path.name)
    if stem == path.name:
        stem = path.stem
    return f"{stem}_cal.fits"


def _output_header(path: Path, frame: Frame, calibrated: CalibratedFrame) -> Header:
    header = Header()
    if is_fits_name(path):
        try:
            header = read_fits_header(path).copy()
        except AstrodError:
            header = Header()
    else:
        meta = frame.meta
        for key, value in (("IMAGETYP", meta.kind.value.title()), ("EXPTIME", meta.exposure),
                           ("INSTRUME", meta.camera), ("ISOSPEED", meta.iso), ("GAIN", meta.gain),
                           ("BAYERPAT", meta.bayer),
                           ("DATE-OBS", None if meta.date_obs is None
                            else meta.date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f"))):
            if value is not None:
                header[key] = value
    for key in ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM"):
        header.remove(key, ignore_missing=True, remove_all=True)
    header["CALFROM"] = (path.name[:68], "calibrated from this file")
    return write_cards(header, {key: (value, comment) for key, value, comment in calibrated.cards if key != "HISTORY"},
                       [str(value) for key, value, _ in calibrated.cards if key == "HISTORY"])


def calibrate_files(paths: Sequence[Path], output_dir: str | os.PathLike[str], library: MasterLibrary, *,
                    rename: Mapping[str, str] | None = None, rules: Iterable[PathRule] = (), cosmic: bool = False,
                    electrons: bool = False, bad_pixels: bool = True) -> list[CalibrateOutcome]:
    """Calibrate each file into ``output_dir`` as ``<name>_cal.fits`` (float32, provenance in the header).

    Inputs are never modified. A file that cannot be read or calibrated is reported (one line) and the others
    go on; a frame lacking a required master is calibrated with what there is, and its outcome says so.
    """
    log = structlog.get_logger()
    out_dir = Path(output_dir)
    rule_list = tuple(rules)
    outcomes: list[CalibrateOutcome] = []
    used: set[str] = set()
    for path in paths:
        try:
            frame = read_frame(path, rename=rename, rules=rule_list)
            calibrated = calibrate_frame(library, frame, cosmic=cosmic, electrons=electrons, bad_pixels=bad_pixels)
        except AstrodError as err:
            log.error("frame_failed", path=str(path), reason=str(err))
            outcomes.append(CalibrateOutcome(path, None, None, error=str(err)))
            continue
        name = output_name(path)
        n = 2
        while name in used:
            name = f"{output_name(path)[:-len('_cal.fits')]}_{n}_cal.fits"
            n += 1
        used.add(name)
        target = out_dir / name
        if target.resolve() == path.resolve():
            outcomes.append(CalibrateOutcome(path, None, calibrated.match, error=f"{path}: output would overwrite "
                                                                                  "the input"))
            continue
        write_fits(target, calibrated.data, _output_header(path, frame, calibrated))
        log.info("frame_calibrated", path=str(path), output=str(target), steps=len(calibrated.steps),
                 missing=len(calibrated.match.missing))
        outcomes.append(CalibrateOutcome(path, target, calibrated.match))
    return outcomes
