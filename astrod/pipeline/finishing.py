"""The finished picture of a session: the linear stack cropped to its well-covered area, its sky gradient removed
and its colour calibrated, written as ``final.<suffix>`` per ``[output] formats`` beside ``background.fits``
(the sky model removed) and the stack itself.

In two steps, so that the stack's own header can say which factors its finished picture used and so that no
second full-size copy of the stack is ever held:

* `plan_finish` works the factors out from binned copies (the crop box from the count map, the sky model,
  the colour balance measured on the gradient-free picture) — a small `FinishPlan` value;
* `apply_finish` applies it to the stack's pixels, in place on the cropped area when asked (after the stack's
  own products are written, the live stack's image is not needed any more).

The finished picture's formats: ``fits`` → final.fits (float32, linear, with the stack's provenance and the
finishing steps as cards and HISTORY, its WCS shifted by the crop), ``xisf`` → final.xisf (the same), ``tiff`` →
final.tif (the stretched picture at 16 bits), ``png``/``jpg`` → the stretched picture at 8 bits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.background import BackgroundModel, fit_background, render_background, subtract_background
from astrod.core.colour import ColourBalance, apply_colour, colour_balance
from astrod.core.coverage import Box, coverage_box
from astrod.core.stretch import apply_stretch, downsample, stretch_parameters
from astrod.io.atomic import atomic_write_text
from astrod.io.fits import write_fits
from astrod.io.images import write_picture_tiff16, write_xisf
from astrod.io.previews import write_preview as write_image
from astrod.io.provenance import Card, Provenance, provenance_cards
from astrod.pipeline.outputs import (
    FORMAT_SUFFIXES,
    FRAMES,
    SESSION,
    STACK,
    StackProduct,
    product_header,
    write_session_outputs,
)
from astrod.pipeline.report import REPORT, report_html
from astrod.pipeline.settings import FinishSettings

FloatArray = npt.NDArray[np.float32]
log = structlog.get_logger()

FINAL_NAME = "final"
BACKGROUND = "background.fits"
_BACKGROUND_SIDE = 1024  # background.fits is the model binned to this longer side: it is smooth
REPORT_SIDE = 1600  # the report's picture, px on its longer side


@dataclass(frozen=True, slots=True)
class FinishPlan:
    """What finishing does to a stack: keep ``crop`` (y0, y1, x0, x1), subtract ``background`` (None: not
    removed), apply ``balance`` (None: mono, or colour calibration off)."""

    crop: Box
    background: BackgroundModel | None
    balance: ColourBalance | None
    frames_share: float

    def cards(self) -> dict[str, Card]:
        """Cards naming what finishing did (for the finished picture and the stack it was made from)."""
        y0, y1, x0, x1 = self.crop
        out: dict[str, Card] = {"FINCROP": (f"[{x0 + 1}:{x1},{y0 + 1}:{y1}]", "finished crop of the stack, FITS "
                                            "x then y, 1-based"),
                                "FINCOVER": (self.frames_share, "crop: pixels covered by this share of frames")}
        if self.background is not None:
            out.update(self.background.cards())
        if self.balance is not None:
            out.update(self.balance.cards())
        return out


def plan_finish(product: StackProduct, settings: FinishSettings, *, frames: int) -> FinishPlan:
    """The `FinishPlan` of a stack of ``frames`` frames (factors from binned copies; the stack is not changed)."""
    image = product.image
    h, w = image.shape[-2:]
    crop: Box = (0, h, 0, w)
    if settings.crop_coverage > 0 and product.count is not None:
        try:
            crop = coverage_box(product.count, frames=frames, share=settings.crop_coverage)
        except ValueError:
            crop = (0, h, 0, w)  # nothing that well covered (a stack of one frame, drift): keep the whole
    y0, y1, x0, x1 = crop
    view = image[..., y0:y1, x0:x1]
    model = fit_background(view, mesh=settings.background_mesh) if settings.background else None
    balance = None
    if settings.colour and view.ndim == 3 and view.shape[0] == 3:
        factor = max(1, math.ceil(math.sqrt((y1 - y0) * (x1 - x0) / 2_000_000)))
        small = downsample(view, factor)
        if model is not None:
            small -= render_background(model, factor=factor)
            small += np.asarray(model.pedestal, dtype=np.float32)[:, None, None]
        balance = colour_balance(small)
    return FinishPlan(crop=crop, background=model, balance=balance, frames_share=settings.crop_coverage)


def apply_finish(image: FloatArray, plan: FinishPlan, *, in_place: bool = False) -> FloatArray:
    """The finished linear picture: ``image`` cropped, its sky model subtracted, colour-calibrated (float32).
    ``in_place``: the cropped area of ``image`` itself becomes the result (a view of it; nothing full-size is
    allocated)."""
    y0, y1, x0, x1 = plan.crop
    view = image[..., y0:y1, x0:x1]
    out: FloatArray = view if in_place else np.array(view, dtype=np.float32)
    if plan.background is not None:
        subtract_background(out, plan.background, out=out)
    if plan.balance is not None:
        apply_colour(out, plan.balance, out=out)
    return out


def finished_header(product: StackProduct, plan: FinishPlan) -> tuple[dict[str, Card], tuple[str, ...]]:
    """The finished picture's cards and HISTORY: the stack's (its WCS moved by the crop), the finishing cards,
    and a provenance line per step."""
    y0, y1, x0, x1 = plan.crop
    cards = dict(product.header)
    for key, shift in (("CRPIX1", x0), ("CRPIX2", y0)):
        if key in cards:
            value, comment = cards[key]
            cards[key] = (float(value) - shift, comment)
    for key, size in (("IMAGEW", x1 - x0), ("IMAGEH", y1 - y0)):
        if key in cards:
            cards[key] = (size, cards[key][1])
    steps = [f"cropped to {x1 - x0}x{y1 - y0} at ({x0}, {y0}): pixels covered by >= "
             f"{plan.frames_share:.0%} of the frames"]
    if plan.background is not None:
        steps.append(f"sky gradient removed: polynomial of degree {plan.background.degree} fitted to "
                     f"{plan.background.boxes_used} of {plan.background.boxes_total} masked sky boxes "
                     f"(see {BACKGROUND})")
    if plan.balance is not None:
        b = plan.balance
        steps.append(f"colour calibrated: sky neutralised, white balance from {b.stars} stars; gains "
                     f"R {b.gains[0]:.4f} G {b.gains[1]:.4f} B {b.gains[2]:.4f}")
    built = provenance_cards(Provenance(kind="finished picture", inputs=(STACK,), input_label="from:",
                                        method="+".join(s for s, on in (("crop", True),
                                                                       ("background", plan.background is not None),
                                                                       ("colour", plan.balance is not None)) if on),
                                        method_card="FINSTEPS", method_comment="finishing steps", notes=tuple(steps)))
    cards.update(built.cards)
    cards["IMAGETYP"] = ("Finished", "cropped, gradient removed, colour calibrated")
    cards.update(plan.cards())
    return cards, product.history + built.history


def write_finished(product: StackProduct, plan: FinishPlan, folder: Path, *,
                   formats: tuple[str, ...] = ("fits", "jpg"), in_place: bool = False, name: str = FINAL_NAME,
                   ) -> tuple[list[Path], npt.NDArray[np.uint8]]:
    """Finish the stack (`apply_finish`; ``in_place``: its image becomes the finished picture) and write
    ``<name>.<suffix>`` per ``formats``, and ``background.fits`` when a sky model was removed. Returns the
    files written and the stretched picture at most `REPORT_SIDE` px on its longer side (for the report)."""
    image = apply_finish(product.image, plan, in_place=in_place)
    cards, history = finished_header(product, plan)
    finished = dataclasses.replace(product, image=image, header=cards, history=history, count=None)
    written: list[Path] = []
    picture8: npt.NDArray[np.uint8] | None = None
    small = downsample(image, max(1, math.ceil(max(image.shape[-2:]) / REPORT_SIDE)))
    params = stretch_parameters(small)
    for fmt in formats:
        path = folder / f"{name}{FORMAT_SUFFIXES[fmt]}"
        if fmt == "fits":
            write_fits(path, np.ascontiguousarray(image), product_header(finished))
        elif fmt == "xisf":
            write_xisf(path, image, cards, history, creator=str(cards["CREATOR"][0]))
        elif fmt == "tiff":
            picture16 = apply_stretch(image, params, bits=16)
            write_picture_tiff16(path, picture16.astype(np.uint16, copy=False), software=str(cards["CREATOR"][0]),
                                 description="astrod finished picture, auto-stretched, 16 bits")
            del picture16
        else:
            if picture8 is None:
                picture8 = apply_stretch(image, params).astype(np.uint8, copy=False)
            write_image(path, picture8)
        written.append(path)
    if plan.background is not None:
        written.append(write_background(plan, folder / (BACKGROUND if name == FINAL_NAME
                                                        else f"{name}-{BACKGROUND}")))
    return written, apply_stretch(small, params).astype(np.uint8, copy=False)


def finish_session(product: StackProduct, settings: FinishSettings, folder: Path, *, frames: int,
                   formats: tuple[str, ...], summary: Mapping[str, Any]) -> list[Path]:
    """A closed session's products: the stack (``stack.<suffix>`` per ``formats``, its header naming the
    finishing factors, and the frames table), the finished picture (`write_finished`, made in the stack's own
    pixels once they are written) and ``report.html`` (when ``settings.report``). Returns the files written."""
    try:
        plan = plan_finish(product, settings, frames=frames)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        # a picture the kernels cannot finish must not keep the session from closing: the stack is written
        log.error("finish_failed", folder=str(folder), error=str(err).splitlines()[0] if str(err) else repr(err))
        return write_session_outputs(product, folder, formats=formats, colour=settings.colour)
    product = dataclasses.replace(product, header={**product.header, **plan.cards()})
    written = write_session_outputs(product, folder, formats=formats, colour=settings.colour)
    final_formats = tuple(dict.fromkeys(("fits", *formats)))  # final.fits whatever the stack's formats
    finished, picture = write_finished(product, plan, folder, formats=final_formats, in_place=True)
    written += finished
    if settings.report:
        names = [p.name for p in written] + [FRAMES, SESSION]
        page = report_html(summary, product.rows, picture=picture, finishing=finishing_numbers(plan),
                           products=names)
        atomic_write_text(folder / REPORT, page)
        written.append(folder / REPORT)
    return written


def finishing_numbers(plan: FinishPlan) -> list[tuple[str, Any]]:
    """The report's lines on what finishing did."""
    y0, y1, x0, x1 = plan.crop
    out: list[tuple[str, Any]] = [("crop", f"{x1 - x0} × {y1 - y0} px at ({x0}, {y0}), covered by ≥ "
                                           f"{plan.frames_share:.0%} of the frames")]
    if plan.background is not None:
        bg = plan.background
        out.append(("sky gradient", f"polynomial of degree {bg.degree} from {bg.boxes_used} of {bg.boxes_total} "
                                    "sky boxes, removed"))
    if plan.balance is not None:
        b = plan.balance
        out.append(("colour gains (R, G, B)", ", ".join(f"{g:.3f}" for g in b.gains)))
        out.append(("white balance", f"median colour of {b.stars} stars" if b.stars else "none (too few stars)"))
        out.append(("sky before (R, G, B)", ", ".join(f"{v:.1f}" for v in b.background)))
    return out


def write_background(plan: FinishPlan, path: Path) -> Path:
    """The sky model removed, rendered binned so its longer side is at most 1024 px (it is smooth), with its
    binning and polynomial coefficients in the header (the model at full size is the polynomial)."""
    model = plan.background
    assert model is not None
    factor = max(1, math.ceil(max(model.shape) / _BACKGROUND_SIDE))
    rendered = render_background(model, factor=factor)
    header: dict[str, Card] = {"IMAGETYP": ("Background", "sky model removed from the finished picture"),
                               "BKGBIN": (factor, "binning of this image relative to the finished picture"),
                               **model.cards()}
    for p, coeffs in enumerate(model.coefficients):
        for k, c in enumerate(coeffs):
            header[f"BKC{p}_{k}"[:8]] = (c, f"plane {p} term {k} (x,y in [-1,1] over the picture)")
    write_fits(path, rendered[0] if model.planes == 1 else rendered, header)
    return path
