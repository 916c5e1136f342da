"""Checkpoints: a dict of numpy arrays plus JSON metadata in one file, written atomically, read back bit-exact.

The file is an uncompressed ``.npz`` (a zip of ``.npy`` files; no pickling on either side) with the metadata
stored as UTF-8 JSON bytes under a reserved key. Writing goes through :func:`astrod.io.atomic.atomic_write`,
so a crash leaves the previous checkpoint intact. Floats in the metadata survive exactly: JSON holds Python's
shortest round-trip repr.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.errors import AstrodError
from astrod.io.atomic import atomic_write

META_KEY = "__meta__"
FORMAT = 1


class CheckpointError(AstrodError):
    """A checkpoint file is missing, truncated, corrupt or of another format."""


def save_checkpoint(path: str | os.PathLike[str], arrays: Mapping[str, npt.NDArray[Any]],
                    meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically; returns the path.

    Array names must be valid file names inside a zip and not ``__meta__``; object arrays are refused.
    """
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for the metadata")
    for name, arr in arrays.items():
        if np.asarray(arr).dtype.hasobject:
            raise ValueError(f"checkpoint array {name!r} has dtype object, which would need pickling")
    try:
        text = json.dumps({"format": FORMAT, "meta": meta}, allow_nan=True, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {err}") from err
    payload = {META_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8), **arrays}
    target = Path(path)
    with atomic_write(target, "wb") as handle:
        np.savez(handle, allow_pickle=False, **payload)
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """The arrays (fresh, writeable, in memory) and the metadata of a checkpoint written by `save_checkpoint`."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            names = list(npz.files)
            if META_KEY not in names:
                raise CheckpointError(f"{p}: not an astrod checkpoint (no metadata)")
            raw = npz[META_KEY]
            arrays = {name: npz[name] for name in names if name != META_KEY}
    except CheckpointError:
        raise
    except FileNotFoundError as err:
        raise CheckpointError(f"{p}: checkpoint not found") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(f"{p}: corrupt checkpoint: {err}") from err
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{p}: corrupt checkpoint metadata: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("meta"), dict):
        raise CheckpointError(f"{p}: checkpoint format {doc.get('format') if isinstance(doc, dict) else '?'} "
                              f"is not {FORMAT}")
    return arrays, doc["meta"]
