"""Projects across nights: per target and filter, every closed session's stack (``<output>/<night>/<target>/
<filter>/stack.fits``) combined into one deeper stack under ``<output>/projects/<target>/<filter>/``, with its
finished picture, rebuilt when a session of that target and filter closes (`astrod project list|rebuild`).

How: the nights' stacks are registered onto the first night's grid (star matching, as composites do), their skies
moved onto the first's (one additive offset per stack, from the luminance), weighted by their inverse noise variance
(noise measured on each stack: a stack from twice the exposure weighs about twice as much, so the result's noise is
that of the total exposure), and integrated with `astrod.core.integrate.integrate_bands`: κσ rejection when there
are at least three nights, a plain weighted mean otherwise. The provenance lists every night with its exposure and
weight; EXPTOTAL and NCOMBINE (frames) are the sums.

Memory: every night's registered stack is held while the project is integrated (104 MB per night at 26 MP mono,
312 MB colour); a project of many nights of a large sensor wants the nights read band by band instead (not done).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from astrod.core.integrate import integrate_bands
from astrod.core.register import build_reference, find_transform
from astrod.core.stack import Rejection
from astrod.core.stars import detect_stars, estimate_background
from astrod.core.warp import warp
from astrod.errors import AstrodError, RegistrationError
from astrod.io.files import ensure_folder, files_matching, subfolders
from astrod.io.fits import read_fits, read_fits_header
from astrod.io.provenance import Card, Provenance, provenance_cards
from astrod.pipeline.finishing import finish_session
from astrod.pipeline.outputs import STACK, StackProduct
from astrod.pipeline.settings import FinishSettings

FloatArray = npt.NDArray[np.float32]
PROJECTS = "projects"
log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class NightStack:
    """One night's stack of a project: its night (folder name), file, exposure (s) and frames."""

    night: str
    path: Path
    exposure: float
    frames: int


def project_stacks(output: Path, target: str, filter_folder: str) -> list[NightStack]:
    """Every night's stack of ``target`` (its folder name) and filter (folder name), oldest night first."""
    found = []
    for night in sorted(subfolders(output)):
        if night.name == PROJECTS:
            continue
        stacks = files_matching(night / target / filter_folder, STACK) if (night / target / filter_folder).is_dir() \
            else []
        if stacks:
            header = read_fits_header(stacks[0])
            found.append(NightStack(night=night.name, path=stacks[0], exposure=float(header.get("EXPTOTAL", 0.0)),
                                    frames=int(header.get("NCOMBINE", 0))))
    return found


def list_projects(output: Path) -> dict[tuple[str, str], list[NightStack]]:
    """Every (target, filter) with its nights' stacks, for `astrod project list`."""
    keys = {(t.name, f.name) for night in subfolders(output) if night.name != PROJECTS
            for t in subfolders(night) for f in subfolders(t)}
    return {k: s for k in sorted(keys) if (s := project_stacks(output, *k))}


def _luminance(image: FloatArray) -> FloatArray:
    lum = image if image.ndim == 2 else np.asarray(np.nanmean(image, axis=0), dtype=np.float32)
    return np.nan_to_num(lum, nan=float(np.nanmedian(lum)))


def combine_nights(nights: list[NightStack]) -> tuple[StackProduct, list[float]]:
    """The project stack of ``nights`` (registered, sky-matched, inverse-variance weighted, integrated) and the
    weights used (relative to the first night's)."""
    images = [read_fits(n.path)[0] for n in nights]
    ref = images[0]
    shape = tuple(int(s) for s in ref.shape)
    ref_lum = _luminance(ref)
    reference = build_reference(detect_stars(ref_lum, max_stars=300))
    registered, norms, weights = [ref], [], []
    bg0 = estimate_background(ref_lum)
    for i, image in enumerate(images):
        if i:
            try:
                found = find_transform(detect_stars(_luminance(image), max_stars=300), reference, min_matches=8)
            except RegistrationError as err:
                raise AstrodError(f"{nights[i].path}: cannot be registered onto {nights[0].path}: {err}") from err
            registered.append(warp(image, found.transform, shape=(shape[-2], shape[-1])))
        bg = estimate_background(_luminance(registered[i]))
        norms.append((bg0.level - bg.level, 1.0))
        weights.append((bg0.noise / bg.noise) ** 2)
    del images

    def read_band(row0: int, row1: int) -> FloatArray:
        return np.stack([r[..., row0:row1, :] for r in registered]).astype(np.float32)

    method: Rejection = "sigma" if len(nights) >= 3 else "none"
    result = integrate_bands(read_band, len(nights), shape, method=method, weights=weights, norms=norms)
    header, history = _project_cards(nights, weights, method)
    return StackProduct(image=result.image, header=header, rows=[], history=history, count=result.count), weights


def _project_cards(nights: list[NightStack], weights: list[float],
                   method: str) -> tuple[dict[str, Card], tuple[str, ...]]:
    ref = read_fits_header(nights[0].path)
    notes = tuple(f"night {n.night}: {n.frames} frames, {n.exposure:g} s, weight {w:.3f}"
                  for n, w in zip(nights, weights, strict=True))
    built = provenance_cards(Provenance(
        kind="project stack", inputs=tuple(f"{n.night}/{STACK}" for n in nights), input_label="night:",
        method=method, method_card="STACKMTH", method_comment="nights combined: sigma (3+ nights) or mean",
        ncombine=sum(n.frames for n in nights), ncombine_comment="frames in all nights",
        parameters={"NNIGHTS": (len(nights), "nights combined"),
                    "WEIGHTNG": ("inverse noise variance", "night weights")}, notes=notes))
    cards: dict[str, Card] = dict(built.cards)
    total = sum(n.exposure for n in nights)
    cards["EXPTOTAL"] = (round(total, 3), "total exposure of all nights, s")
    cards["EXPTIME"] = (round(total, 3), "total exposure of all nights, s")
    for key in ("OBJECT", "FILTER", "INSTRUME", "PLANES"):
        if key in ref:
            cards[key] = (ref[key], ref.comments[key])
    cards["DATE-OBS"] = (str(ref.get("DATE-OBS", "")), "start of the first night's first frame")
    return cards, built.history


def rebuild_project(output: Path, target: str, filter_folder: str, settings: FinishSettings, *,
                    formats: tuple[str, ...] = ("fits", "jpg")) -> list[Path]:
    """Rebuild one project (when it has at least two nights): its stack and finished picture under
    ``<output>/projects/<target>/<filter>/``; returns the files written."""
    nights = project_stacks(output, target, filter_folder)
    if len(nights) < 2:
        return []
    product, _ = combine_nights(nights)
    folder = ensure_folder(output / PROJECTS / target / filter_folder)
    summary = {"session": f"project {target}/{filter_folder}", "key": {"target": target, "filter": filter_folder},
               "stacked": int(product.header["NCOMBINE"][0]), "rejected": 0,
               "total_exposure_s": float(product.header["EXPTOTAL"][0]), "rejections": {}}
    return finish_session(product, dataclasses.replace(settings, report=False), folder, frames=len(nights),
                          formats=formats, summary=summary)



def update_project(session_output: Path, settings: FinishSettings, *,
                   formats: tuple[str, ...] = ("fits", "jpg")) -> list[Path]:
    """After a session closed (its folder ``<output>/<night>/<target>/<filter>``): rebuild its target's project
    in that filter. A failure is logged, never raised: the session is closed either way."""
    filter_folder, target, output = session_output.name, session_output.parent.name, session_output.parents[2]
    try:
        return rebuild_project(output, target, filter_folder, settings, formats=formats)
    except (AstrodError, ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        log.error("project_failed", target=target, filter=filter_folder,
                  error=str(err).splitlines()[0] if str(err) else repr(err))
        return []
