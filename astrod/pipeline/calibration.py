"""The one link between the pipeline and the master library: a calibrator for `LiveStack`.

Everything the pipeline knows about the library is in `library_calibrator`: it matches each frame to its
masters, calibrates it through :func:`astrod.library.calibration.calibrate_frame` and reports the masters
used (by file name) and what was missing, for the stack's provenance header.
"""

from __future__ import annotations

from collections.abc import Callable

from astrod.errors import FrameRejected
from astrod.io.frames import is_scratch
from astrod.library.calibration import calibrate_frame, used_masters
from astrod.library.masters import MasterLibrary
from astrod.library.match import COLOUR_NO_MASTERS
from astrod.model import Frame
from astrod.pipeline.live import Calibrated, Calibrator


def library_calibrator(library: MasterLibrary, *, require_complete: bool = False,
                       bad_pixels: bool = True, in_place: bool = False) -> Calibrator:
    """A calibrator using ``library``'s matching masters. Debayered colour frames (3 planes) pass uncalibrated,
    with a note saying why (`COLOUR_NO_MASTERS`).

    A frame lacking a required master is calibrated with the masters there are (the stack's history says
    what was missing), or rejected when ``require_complete``. Raises `FrameRejected` (an `AstrodError`) for a
    frame that cannot be calibrated; `LiveStack` turns that into a rejection with the reason.

    ``in_place`` calibrates a frame into its own pixel array when it is a writeable float32 one (the
    frame's pixels are then the calibrated ones): no second 100 MB array per frame. Only for a caller that
    reads each frame into a scratch array it does not use again, as a session worker does; the file on
    disk is never touched either way.
    """

    def calibrate(frame: Frame) -> Calibrated:
        data = frame.data
        if data.ndim == 3:  # a debayered colour picture: the library holds single-plane sensor masters only
            return Calibrated(frame=frame, notes=(COLOUR_NO_MASTERS,))
        out = data if in_place and is_scratch(data) else None
        result = calibrate_frame(library, frame, bad_pixels=bad_pixels, out=out)
        match = result.match
        if require_complete and match.missing:
            raise FrameRejected(f"missing masters: {'; '.join(match.missing)}")
        masters = tuple(choice.record.name for choice in used_masters(match, bad_pixels=bad_pixels))
        notes = tuple(f"missing master: {m}" for m in match.missing)
        return Calibrated(frame=Frame(meta=result.meta, data=result.data, path=frame.path), masters=masters,
                          notes=notes, recipe=result.recipe)

    return calibrate


def following_calibrator(open_library: Callable[[], MasterLibrary | None], *, in_place: bool = False) -> Calibrator:
    """A calibrator that follows the library as masters arrive: ``open_library()`` gives the library now (None
    before there is one: the frame is stacked uncalibrated, and the stack's history says so)."""
    cache: dict[int, Calibrator] = {}

    def calibrator_for(library: MasterLibrary) -> Calibrator:
        if id(library) not in cache:
            cache.clear()
            cache[id(library)] = library_calibrator(library, in_place=in_place)
        return cache[id(library)]

    def calibrate(frame: Frame) -> Frame | Calibrated:
        library = open_library()
        if library is None:
            return Calibrated(frame=frame, notes=("no master library yet",))
        return calibrator_for(library)(frame)

    return calibrate
