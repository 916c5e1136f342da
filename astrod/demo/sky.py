"""Synthetic frames of the real sky: the Tycho-2 stars of the installed astrometry.net index files, projected
through a known TAN WCS and rendered with `astrod.demo.synth.render_stars`. A plate solve of such a frame must
give back the WCS it was made with (the tests of the solver and `bench/bench_solve.py` use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from astrod.demo.synth import Catalogue, render_stars
from astrod.io.fits import Header
from astrod.pipeline.solving import wcs_from_cards
from astrod.service.solver import SolverSettings, catalogue_stars


@dataclass(frozen=True, slots=True, eq=False)
class SkyFrame:
    """A rendered frame (float32 ADU, (height, width)), the WCS it was made with and how many stars it shows."""

    data: npt.NDArray[np.float32]
    header: Header
    stars: int


def tan_header(*, ra: float, dec: float, scale_arcsec: float, rotation_deg: float, width: int, height: int,
               mirrored: bool = False) -> Header:
    """A TAN WCS centred on the image whose up (+y) points ``rotation_deg`` east of north at ``scale_arcsec``."""
    s = scale_arcsec / 3600.0
    t = math.radians(rotation_deg)
    up = (math.sin(t), math.cos(t))  # (east, north)
    right = (math.cos(t), -math.sin(t)) if mirrored else (-math.cos(t), math.sin(t))
    h = Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (width + 1) / 2.0, (height + 1) / 2.0
    h["CD1_1"], h["CD1_2"] = s * right[0], s * up[0]
    h["CD2_1"], h["CD2_2"] = s * right[1], s * up[1]
    return h


def catalogue_frame(header: Header, *, width: int, height: int, seed: int, fwhm: float = 3.0,
                    sky: float = 500.0, read_noise: float = 5.0, zero_point_mag: float = 20.0,
                    settings: SolverSettings | None = None) -> SkyFrame:
    """The sky ``header`` (a celestial WCS) sees on a ``width`` × ``height`` sensor: the index files' stars
    (magnitude m gives 10^(-0.4 (m - ``zero_point_mag``)) electrons), Moffat PSFs of ``fwhm`` px, a flat ``sky``
    and Gaussian photon and read noise, seeded."""
    wcs = wcs_from_cards(header)
    centre = wcs.all_pix2world(np.array([[(width - 1) / 2.0, (height - 1) / 2.0]]), 0)[0]
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    radius = 0.5 * math.hypot(width, height) * scale * 1.05
    stars = catalogue_stars(float(centre[0]), float(centre[1]), radius, settings=settings or SolverSettings())
    xy = wcs.all_world2pix(np.column_stack([stars.ra, stars.dec]), 0) if len(stars) else np.empty((0, 2))
    inside = (xy[:, 0] > -5) & (xy[:, 0] < width + 5) & (xy[:, 1] > -5) & (xy[:, 1] < height + 5)
    mag = np.nan_to_num(stars.mag[inside], nan=12.0)
    flux = 10.0 ** (-0.4 * (mag - zero_point_mag))
    scene, truth = render_stars(width=width, height=height, catalogue=Catalogue(xy[inside, 0], xy[inside, 1], flux),
                                fwhm=fwhm, sky=sky, supersample=3)
    rng = np.random.default_rng(seed)
    noisy = scene + rng.standard_normal(scene.shape, dtype=np.float32) * np.sqrt(scene + read_noise**2)
    return SkyFrame(data=np.asarray(noisy, dtype=np.float32), header=header, stars=int(truth.x.size))
