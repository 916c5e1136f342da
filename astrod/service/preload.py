"""The compiled kernels loaded in the background when a daemon starts, so the first frame does not wait for them."""

from __future__ import annotations

import threading
import time

import structlog

from astrod.io.kernel_cache import load_cached_kernels


def start_kernel_preload() -> threading.Thread:
    """Load astrod's cached kernels on a background thread (numba's compiler lock keeps a frame that arrives
    meanwhile consistent: it waits for the kernel it needs, loaded once); logs ``kernels_loaded``."""

    def preload() -> None:
        t0 = time.perf_counter()
        loaded, failed = load_cached_kernels()
        structlog.get_logger().info("kernels_loaded", loaded=loaded, failed=failed,
                                    seconds=round(time.perf_counter() - t0, 2))

    thread = threading.Thread(target=preload, name="kernel-preload", daemon=True)
    thread.start()
    return thread
