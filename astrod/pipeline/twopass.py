"""Two-pass stacking for `astrod stack`: every frame measured and registered first, integrated afterwards.

The live path warps each frame as it arrives, adds it to the running stack and keeps the warped frame in a
disk cache for the final full-rejection re-integration (1.25 GB of writes for 12 frames of 26 MP, plus the
live stack's state, 416 MB). A one-shot stack has all its frames on disk already, and needs neither: pass one
(`LiveStack.process`) keeps of each stacked frame only its registration, normalisation and weight
(`DeferredFrame`); pass two (`DeferredFrames.integrate`) integrates the stack a band of rows at a time, and
for each band reads, calibrates and warps every frame again, keeping only that band's rows of it.

Why re-read rather than cache: on the 2-core VM this project measures on, writing the cache ran at 80–220 MB/s
(fresh page-cache pages are slow to come by there), 6–10 s of the command; reading a 26 MP frame back from the
page cache and calibrating it costs ~35 ms, paid once per band (4 bands for 12 frames in the default 384 MB).

The pixels integrated are those the cache would have held, bit for bit: the same calibration into the same
kind of scratch buffer and the same warp, in the same 128-row sub-bands (`BAND_ROWS`). After a reference
re-pick the frames' transforms are composed onto the new reference (`DeferredFrames.regrid`): each frame is
interpolated once, where the cache re-warps its frames a second time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.core.calibrate import CalibrationRecipe, apply_rows
from astrod.core.debayer import debayer
from astrod.core.stack import Rejection, StackResult, integrate_bands
from astrod.core.warp import Interpolation, warp_rows
from astrod.model import Transform

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DeferredFrame:
    """A frame stacked in pass one: where its pixels are, how they map onto the reference grid, and its
    additive normalisation ``value * scale + offset`` and weight. ``rows``: its rows can be
    calibrated again by themselves (a single-plane frame, with the ``recipe`` it was calibrated by, or
    uncalibrated; ``read_rows`` reads a file that cannot be read by rows whole);
    ``pattern``: its CFA pattern when it is demosaiced; ``shape``: its own (H, W)."""

    path: Path
    transform: Transform
    offset: float
    scale: float
    weight: float
    rows: bool = False
    recipe: CalibrationRecipe | None = None
    pattern: str | None = None
    shape: tuple[int, int] = (0, 0)


class DeferredFrames:
    """The frames of a two-pass stack. ``pixels_of(path)`` gives a frame's calibrated pixels on its own grid
    ((H, W), or (3, H, W) for a demosaiced CFA frame) again, exactly as pass one had them; it may return the
    same reused buffer each time (the pixels are done with before it is called again)."""

    def __init__(self, pixels_of: Callable[[Path], FloatArray], *, sub_band_rows: int,
                 read_rows: Callable[[Path, int, int, FloatArray], FloatArray] | None = None) -> None:
        if sub_band_rows < 1:
            raise ValueError(f"sub_band_rows must be positive, got {sub_band_rows}")
        self._pixels_of = pixels_of
        self._read_rows = read_rows
        self._sub = sub_band_rows
        self.frames: list[DeferredFrame] = []

    def add(self, frame: DeferredFrame) -> None:
        self.frames.append(frame)

    def regrid(self, to_new: Transform, *, norm: tuple[float, float], weight_scale: float) -> None:
        """Move every frame onto a new reference grid: ``to_new`` maps the old grid onto the new one, whose
        normalisation composes as ``(v * scale + offset) * k + c`` with ``norm = (c, k)``."""
        c, k = norm
        self.frames = [replace(f, transform=f.transform.compose(to_new), offset=f.offset * k + c,
                               scale=f.scale * k, weight=f.weight * weight_scale) for f in self.frames]

    def band_rows(self, stack_shape: tuple[int, ...], memory_bytes: int) -> int:
        """Rows of one band of every frame in ``memory_bytes``: a whole number of sub-bands, at least one."""
        planes = 1 if len(stack_shape) == 2 else stack_shape[0]
        row_bytes = max(1, len(self.frames)) * planes * stack_shape[-1] * 4
        rows = max(1, memory_bytes // row_bytes) // self._sub * self._sub
        return min(stack_shape[-2], max(self._sub, rows))

    def integrate(self, *, stack_shape: tuple[int, ...], interpolation: Interpolation, method: Rejection,
                  kappa: float, weighted: bool, memory_bytes: int) -> StackResult:
        """The full-rejection integration of the frames (``method``, κ both sides) onto a reference grid of
        ``stack_shape``, in bands of `band_rows` rows."""
        if not self.frames:
            raise ValueError("no frame to integrate")
        frames = self.frames
        rows = self.band_rows(stack_shape, memory_bytes)
        grid = (int(stack_shape[-2]), int(stack_shape[-1]))
        lead = tuple(stack_shape[:-2])
        row_size = len(frames) * math.prod(lead) * grid[1]  # one row of every frame, float32 samples
        buffer = np.empty(row_size * rows, dtype=np.float32)
        scratch: list[FloatArray] = []  # the frame rows read, grown to the most asked for and reused

        def read_band(row0: int, row1: int) -> FloatArray:
            band = buffer[: row_size * (row1 - row0)].reshape(len(frames), *lead, row1 - row0, grid[1])
            for i, frame in enumerate(frames):
                if frame.rows and self._read_rows is not None:
                    _warp_band_from_rows(frame, self._read_rows, grid, row0, band[i], interpolation, scratch)
                else:
                    _warp_band(self._pixels_of(frame.path), frame.transform, grid, row0, band[i], self._sub,
                               interpolation)
            return band

        return integrate_bands(read_band, len(frames), stack_shape, method=method, kappa_low=kappa,
                               kappa_high=kappa, weights=[f.weight for f in frames] if weighted else None,
                               norms=[(f.offset, f.scale) for f in frames], memory_cap_bytes=row_size * 4 * rows)


def _warp_band(pixels: FloatArray, transform: Transform, grid: tuple[int, int], row0: int, out: FloatArray,
               sub: int, interpolation: Interpolation) -> None:
    """Rows ``row0 ..`` of the frame warped onto ``grid`` into ``out``, ``sub`` rows at a time as the live
    path warps them (``row0`` is a multiple of ``sub``)."""
    rows = out.shape[-2]
    for first in range(0, rows, sub):
        warp_rows(pixels, transform, shape=grid, row0=row0 + first, out=out[..., first:min(rows, first + sub), :],
                  interpolation=interpolation)


# rows beyond a band's source rows that the interpolation kernel reaches, plus one for rounding
_KERNEL_REACH = {"linear": 2, "cubic": 3, "lanczos": 5}
# rows more to read so the rows used are exact: bad pixels take neighbours 2 rows away, demosaicing 2 rows
_CALIBRATION_REACH = 4


def source_rows(transform: Transform, grid: tuple[int, int], row0: int, row1: int, height: int,
                interpolation: Interpolation) -> tuple[int, int]:
    """The rows of a frame of ``height`` rows that rows ``row0 .. row1`` of its warp onto ``grid`` depend on,
    with the margins calibration and demosaicing need; an even first row (the CFA phase); empty (a, a) when
    the band does not see the frame."""
    corners = np.array([[-0.5, row0 - 0.5], [grid[1] - 0.5, row0 - 0.5], [-0.5, row1 - 0.5],
                        [grid[1] - 0.5, row1 - 0.5]])
    ys = transform.inverse().apply(corners)[:, 1]
    reach = _KERNEL_REACH[interpolation] + _CALIBRATION_REACH
    first = max(0, math.floor(float(ys.min())) - reach)
    stop = min(height, math.ceil(float(ys.max())) + reach + 1)
    first -= first % 2
    return (first, stop) if stop > first else (0, 0)


def _warp_band_from_rows(frame: DeferredFrame, read_rows: Callable[[Path, int, int, FloatArray], FloatArray],
                         grid: tuple[int, int], row0: int, out: FloatArray, interpolation: Interpolation,
                         scratch: list[FloatArray]) -> None:
    """Rows ``row0 ..`` of the frame warped onto ``grid`` into ``out``, from only the rows of the frame they
    need, read, calibrated and demosaiced again. The same values as the whole frame's warp up to OpenCV's
    rounding of the shifted map (its coordinates are fixed-point, 1/32 px)."""
    first, stop = source_rows(frame.transform, grid, row0, row0 + out.shape[-2], frame.shape[0], interpolation)
    if stop <= first:
        out.fill(np.nan)
        return
    size = (stop - first) * frame.shape[1]
    if not scratch or scratch[0].size < size:
        scratch[:] = [np.empty(size, dtype=np.float32)]
    data = read_rows(frame.path, first, stop, scratch[0][:size].reshape(stop - first, frame.shape[1]))
    if frame.recipe is not None:
        data = apply_rows(frame.recipe, data, first_row=first, out=data)
    pixels = debayer(data, pattern=frame.pattern) if frame.pattern is not None else data
    # the slice's row 0 is the frame's row ``first``: frame → slice is a shift down by ``first``
    shifted = Transform.from_array(frame.transform.as_array() @ np.array([[1.0, 0.0, 0.0], [0.0, 1.0, first],
                                                                          [0.0, 0.0, 1.0]]))
    warp_rows(pixels, shifted, shape=grid, row0=row0, out=out, interpolation=interpolation)

