"""A seeded synthetic transit sequence with its truth, built on `astrod.demo.synth`: a target star whose flux
follows a trapezoidal transit, comparison-class stars of similar brightness, a faint field, a drifting
pointing, changing transparency (thin clouds) and airmass (extinction), through a `Sensor` (bias, dark, flat,
read and photon noise)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from astrod.demo.synth import Catalogue, Seed, Sensor, _rng, make_catalogue, render_stars
from astrod.model import Transform

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_TAG_TRANSIT = 61


@dataclass(frozen=True, eq=False)
class TransitSequence:
    """Raw frames (ADU) and their truth. ``catalogue`` is in reference (frame 0) pixels, fluxes in electrons
    per exposure out of transit and above the atmosphere; row ``target`` is the target. Per frame: ``model``
    (the target's flux factor: 1 - depth × the transit's shape), ``transparency`` (clouds × extinction, every
    star), ``airmass``, ``transform`` (frame → frame 0, the `synth` convention), ``start`` (DATE-OBS)."""

    frames: list[F32]
    sensor: Sensor
    catalogue: Catalogue
    target: int
    depth: float
    model: F64
    shape: F64
    transparency: F64
    airmass: F64
    transforms: list[Transform]
    starts: list[datetime]
    exposure: float
    temperature: float
    sky: float
    fwhm: float
    beta: float

    @property
    def target_xy(self) -> tuple[float, float]:
        """The target's 0-based position on frame 0."""
        return float(self.catalogue.x[self.target]), float(self.catalogue.y[self.target])

    def calibrate(self, raw: F32) -> F32:
        """``raw`` calibrated with the sensor's true (noise-free) bias, dark and flat: ADU of sky and stars."""
        s = self.sensor
        dark = s.dark_current(exposure=self.exposure, temperature=self.temperature) / np.float32(s.gain)
        return ((raw - s.bias_map - dark) / s.flat_field).astype(np.float32)

    def aperture_fraction(self, radius: float) -> float:
        """The share of a star's flux within ``radius`` px of its centre (the Moffat profile's)."""
        alpha = self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))
        return float(1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - self.beta))


def transit_shape(n: int, *, ingress: tuple[int, int], egress: tuple[int, int]) -> F64:
    """A trapezoid over ``n`` frames: 0 outside, rising linearly over ``ingress`` (first, last frame), 1 in
    between, falling over ``egress``."""
    i = np.arange(n, dtype=np.float64)
    up = np.clip((i - ingress[0]) / max(1, ingress[1] - ingress[0]), 0.0, 1.0)
    down = np.clip((egress[1] - i) / max(1, egress[1] - egress[0]), 0.0, 1.0)
    return np.minimum(up, down)


def make_transit_sequence(*, seed: Seed, n_frames: int = 60, width: int = 384, height: int = 384,
                          depth: float = 0.01, target_flux: float = 3.0e6, n_comparisons: int = 16,
                          n_field: int = 80, fwhm: float = 3.5, beta: float = 4.0, sky: float = 800.0,
                          gain: float = 10.0, read_noise: float = 5.0, drift_px: float = 0.4, jitter_px: float = 0.3,
                          airmass: tuple[float, float] = (1.8, 1.15), extinction: float = 0.25,
                          clouds: float = 0.1, exposure: float = 60.0, gap: float = 5.0,
                          start: datetime | None = None) -> TransitSequence:
    """A transit of ``depth`` across ``n_frames`` frames (ingress from 30 % to 37 % of the sequence, egress
    from 63 % to 70 %). The target sits near the centre with ``target_flux`` e⁻; ``n_comparisons`` stars of
    0.4–2.5 × its flux on a jittered grid; ``n_field`` faint stars. The pointing drifts by ``drift_px`` a frame
    (plus ``jitter_px`` rms); airmass runs linearly between ``airmass`` (``extinction`` mag per airmass); thin
    clouds take up to ``clouds`` of the light."""
    rng = _rng(seed, _TAG_TRANSIT)
    streams = rng.spawn(4)
    sensor = Sensor(width=width, height=height, seed=int(streams[0].integers(0, 2**31)), gain=gain,
                    read_noise=read_noise, vignetting=0.05, dust=0, hot_pixels=20)
    field = make_catalogue(width=width, height=height, n_stars=n_field, seed=int(streams[1].integers(0, 2**31)),
                           margin=0.0, flux_min=2e3, flux_max=6e4)
    g = streams[2]
    side = math.ceil(math.sqrt(n_comparisons + 1))
    cells = [(c, r) for r in range(side) for c in range(side)]
    margin = 0.15 * min(width, height)
    step_x, step_y = (width - 2 * margin) / max(1, side - 1), (height - 2 * margin) / max(1, side - 1)
    centre = side * side // 2
    cells = [cells[centre], *[c for k, c in enumerate(cells) if k != centre][:n_comparisons]]
    xy = np.array([(margin + c * step_x, margin + r * step_y) for c, r in cells], dtype=np.float64)
    xy[1:] += g.uniform(-0.25, 0.25, (len(cells) - 1, 2)) * np.array([step_x, step_y])
    bright = np.concatenate([[target_flux], target_flux * np.exp(g.uniform(math.log(0.4), math.log(2.5),
                                                                             len(cells) - 1))])
    catalogue = Catalogue(x=np.concatenate([xy[:, 0], field.x]), y=np.concatenate([xy[:, 1], field.y]),
                          flux=np.concatenate([bright, field.flux]))
    shape = transit_shape(n_frames, ingress=(round(0.30 * n_frames), round(0.37 * n_frames)),
                          egress=(round(0.63 * n_frames), round(0.70 * n_frames)))
    model = 1.0 - depth * shape
    x_mass = np.linspace(airmass[0], airmass[1], n_frames)
    transparency = 10.0 ** (-0.4 * extinction * x_mass) * (1.0 - clouds * g.uniform(0.0, 1.0, n_frames))
    t0 = start if start is not None else datetime(2024, 6, 17, 1, 0, 0, tzinfo=UTC)
    frames: list[F32] = []
    transforms: list[Transform] = []
    starts: list[datetime] = []
    for i in range(n_frames):
        shift = np.array([drift_px * i, 0.6 * drift_px * i]) + (g.normal(0.0, jitter_px, 2) if i else 0.0)
        transform = Transform.similarity(dx=-float(shift[0]), dy=-float(shift[1]))  # frame → frame 0
        flux = catalogue.flux * transparency[i]
        flux[0] *= model[i]
        scene, _ = render_stars(width=width, height=height, transform=transform, fwhm=fwhm, beta=beta, sky=sky,
                                supersample=2,
                                catalogue=Catalogue(x=catalogue.x, y=catalogue.y, flux=flux))
        frame_seed = np.random.SeedSequence([int(streams[3].integers(0, 2**31)), i])
        frames.append(sensor.light(scene, exposure=exposure, temperature=-10.0, seed=np.random.default_rng(frame_seed)))
        transforms.append(transform)
        starts.append(t0 + timedelta(seconds=i * (exposure + gap)))
    return TransitSequence(frames=frames, sensor=sensor, catalogue=catalogue, target=0, depth=depth, model=model,
                           shape=shape, transparency=transparency, airmass=x_mass, transforms=transforms,
                           starts=starts, exposure=exposure, temperature=-10.0, sky=sky, fwhm=fwhm, beta=beta)
