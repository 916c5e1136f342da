"""Where numba keeps astrod's compiled kernels, and whether `astrod warmup` has filled that cache.

numba compiles a ``cache=True`` kernel at its first call in a process unless its on-disk cache has it: an
index per kernel, valid while the source file keeps its mtime and size, with one entry per argument types
and CPU. A cold cache costs about 1.5 min before the first frame (77 kernel signatures: 95 s on a fresh clone
on a 2-core machine). `astrod warmup` compiles every kernel astrod calls and then writes a stamp beside
numba's files holding what numba's check depends on (the kernel sources' mtimes and sizes, numba's and
Python's versions, the CPU), so a command can tell *before* the pause whether a compile is coming, without
compiling or timing anything itself.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

import numba
import structlog

import astrod
import astrod.core
from astrod.io.atomic import atomic_write_bytes
from astrod.io.files import read_json

STAMP_NAME = "astrod-kernels.json"
COMPILE_ESTIMATE = "~2 min"  # every kernel: 95 s on a fresh clone on a 2-core x86 machine at load 1


def kernel_dispatchers() -> dict[str, Any]:
    """astrod's disk-cached numba kernels by ``module.name`` (every `astrod.core` module is imported)."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(astrod.core.__path__, prefix="astrod.core."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            # a kernel imported by another module is the same object: keep it under its own module's name
            if (isinstance(obj, numba.core.registry.CPUDispatcher) and obj.py_func.__module__ == info.name
                    and getattr(obj, "_cache", None).__class__.__name__ == "FunctionCache"):
                found[f"{info.name}.{name}"] = obj
    return found


def cache_folder(dispatchers: dict[str, Any] | None = None) -> Path:
    """The folder numba reads astrod's kernels from: ``__pycache__`` beside `astrod.core` when writable,
    else ``$NUMBA_CACHE_DIR`` (or numba's per-user folder) — numba's own choice, asked of one kernel."""
    kernels = kernel_dispatchers() if dispatchers is None else dispatchers
    return Path(next(iter(kernels.values()))._cache._cache_path)


def cache_key(dispatchers: dict[str, Any] | None = None) -> str:
    """A hash of what numba's cache validity depends on, for every kernel source file."""
    kernels = kernel_dispatchers() if dispatchers is None else dispatchers
    sources = sorted({Path(d.py_func.__code__.co_filename) for d in kernels.values()})
    any_kernel = next(iter(kernels.values()))
    facts = {
        "astrod": astrod.__version__,
        "numba": numba.__version__,
        "python": list(sys.version_info[:2]),
        "cpu": list(any_kernel.targetctx.codegen().magic_tuple()),
        # numba's index stamp is (st_mtime, st_size): a checkout that touches a file recompiles it
        "sources": [[str(p), p.stat().st_mtime, p.stat().st_size] for p in sources],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def is_warm() -> bool:
    """True when the stamp in numba's cache folder matches the kernels as they are now."""
    kernels = kernel_dispatchers()
    stamp = cache_folder(kernels) / STAMP_NAME
    try:
        recorded = read_json(stamp)
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("key") == cache_key(kernels)


def mark_warm(*, seconds: float) -> Path:
    """Write the stamp after a warm-up that took ``seconds``; returns its path."""
    kernels = kernel_dispatchers()
    stamp = cache_folder(kernels) / STAMP_NAME
    body = {"key": cache_key(kernels), "kernels": len(kernels), "seconds": round(seconds, 1)}
    atomic_write_bytes(stamp, json.dumps(body, indent=1).encode())
    return stamp


def load_cached_kernels() -> tuple[int, int]:
    """Load into this process every signature numba's cache holds, valid, for astrod's kernels: the loading a
    first frame would otherwise wait for (up to ~1 s at 26 MP), done ahead. A signature whose cached code is
    stale is left to be compiled at its first call, as without this. Returns (loaded, failed).

    Reads numba's cache index through its private API (numba 0.59–0.68): anything unexpected there only
    means nothing is loaded ahead."""
    loaded = failed = 0
    for dispatcher in kernel_dispatchers().values():
        try:
            index = dispatcher._cache._cache_file._load_index()  # {} when the source changed since
            magic = dispatcher.targetctx.codegen().magic_tuple()
        except Exception:  # numba internals: a change of theirs costs the head start only
            failed += 1
            continue
        for key in list(index):
            sig = key[0]
            if key[1] != magic or sig in dispatcher.overloads:
                continue
            before = sum(dispatcher.stats.cache_misses.values())
            try:
                dispatcher.compile(sig)
            except Exception:  # as above
                failed += 1
                continue
            loaded += sum(dispatcher.stats.cache_misses.values()) == before
    return loaded, failed


def compile_counts() -> tuple[int, int]:
    """(signatures loaded from the cache, signatures compiled) by astrod's kernels in this process so far."""
    hits = misses = 0
    for d in kernel_dispatchers().values():
        hits += sum(d.stats.cache_hits.values())
        misses += sum(d.stats.cache_misses.values())
    return hits, misses


def notice_if_cold() -> bool:
    """Say once (one log event, which a terminal shows too) that the kernels will compile before the first
    frame, when the warm-up stamp does not match them; True when it said so. Commands call it once their
    arguments are checked, just before the work."""
    if is_warm():
        return False
    # a warning, so that it shows under the demo's and other quiet log levels
    structlog.get_logger().warning("kernels_compiling", expected=COMPILE_ESTIMATE,
                                   message=f"compiling kernels, once: {COMPILE_ESTIMATE} before the first frame "
                                           "(`astrod warmup` does it ahead)")
    return True
