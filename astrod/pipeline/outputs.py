"""A session's files under ``<output>/<night>/<target>/<filter>/``: the rolling preview and the final products."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from astrod.io.fits import write_fits
from astrod.io.previews import write_preview as write_image
from astrod.pipeline.live import StackProduct, write_outputs

PREVIEW_JPEG = "preview.jpg"
PREVIEW_FITS = "preview.fits"
STACK = "stack.fits"
FRAMES = "frames.csv"
SESSION = "session.json"


def write_preview(folder: Path, *, linear: npt.NDArray[np.float32], stretched: npt.NDArray[np.uint8]) -> None:
    """The auto-stretched JPEG people look at and the linear FITS they can process further (both atomic; the
    FITS first, so that whoever sees a new JPEG finds its FITS beside it)."""
    write_fits(folder / PREVIEW_FITS, np.asarray(linear, dtype=np.float32),
               {"IMAGETYP": ("Preview", "live stack preview, may be downsampled")})
    write_image(folder / PREVIEW_JPEG, stretched)


def write_session_outputs(product: StackProduct, folder: Path) -> None:
    """The final stack (FITS float32 with provenance) and the frames table."""
    write_outputs(product, stack_path=folder / STACK, table_path=folder / FRAMES)
