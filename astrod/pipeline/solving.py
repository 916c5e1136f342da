"""Solving requests and answers: the hints a frame's header gives a plate solver, and what a solver's WCS says
about the frame (centre, scale, rotation, field size), as frozen values.

Pure: headers and WCS cards in, values out. Running the solver is `astrod.service.solver`'s job; its files are
`astrod.io.solve_files`'.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from astropy.utils.exceptions import AstropyWarning

if TYPE_CHECKING:
    # imported where a WCS is made: astropy.wcs brings astropy.coordinates, 0.14 s of every command's start-up
    from astropy.wcs import WCS

from astrod.core.register import Model, fit_transform
from astrod.io.catalogue import CatalogueObject, objects_near
from astrod.io.fits import Header
from astrod.model import FrameMeta, Transform
from astrod.pipeline.outputs import StackProduct
from astrod.pipeline.sessions import is_pointing_name, pointing_name
from astrod.pipeline.state import SKY_COLUMNS

log = structlog.get_logger()

ARCSEC_PER_RADIAN = 206_264.806
# A header's nominal scale (focal length, pixel size) is trusted within this factor either way: reducers, Barlows
# and rounded focal lengths stay inside it, and a tight range keeps a hinted solve quick.
SCALE_TOLERANCE = 1.15
# Search radius around a header's RA/Dec, degrees: a mount's pointing model may be off by a degree or two.
HINT_RADIUS_DEG = 5.0

FOCAL_KEYS = ("FOCALLEN", "FOCAL", "FOCLEN")
PIXEL_KEYS = ("XPIXSZ", "PIXSIZE1", "PIXSIZE", "PIXSZ")

# Keywords of a celestial WCS (with SIP distortion): removed from a header before a new solution goes in.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
                      r"LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|WCSNAME|MJDREF|"
                      r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+|"
                      r"IMAGEW|IMAGEH|PLTSOLVD)$")


def is_wcs_key(keyword: str) -> bool:
    """Whether ``keyword`` belongs to a celestial WCS (the cards a new solution replaces)."""
    return _WCS_KEY.match(keyword.upper()) is not None


def without_wcs(header: Mapping[str, Any]) -> dict[str, Any]:
    """The header's cards without any WCS (keyword -> value; COMMENT/HISTORY left out)."""
    return {k: v for k, v in header.items() if k and k not in ("COMMENT", "HISTORY") and not is_wcs_key(k)}


@dataclass(frozen=True, slots=True)
class SolveHints:
    """What a solver may assume: a centre to search around (degrees, with a radius) and a pixel-scale range
    (arcsec/px). Each part is None when unknown; with neither the solve is blind."""

    ra: float | None = None
    dec: float | None = None
    radius_deg: float = HINT_RADIUS_DEG
    scale_low: float | None = None
    scale_high: float | None = None

    @property
    def has_position(self) -> bool:
        return self.ra is not None and self.dec is not None

    @property
    def has_scale(self) -> bool:
        return self.scale_low is not None and self.scale_high is not None

    def describe(self) -> str:
        parts = []
        if self.has_position:
            parts.append(f"within {self.radius_deg:g}° of {self.ra:.3f} {self.dec:+.3f}")
        if self.has_scale:
            parts.append(f"{self.scale_low:.3f}-{self.scale_high:.3f}\"/px")
        return ", ".join(parts) or "blind"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _first_number(header: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    return next((n for n in (_number(header.get(k)) for k in keys) if n is not None), None)


def nominal_scale_range(header: Mapping[str, Any], binning: tuple[int, int]) -> tuple[float, float] | None:
    """The pixel scale (arcsec/px) a header's FOCALLEN and XPIXSZ give, as a range; None when either is missing.

    Capture programs disagree whether XPIXSZ is the binned pixel (the SBIG/MaxIm convention, "after binning")
    or the sensor's: for a binned frame the range spans both, XPIXSZ and XPIXSZ × binning.
    """
    focal_mm = _first_number(header, FOCAL_KEYS)
    pixel_um = _first_number(header, PIXEL_KEYS)
    if focal_mm is None or pixel_um is None:
        return None
    scale = ARCSEC_PER_RADIAN * pixel_um * 1e-3 / focal_mm
    widest = scale * max(1, binning[0])
    return scale / SCALE_TOLERANCE, widest * SCALE_TOLERANCE


def solve_hints(meta: FrameMeta, header: Mapping[str, Any], *, use_wcs: bool = True,
                previous_scale: float | None = None) -> SolveHints:
    """The hints a frame gives: RA/Dec from its pointing keywords (OBJCTRA/OBJCTDEC, RA/DEC, as ``meta`` read
    them), else, when ``use_wcs``, from a WCS reference value (CRVAL1/2 of an RA---/DEC-- WCS); the pixel scale
    from FOCALLEN and XPIXSZ × binning, else from ``previous_scale`` (a previous solve of the same camera)."""
    ra, dec = meta.ra, meta.dec
    if (ra is None or dec is None) and use_wcs and str(header.get("CTYPE1", "")).upper().startswith("RA-"):
        ra, dec = _number(header.get("CRVAL1")), header.get("CRVAL2")
        dec = float(dec) if isinstance(dec, int | float) and not isinstance(dec, bool) else None
    if ra is None or dec is None or not -90.0 <= dec <= 90.0:
        ra = dec = None
    scale = nominal_scale_range(header, meta.binning)
    if scale is None and previous_scale is not None:
        scale = (previous_scale / SCALE_TOLERANCE, previous_scale * SCALE_TOLERANCE)
    return SolveHints(ra=None if ra is None else ra % 360.0, dec=dec,
                      scale_low=None if scale is None else scale[0], scale_high=None if scale is None else scale[1])


Card = tuple[str, Any, str]


@dataclass(frozen=True, slots=True)
class SolveResult:
    """A plate solution of one frame.

    ``ra, dec``: the sky position of the image centre (degrees, ICRS/J2000); ``scale_arcsec``: arcsec per pixel
    there; ``rotation_deg``: position angle of the image's up direction (+y, rows increasing) east of north,
    in [0, 360); ``mirrored``: the image is the sky's mirror (det CD > 0: east is to the right when north is up);
    ``width_deg, height_deg``: the field; ``index``: the index file that solved it; ``stars``: stars handed to
    the solver; ``seconds``: wall time of the solve; ``cards``: the WCS header cards (with SIP when fitted).
    """

    ra: float
    dec: float
    scale_arcsec: float
    rotation_deg: float
    mirrored: bool
    width_deg: float
    height_deg: float
    index: str
    stars: int
    seconds: float
    cards: tuple[Card, ...]

    def wcs(self) -> WCS:
        return wcs_from_cards(self.cards)

    def as_dict(self) -> dict[str, Any]:
        return {"ra": self.ra, "dec": self.dec, "scale_arcsec": self.scale_arcsec,
                "rotation_deg": self.rotation_deg, "mirrored": self.mirrored, "width_deg": self.width_deg,
                "height_deg": self.height_deg, "index": self.index, "stars": self.stars, "seconds": self.seconds}

    def record(self) -> dict[str, Any]:
        """The whole solution as plain JSON values (`from_record` reads it back equal): for the journal."""
        return {**self.as_dict(), "cards": [[key, value, comment] for key, value, comment in self.cards]}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SolveResult:
        """The solution `record` gave; raises KeyError, TypeError or ValueError for a record that is not one."""
        cards = tuple((str(key), value, str(comment)) for key, value, comment in data["cards"])
        return cls(ra=float(data["ra"]), dec=float(data["dec"]), scale_arcsec=float(data["scale_arcsec"]),
                   rotation_deg=float(data["rotation_deg"]), mirrored=bool(data["mirrored"]),
                   width_deg=float(data["width_deg"]), height_deg=float(data["height_deg"]),
                   index=str(data["index"]), stars=int(data["stars"]), seconds=float(data["seconds"]), cards=cards)


def wcs_from_cards(cards: Sequence[Card] | Header | Mapping[str, Any]) -> WCS:
    """An astropy WCS (with SIP when the cards carry it) from header cards (a header's other cards ignored)."""
    from astropy.wcs import WCS

    header = Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        if isinstance(cards, Header | Mapping):
            for key, value in cards.items():
                if key and is_wcs_key(key):
                    header[key] = value
        else:
            for key, value, comment in cards:
                header[key] = (value, comment)
        return WCS(header, naxis=2, relax=True)


def wcs_cards(header: Header) -> tuple[Card, ...]:
    """The WCS cards of a solver's answer, in its order (its HISTORY/COMMENT notes and file keywords left out)."""
    return tuple((card.keyword, card.value, card.comment) for card in header.cards if is_wcs_key(card.keyword))


def _position_angle(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Position angle (degrees east of north) of point 2 seen from point 1, all in degrees."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    y = math.sin(dra) * math.cos(d2)
    x = math.cos(d1) * math.sin(d2) - math.sin(d1) * math.cos(d2) * math.cos(dra)
    return math.degrees(math.atan2(y, x)) % 360.0


def describe_wcs(wcs: WCS, *, width: int, height: int) -> tuple[float, float, float, float, bool]:
    """(ra, dec, scale_arcsec, rotation_deg, mirrored) of an image of ``width`` × ``height`` under ``wcs``: the
    sky at the image centre, the pixel scale there (from the distances to the pixels one step right and one step
    up, SIP included) and the position angle of the up direction (+y)."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    sky = wcs.all_pix2world(np.array([[cx, cy], [cx + 1.0, cy], [cx, cy + 1.0]]), 0)
    (ra0, dec0), (ra_x, dec_x), (ra_y, dec_y) = (tuple(map(float, row)) for row in sky)
    step_x = _separation_arcsec(ra0, dec0, ra_x, dec_x)
    step_y = _separation_arcsec(ra0, dec0, ra_y, dec_y)
    up = _position_angle(ra0, dec0, ra_y, dec_y)
    right = _position_angle(ra0, dec0, ra_x, dec_x)
    # Seen on the sky with north up, east left: +x is 90° counter-clockwise (east) of +y in a mirrored image.
    mirrored = (right - up) % 360.0 < 180.0
    return ra0 % 360.0, dec0, math.sqrt(step_x * step_y), up, mirrored


def _separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    s = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(s)))) * 3600.0


def solve_result(header: Header, *, width: int, height: int, index: str, stars: int, seconds: float,
                 ) -> SolveResult:
    """The SolveResult a solver's WCS header describes for an image of ``width`` × ``height``."""
    cards = wcs_cards(header)
    ra, dec, scale, rotation, mirrored = describe_wcs(wcs_from_cards(cards), width=width, height=height)
    return SolveResult(ra=ra, dec=dec, scale_arcsec=scale, rotation_deg=rotation, mirrored=mirrored,
                       width_deg=width * scale / 3600.0, height_deg=height * scale / 3600.0, index=index,
                       stars=stars, seconds=seconds, cards=cards)


_SIP_COEFF = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


def binned_wcs_cards(cards: Sequence[Card], *, factor: int) -> tuple[Card, ...]:
    """The WCS cards of an image made by a ``factor`` × ``factor`` block mean of the solved one (edges cropped,
    as `astrod.core.stretch.downsample` makes the preview): the reference pixel moves to the block grid, CD (or
    CDELT) grows by ``factor``, each SIP coefficient of order p+q by factor^(p+q-1), IMAGEW/IMAGEH shrink."""
    if factor < 1:
        raise ValueError(f"binning factor must be at least 1, got {factor}")
    if factor == 1:
        return tuple(cards)
    out: list[Card] = []
    for key, value, comment in cards:
        sip = _SIP_COEFF.match(key)
        if key in ("CRPIX1", "CRPIX2"):
            value = (float(value) + (factor - 1) / 2.0) / factor
        elif re.match(r"^(CD\d_\d|CDELT\d)$", key):
            value = float(value) * factor
        elif sip is not None:
            value = float(value) * float(factor) ** (int(sip.group(2)) + int(sip.group(3)) - 1)
        elif key in ("IMAGEW", "IMAGEH"):
            value = int(value) // factor
        out.append((key, value, comment))
    return tuple(out)


def product_wcs_cards(result: SolveResult, *, frame_shape: tuple[int, int],
                      image_shape: tuple[int, ...]) -> dict[str, tuple[Any, str]] | None:
    """The WCS cards (key -> (value, comment)) of a product of a session whose reference frame (``frame_shape``,
    (height, width)) has the solution ``result``: the stack and final stack share the reference's pixel grid,
    the preview is a block mean of it. None for an image on another grid (cropped or resampled), whose WCS the
    reference's does not give."""
    fh, fw = frame_shape
    h, w = image_shape[-2:]
    factor = fw // w if w else 0
    if factor < 1 or fh // factor != h or fw // factor != w:
        return None
    cards = {key: (value, comment) for key, value, comment in binned_wcs_cards(result.cards, factor=factor)}
    cards["PLTSOLVD"] = (True, f"plate-solved by astrod (astrometry.net, {result.index})"[:47])
    return cards


def stack_with_wcs(product: StackProduct, result: SolveResult, *, frame_shape: tuple[int, int]) -> StackProduct:
    """The stack ``product`` with the WCS of its reference frame's solution among its header cards (a previous
    WCS replaced); unchanged when the stack is not on the reference's pixel grid."""
    cards = product_wcs_cards(result, frame_shape=frame_shape, image_shape=product.image.shape)
    if cards is None:
        return product
    header = {k: v for k, v in product.header.items() if not is_wcs_key(k)}
    return dataclasses.replace(product, header={**header, **cards})


def frame_hints(meta: FrameMeta, header: Mapping[str, Any], reference: SolveResult) -> SolveHints:
    """The hints for solving a frame of a session whose reference is solved: its header's (`solve_hints`), the
    reference's pixel scale when the header gives none, and when it gives no RA/Dec, the reference's centre
    within a few fields of it (a frame that failed star matching may point well away from the reference)."""
    hints = solve_hints(meta, header, previous_scale=reference.scale_arcsec)
    if hints.has_position:
        return hints
    field = math.hypot(reference.width_deg, reference.height_deg)
    return dataclasses.replace(hints, ra=reference.ra, dec=reference.dec, radius_deg=max(HINT_RADIUS_DEG, 3 * field))


def wcs_transform(frame: SolveResult, reference: SolveResult, *, frame_shape: tuple[int, int],
                  model: Model = "similarity", steps: int = 9) -> tuple[Transform, float]:
    """The transform from a frame's pixels onto its session reference's, through their two plate solutions:
    a ``steps`` × ``steps`` grid over the frame (``frame_shape``: height, width) to the sky by the frame's WCS,
    back to pixels by the reference's, fitted in ``model`` (`astrod.core.register.fit_transform`); with the RMS
    distance (px) the fit leaves (the two solutions' distortions). Raises ValueError when the grid does not
    come back (a frame far off the reference's sky)."""
    h, w = frame_shape
    xs, ys = np.meshgrid(np.linspace(0.0, w - 1.0, steps), np.linspace(0.0, h - 1.0, steps))
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        sky = frame.wcs().all_pix2world(grid, 0)
        back = np.asarray(reference.wcs().all_world2pix(sky, 0, quiet=True), dtype=np.float64)
    ok = np.all(np.isfinite(back), axis=1)
    if np.count_nonzero(ok) < 4:
        raise ValueError("the frame's field does not map onto the reference's pixels")
    return fit_transform(grid[ok], back[ok], model=model)


def frame_sky(transform: Transform, reference: SolveResult, *, frame_shape: tuple[int, int]
              ) -> tuple[float, float, float, float]:
    """(ra, dec, rotation_deg, scale_arcsec) of a frame registered onto a solved reference: its pixels carried by
    ``transform`` onto the reference's, then to the sky by the reference's WCS (see `describe_wcs`)."""
    return _frame_sky(transform, reference.wcs(), frame_shape=frame_shape)


def _frame_sky(transform: Transform, wcs: WCS, *, frame_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    h, w = frame_shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    points = transform.apply(np.array([[cx, cy], [cx + 1.0, cy], [cx, cy + 1.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        sky = wcs.all_pix2world(points, 0)
    (ra0, dec0), (ra_x, dec_x), (ra_y, dec_y) = (tuple(map(float, row)) for row in sky)
    scale = math.sqrt(_separation_arcsec(ra0, dec0, ra_x, dec_x) * _separation_arcsec(ra0, dec0, ra_y, dec_y))
    return ra0 % 360.0, dec0, _position_angle(ra0, dec0, ra_y, dec_y), scale



def rows_with_sky(rows: Sequence[Mapping[str, object]], reference: SolveResult, *,
                  frame_shape: tuple[int, int]) -> list[dict[str, object]]:
    """The frames table with each stacked frame's centre RA/Dec, rotation (° east of north) and scale ("/px)
    (`SKY_COLUMNS`), from its transform onto the reference (the table's dx, dy, rotation_deg and scale: a
    similarity; an affine fit's shear is left out) composed with the reference's solution."""
    assert SKY_COLUMNS == ("ra", "dec", "sky_rotation_deg", "scale_arcsec")
    out: list[dict[str, object]] = []
    wcs = reference.wcs()  # built once: a session may have hundreds of rows
    for row in rows:
        new = dict(row)
        values = [row.get(k) for k in ("dx", "dy", "rotation_deg", "scale")]
        if row.get("status") == "stacked" and all(isinstance(v, int | float) for v in values):
            dx, dy, rot, scale = (float(v) for v in values)  # type: ignore[arg-type]
            t = Transform.similarity(dx=dx, dy=dy, rotation_deg=rot, scale=scale)
            ra, dec, angle, arcsec = _frame_sky(t, wcs, frame_shape=frame_shape)
            new.update(ra=round(ra, 6), dec=round(dec, 6), sky_rotation_deg=round(angle, 3),
                       scale_arcsec=round(arcsec, 4))
        out.append(new)
    return out


def field_name(result: SolveResult, objects: Sequence[CatalogueObject]) -> str:
    """The name of a solved field: the catalogued object (``objects``, e.g. `astrod.io.catalogue.objects_near`
    its centre) nearest the image centre among those inside the image, or failing that its centre's coordinates
    ('RA 21h01m Dec +68°10'', as `astrod.pipeline.sessions.pointing_name` names a pointing)."""
    width = max(1, round(result.width_deg * 3600.0 / result.scale_arcsec))
    height = max(1, round(result.height_deg * 3600.0 / result.scale_arcsec))
    if objects:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            xy = np.asarray(result.wcs().all_world2pix(np.array([[o.ra, o.dec] for o in objects]), 0, quiet=True))
        inside = [(math.hypot(x - (width - 1) / 2.0, y - (height - 1) / 2.0), i)
                  for i, (x, y) in enumerate(xy) if 0.0 <= x <= width - 1 and 0.0 <= y <= height - 1]
        if inside:
            return objects[min(inside)[1]].name
    return pointing_name(result.ra, result.dec)


def field_objects(result: SolveResult) -> list[CatalogueObject]:
    """The catalogued objects of a solved field (OpenNGC, within its half-diagonal of the centre); none when the
    catalogue cannot be read (said in the log: the coordinates name the field, no object is drawn)."""
    radius = 0.5 * math.hypot(result.width_deg, result.height_deg)
    try:
        return objects_near(result.ra, result.dec, radius)
    except Exception as err:  # a damaged catalogue
        log.warning("catalogue_unreadable", reason=str(err).splitlines()[0])
        return []


def session_field_name(result: SolveResult, target: str) -> str | None:
    """The name of a session of lights without OBJECT (``target``: the name made from their pointing) from its
    reference's solution (`field_name` over `field_objects`); None for a session whose frames name their
    object."""
    return field_name(result, field_objects(result)) if is_pointing_name(target) else None


def solved_product(product: StackProduct, result: SolveResult, *, frame_shape: tuple[int, int],
                   name: str | None) -> tuple[StackProduct, dict[str, Any]]:
    """A closing session's stack with its reference frame's solution (``frame_shape``: that frame's height,
    width): the WCS among its cards (`stack_with_wcs`), the stacked frames' sky columns in its rows
    (`rows_with_sky`) and, for a session named from its field (``name``), that name as OBJECT; with what the
    session's summary gains (``name`` when named, ``wcs``). What the daemon and ``astrod reprocess`` do on close."""
    product = stack_with_wcs(product, result, frame_shape=frame_shape)
    product = dataclasses.replace(product, rows=rows_with_sky(product.rows, result, frame_shape=frame_shape))
    summary: dict[str, Any] = {}
    if name is not None:
        product = dataclasses.replace(product, header={**product.header,
                                                       "OBJECT": (name, "named from the plate-solved field")})
        summary["name"] = name
    summary["wcs"] = {"ra": result.ra, "dec": result.dec, "scale_arcsec": result.scale_arcsec,
                      "rotation_deg": result.rotation_deg, "index": result.index}
    return product, summary
