"""How astrod's processes take fresh memory from the operating system.

numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) for every array of 4 MB and more.
astrod's large arrays are short-lived (a 26 MP frame, a band of rows), so each one is fresh memory the kernel
must zero, and on the virtual machines observatory PCs and clusters often are, a fresh 2 MB page is much dearer
than 512 small ones that the guest has just freed: measured on this project's 2-core VM, `astrod stack` of 12
frames of 26 MP spent 6.4–7.0 s of system time zeroing pages with huge pages and 3.5–4.0 s without, and its
wall time went from 13.6–14.8 s to 10.3–11.2 s in alternating runs. numpy's documented switch for this is the
environment variable ``NUMPY_MADVISE_HUGEPAGE``, read when numpy is imported, which is before any astrod code
runs; a user who sets it has the last word.
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
