"""How an astrod process takes fresh memory from the operating system.

numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) for every array of 4 MB and more;
with the usual ``defrag = madvise`` setting the kernel then zeroes, and may compact memory for, a 2 MB page
at each first touch. Which is cheaper depends on how a process uses memory, so a command says which it
wants (``small_pages`` in its parser defaults). Measured on this project's 2-core VM:

- `astrod stack` makes frame-sized arrays and bands of rows over and over: of 12 frames of 26 MP, with huge
  pages 8.3–9.0 s wall and 3.8–4.6 s of system time, without 7.2–7.8 s and 1.8–2.1 s (alternating runs).
- The daemon keeps its stack state for the night and reuses its frame buffers: without huge pages the first
  frame's accumulation touched 313 MB of fresh state in 4 KB pages, 1.0–1.1 s instead of 0.11 s, and the
  median per frame did not change. It keeps numpy's default.

numpy's documented switch is the environment variable ``NUMPY_MADVISE_HUGEPAGE``, read when numpy is
imported, before any astrod code runs; a user who sets it has the last word.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

ENV = "NUMPY_MADVISE_HUGEPAGE"


def _numpy_switch() -> Callable[[bool], bool] | None:
    """numpy's setter behind ``NUMPY_MADVISE_HUGEPAGE`` (numpy 2 moved it from ``numpy.core``), or None."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    return switch if callable(switch) else None


def prefer_small_pages(environ: Mapping[str, str] = os.environ) -> bool:
    """Stop numpy advising huge pages for the arrays made from now on, unless ``NUMPY_MADVISE_HUGEPAGE`` is set
    (then numpy already follows it). True when the advice was turned off here."""
    if ENV in environ:
        return False
    switch = _numpy_switch()
    if switch is None:
        return False
    switch(False)
    return True
