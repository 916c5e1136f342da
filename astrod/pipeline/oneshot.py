"""One-shot stacking of files through the live pipeline (``astrod stack``): read, process, finalize."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from astrod.errors import AstrodError, FrameReadError
from astrod.io.files import file_version, scratch_folder
from astrod.io.frames import is_scratch, read_frame, read_frame_rows
from astrod.io.headers import PathRule
from astrod.library.progress import NoProgress, Progress
from astrod.model import Frame
from astrod.pipeline.live import Calibrator, FrameResult, LiveStack, PipelineSettings, StackProduct
from astrod.pipeline.settings import FrameObserver

FloatArray = npt.NDArray[np.float32]


def order_frames(paths: Sequence[Path], reference: Path | None) -> list[Path]:
    """``paths`` without duplicates, the ``reference`` first (added when it is not among them)."""
    seen: set[Path] = set()
    ordered: list[Path] = []
    for p in ([reference] if reference is not None else []) + list(paths):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            ordered.append(p)
    return ordered


class _ReadAgain:
    """Pass two of a two-pass stack: frames read again, whole or by rows, each refused if its file changed
    since pass one read it (``versions``)."""

    def __init__(self, *, rename: Mapping[str, str] | None, rules: tuple[PathRule, ...]) -> None:
        self.versions: dict[Path, tuple[int, int]] = {}
        self._rename, self._rules = rename, rules
        self._buffer: FloatArray | None = None  # the one array whole frames are read into

    def _check(self, path: Path) -> None:
        if file_version(path) != self.versions.get(path):
            raise AstrodError(f"{path}: changed or replaced while it was being stacked")

    def frame(self, path: Path) -> Frame:
        self._check(path)
        frame = read_frame(path, rename=self._rename, rules=self._rules, out=self._buffer)
        if self._buffer is None and is_scratch(frame.data):
            self._buffer = frame.data
        return frame

    def rows(self, path: Path, row0: int, row1: int, out: FloatArray) -> FloatArray:
        self._check(path)
        try:
            return read_frame_rows(path, row0, row1, out=out)
        except FrameReadError:
            # not a frame that can be read by rows (compressed FITS, raw, picture): read whole, keep the rows
            whole = self.frame(path).data
            if whole.ndim != 2:
                raise
            out[...] = whole[row0:row1]
            return out


def stack_files(paths: Sequence[Path], settings: PipelineSettings, *, calibrator: Calibrator | None = None,
                reference: Path | None = None, cache_dir: Path | None = None,
                rename: Mapping[str, str] | None = None, rules: Iterable[PathRule] = (),
                progress: Progress | None = None, on_result: Callable[[FrameResult], None] | None = None,
                two_pass: bool = True, observer: FrameObserver | None = None) -> StackProduct:
    """Stack light frames, the ``reference`` (if given) first, the others in the order given.

    Unreadable files and calibration frames are rejected with their reason in the frames table. With
    ``settings.final_rejection`` other than ``"none"`` the stack is two-pass (`astrod.pipeline.twopass`):
    the frames are registered first and read again for the final integration, which fails with
    `AstrodError` if one of them changed in between; ``two_pass=False`` stacks them live instead and caches
    the registered frames in ``cache_dir`` (default: a temporary folder, removed afterwards). Raises
    `AstrodError` when no frame could be stacked. A ``reference`` given is the user's choice: the session
    does not re-pick its reference by quality. ``observer`` sees the stacked frames unwarped (`LiveStack`).
    """
    log = structlog.get_logger()
    ordered = order_frames(paths, reference)
    bar = progress if progress is not None else NoProgress()
    rule_list = tuple(rules)
    if reference is not None:
        settings = replace(settings, reference_repick_after=0)
    two_pass = two_pass and settings.final_rejection != "none"
    again = _ReadAgain(rename=rename, rules=rule_list)
    with contextlib.ExitStack() as cleanup:
        cache = cache_dir
        if cache is None and settings.final_rejection != "none" and not two_pass:
            cache = cleanup.enter_context(scratch_folder("astrod-stack-"))
        stack = LiveStack(settings, calibrator=calibrator, cache_dir=None if two_pass else cache, observer=observer,
                          reread=again.frame if two_pass else None, read_rows=again.rows if two_pass else None)
        bar.start("stack", len(ordered))
        scratch = None  # one array every frame is read into (a calibrator may calibrate it in place)
        for path in ordered:
            t0 = time.perf_counter()
            try:
                frame = read_frame(path, rename=rename, rules=rule_list, out=scratch)
                again.versions[path] = file_version(path)
            except (AstrodError, OSError) as err:
                result = stack.reject(path, " ".join(str(err).split()))
            else:
                read_ms = (time.perf_counter() - t0) * 1e3
                if is_scratch(frame.data):
                    scratch = frame.data
                if frame.meta.kind.is_calibration:
                    result = stack.reject(path, f"a {frame.meta.kind.value} frame, not a light")
                else:
                    result = stack.process(frame)
                del frame
                log.debug("frame_read", path=str(path), ms=round(read_ms, 1))
            if result.status == "stacked":
                log.info("frame_stacked", path=str(path), fwhm=result.metrics.get("fwhm"),
                         weight=result.metrics.get("weight"))
            else:
                log.info("frame_rejected", path=str(path), reason=result.reason)
            if on_result is not None:
                on_result(result)
            bar.advance(path.name)
        bar.finish()
        scratch = None  # freed before the final stack is made
        product = stack.finalize(last=True)
    log.info("stack_finished", stacked=stack.n_stacked, rejected=stack.n_rejected,
             exposure=round(stack.total_exposure, 1))
    return product
