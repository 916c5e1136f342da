"""Where the annotation layer of a solved session's preview goes: the catalogued objects in the field and an RA/Dec
grid, in the preview's pixels (the preview is a block mean of the reference frame's grid, so its WCS is the
reference's solution binned). Drawing them is `astrod.core.annotate`'s job."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from astropy.utils.exceptions import AstropyWarning

if TYPE_CHECKING:
    from astropy.wcs import WCS

from astrod.core.annotate import GridLine, Marker
from astrod.io.catalogue import CatalogueObject
from astrod.pipeline.solving import SolveResult, binned_wcs_cards, wcs_from_cards

F64 = npt.NDArray[np.float64]

# Grid steps, degrees: declination in arcminutes and degrees, right ascension in minutes and hours of time.
_DEC_STEPS = (*(m / 60.0 for m in (1, 2, 5, 10, 15, 20, 30)), 1.0, 2.0, 5.0, 10.0, 15.0, 30.0)
_RA_STEPS = (*(s / 240.0 for s in (5, 10, 15, 30)), *(m / 4.0 for m in (1, 2, 5, 10, 15, 20, 30)), 15.0, 30.0, 45.0)


def preview_wcs(result: SolveResult, *, frame_shape: tuple[int, int], image_shape: tuple[int, ...]) -> WCS | None:
    """The WCS of a preview picture of ``image_shape`` ((H, W) or (H, W, 3)) made from the reference frame's grid
    (``frame_shape``), or None when it is not a block mean of it."""
    fh, fw = frame_shape
    h, w = image_shape[:2]
    factor = fw // w if w else 0
    if factor < 1 or fh // factor != h or fw // factor != w:
        return None
    return wcs_from_cards(binned_wcs_cards(result.cards, factor=factor))


def _step(span: float, steps: Sequence[float], lines: int = 4) -> float:
    return next((s for s in steps if span / s <= lines), steps[-1])


def _dec_label(dec: float) -> str:
    sign = "-" if dec < -1e-9 else "+"
    minutes = round(abs(dec) * 60.0)
    return f"{sign}{minutes // 60:02d}d{minutes % 60:02d}'"  # ASCII: the drawing fonts have no degree sign


def _ra_label(ra: float, step: float) -> str:
    seconds = round((ra % 360.0) * 240.0) % 86400
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h:02d}h{m:02d}m{s:02d}s" if step < 0.25 else f"{h:02d}h{m:02d}m"


def _sky_box(wcs: WCS, width: int, height: int) -> tuple[float, float, float, float, bool]:
    """(ra_low, ra_high, dec_low, dec_high, has_pole) covering the picture, RA unwrapped around its centre."""
    xs, ys = np.meshgrid(np.linspace(0, width - 1, 15), np.linspace(0, height - 1, 15))
    sky = wcs.all_pix2world(np.column_stack([xs.ravel(), ys.ravel()]), 0)
    ra0 = float(wcs.all_pix2world(np.array([[(width - 1) / 2, (height - 1) / 2]]), 0)[0, 0])
    ra = ra0 + (sky[:, 0] - ra0 + 180.0) % 360.0 - 180.0
    pole = wcs.all_world2pix(np.array([[0.0, 90.0], [0.0, -90.0]]), 0, quiet=True)
    has_pole = bool(np.any((pole[:, 0] >= 0) & (pole[:, 0] <= width - 1) & (pole[:, 1] >= 0)
                           & (pole[:, 1] <= height - 1)))
    return float(ra.min()), float(ra.max()), float(sky[:, 1].min()), float(sky[:, 1].max()), has_pole


def grid_lines(wcs: WCS, *, width: int, height: int, samples: int = 60) -> list[GridLine]:
    """Lines of constant declination and of constant right ascension across a picture, about four each way at
    round values, as polylines in its pixels."""
    ra_low, ra_high, dec_low, dec_high, has_pole = _sky_box(wcs, width, height)
    if has_pole:
        ra_low, ra_high = 0.0, 360.0
    dec_step = _step(dec_high - dec_low, _DEC_STEPS)
    mid_dec = math.radians(max(-89.0, min(89.0, (dec_low + dec_high) / 2)))
    ra_step = _step((ra_high - ra_low) * max(math.cos(mid_dec), 0.05), _RA_STEPS) if not has_pole else 30.0
    lines: list[GridLine] = []
    ras = np.linspace(ra_low, ra_high, samples)
    for dec in np.arange(math.ceil(dec_low / dec_step) * dec_step, dec_high + 1e-9, dec_step):
        points = wcs.all_world2pix(np.column_stack([ras, np.full(samples, dec)]), 0, quiet=True)
        lines.append(GridLine(points=np.asarray(points, dtype=np.float64), label=_dec_label(float(dec))))
    decs = np.linspace(max(-90.0, dec_low), min(90.0, dec_high), samples)
    for ra in np.arange(math.ceil(ra_low / ra_step) * ra_step, ra_high + 1e-9, ra_step):
        points = wcs.all_world2pix(np.column_stack([np.full(samples, ra), decs]), 0, quiet=True)
        lines.append(GridLine(points=np.asarray(points, dtype=np.float64), label=_ra_label(float(ra), ra_step)))
    return lines


def object_markers(wcs: WCS, objects: Sequence[CatalogueObject], *, width: int, height: int,
                   scale_arcsec: float, limit: int = 25) -> list[Marker]:
    """A marker per catalogued object inside the picture (``scale_arcsec``: its pixel scale), the ``limit``
    largest; an object of unknown size gets a small circle."""
    if not objects:
        return []
    xy = wcs.all_world2pix(np.array([[o.ra, o.dec] for o in objects]), 0, quiet=True)
    found = [(o, float(x), float(y)) for o, (x, y) in zip(objects, xy, strict=True)
             if 0 <= x <= width - 1 and 0 <= y <= height - 1]
    found.sort(key=lambda item: -(item[0].major_arcmin or 0.0))
    return [Marker(x=x, y=y, radius=max(6.0, (o.major_arcmin or 0.0) * 30.0 / scale_arcsec), label=o.name)
            for o, x, y in found[:limit]]


def annotation_layer(result: SolveResult, objects: Sequence[CatalogueObject], *, frame_shape: tuple[int, int],
                     image_shape: tuple[int, ...]) -> tuple[list[Marker], list[GridLine]] | None:
    """The markers and grid of a preview picture of ``image_shape`` ((H, W) or (H, W, 3)) of a session whose
    reference (``frame_shape``) has the solution ``result``; None when the picture is not on its grid."""
    wcs = preview_wcs(result, frame_shape=frame_shape, image_shape=image_shape)
    if wcs is None:
        return None
    h, w = image_shape[:2]
    factor = frame_shape[1] // w
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        markers = object_markers(wcs, objects, width=w, height=h, scale_arcsec=result.scale_arcsec * factor)
        return markers, grid_lines(wcs, width=w, height=h)
