"""Per-target colour composites: when one target has stacks in several filters in a night (the sessions under
``<output>/<night>/<target>/<filter>/``), the stacks are registered onto one another and combined into
``composite_<kind>.{fits,jpg,tif}`` in the target's folder (`astrod.core.composite`: RGB, LRGB, SHO, HOO by the
filters present). Rebuilt whenever another filter's session of the target closes.

Registration: stars detected on each stack, matched onto the reference stack's (L when there is one, else the
first channel present in `CHANNELS` order) with the session pipeline's star matcher (a similarity), each stack
warped onto the reference's grid (bilinear, flux-conserving is not needed: each plane is scaled afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.composite import CHANNELS, channel_of, compose, kinds_for
from astrod.core.register import build_reference, find_transform
from astrod.core.stars import detect_stars
from astrod.core.stretch import apply_stretch, downsample, stretch_parameters
from astrod.core.warp import warp
from astrod.errors import AstrodError, RegistrationError
from astrod.io.files import files_matching, subfolders
from astrod.io.fits import Header, read_fits, read_fits_header, write_fits
from astrod.io.images import write_picture_tiff16
from astrod.io.previews import write_preview as write_image
from astrod.io.provenance import Card, Provenance, provenance_cards, write_cards
from astrod.model import Transform
from astrod.pipeline.outputs import STACK
from astrod.pipeline.settings import FinishSettings

FloatArray = npt.NDArray[np.float32]
log = structlog.get_logger()


@dataclass(frozen=True, slots=True, eq=False)
class Registered:
    """A channel's stack on the reference grid, the transform that put it there and the match residual."""

    channel: str
    filter: str
    image: FloatArray
    transform: Transform
    residual_px: float


def target_stacks(target_folder: Path, names: Mapping[str, str] | None = None) -> dict[str, tuple[str, Path]]:
    """The stacks of one target's night by channel: channel -> (filter name, path of its stack.fits). The filter
    comes from the stack's FILTER card, else the folder's name; a second stack of one channel is ignored."""
    found: dict[str, tuple[str, Path]] = {}
    for folder in sorted(subfolders(target_folder)):
        stacks = files_matching(folder, STACK)
        if not stacks:
            continue
        header = read_fits_header(stacks[0])
        name = str(header.get("FILTER") or folder.name)
        channel = channel_of(name, dict(names or {}))
        if channel is not None and channel not in found and int(header.get("NAXIS", 0)) == 2:
            found[channel] = (name, stacks[0])
    return found


def register_stacks(images: Mapping[str, tuple[str, FloatArray]]) -> dict[str, Registered]:
    """Register mono stacks (channel -> (filter, image)) onto the reference channel's grid."""
    ref_channel = "L" if "L" in images else next(c for c in CHANNELS if c in images)
    ref_image = images[ref_channel][1]
    ref_stars = _stars(ref_image)
    reference = build_reference(ref_stars)
    out = {ref_channel: Registered(ref_channel, images[ref_channel][0], ref_image, Transform.identity(), 0.0)}
    for channel, (name, image) in images.items():
        if channel == ref_channel:
            continue
        found = find_transform(_stars(image), reference, model="similarity", min_matches=8)
        warped = warp(image, found.transform, shape=(int(ref_image.shape[0]), int(ref_image.shape[1])))
        out[channel] = Registered(channel, name, warped, found.transform, float(found.residual_px))
    return out


def _stars(image: FloatArray) -> npt.NDArray[np.float64]:
    filled = np.nan_to_num(image, nan=float(np.nanmedian(image)))
    return np.asarray(detect_stars(filled, max_stars=300).xy)


def rebuild_composites(target_folder: Path, *, kinds: tuple[str, ...], names: Mapping[str, str] | None = None,
                       formats: tuple[str, ...] = ("fits", "jpg")) -> list[Path]:
    """Build every composite the target's stacks allow (among ``kinds``) and write it in ``formats`` (fits,
    tiff, png, jpg) as ``composite_<kind>.<suffix>``; returns the files written. A channel whose stack cannot
    be registered is left out (logged)."""
    stacks = target_stacks(target_folder, names)
    wanted = kinds_for(set(stacks), kinds)
    if not wanted:
        return []
    images = {c: (name, read_fits(path)[0]) for c, (name, path) in stacks.items()}
    try:
        registered = register_stacks(images)
    except RegistrationError as err:
        raise AstrodError(f"{target_folder}: composites: stacks could not be registered: {err}") from err
    planes = {c: r.image for c, r in registered.items()}
    written: list[Path] = []
    for kind in wanted:
        cube = compose(kind, planes)
        written += _write(target_folder, kind, cube, registered, formats)
        log.info("composite_written", target=str(target_folder), kind=kind,
                 channels=",".join(c for c in registered))
    return written


def _write(folder: Path, kind: str, cube: FloatArray, registered: Mapping[str, Registered],
           formats: tuple[str, ...]) -> list[Path]:
    notes = tuple(f"{r.channel} from {r.filter}: dx {r.transform.dx:.2f} dy {r.transform.dy:.2f} px, rotation "
                  f"{r.transform.rotation_deg:.3f} deg, residual {r.residual_px:.3f} px" for r in registered.values())
    built = provenance_cards(Provenance(kind="composite", inputs=tuple(f"{r.filter}/{STACK}"
                                                                      for r in registered.values()),
                                        input_label="from:", method=kind.upper(), method_card="COMPOSIT",
                                        method_comment="composite kind", notes=notes))
    cards: dict[str, Card] = {**built.cards, "PLANES": ("R,G,B", "colour planes, in order")}
    written: list[Path] = []
    small = downsample(cube, max(1, math.ceil(max(cube.shape[-2:]) / 2048)))
    params = stretch_parameters(small)
    for fmt in formats:
        path = folder / f"composite_{kind}.{'tif' if fmt == 'tiff' else fmt}"
        if fmt == "fits":
            write_fits(path, cube, write_cards(Header(), cards, built.history))
        elif fmt == "tiff":
            write_picture_tiff16(path, apply_stretch(cube, params, bits=16).astype(np.uint16, copy=False),
                                 software=str(cards["CREATOR"][0]), description=f"astrod composite {kind}")
        elif fmt in ("jpg", "png"):
            write_image(path, apply_stretch(cube, params).astype(np.uint8, copy=False))
        else:
            continue
        written.append(path)
    return written


def update_composites(target_folder: Path, settings: FinishSettings, *,
                      formats: tuple[str, ...] = ("fits", "jpg")) -> list[Path]:
    """After a session of the target closed: rebuild its composites (``settings.composite_kinds``; FITS and the
    picture formats among ``formats``). A failure is logged, never raised: the session is closed either way."""
    if not settings.composite_kinds:
        return []
    chosen = tuple(dict.fromkeys(f for f in ("fits", *formats) if f in ("fits", "tiff", "png", "jpg")))
    try:
        return rebuild_composites(target_folder, kinds=settings.composite_kinds, names=settings.composite_names,
                                  formats=chosen)
    except (AstrodError, ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        log.error("composite_failed", target=str(target_folder), error=str(err).splitlines()[0] if str(err) else
                  repr(err))
        return []
