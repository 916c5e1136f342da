"""MasterLibrary: lookups through the index only, master arrays cached (LRU by bytes) and read-only."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.errors import LibraryError
from astrod.library.build import build_library
from astrod.library.keys import MasterKind
from astrod.library.masters import MasterLibrary
from astrod.library.match import MatchRules
from astrod.model import FrameKind, FrameMeta
from tests.library.observatory import CAMERA_A, CAMERA_B, Group, Observatory, build_options, write_group

RULES = MatchRules(longitude=0.0)


@pytest.fixture(scope="module")
def library(observatory: Observatory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("masters") / "lib"
    build_library(lib, [observatory.sources], options=build_options())
    return lib


def light_a(**changes: object) -> FrameMeta:
    meta = FrameMeta(kind=FrameKind.LIGHT, exposure=300.0, camera=CAMERA_A, gain=100.0, offset=50.0,
                     temperature=-10.0, set_temperature=-10.0, width=160, height=120, filter="L",
                     date_obs=Group(CAMERA_A, "light", 1).night)
    return replace(meta, **changes)  # type: ignore[arg-type]


def test_open_needs_an_index(tmp_path: Path) -> None:
    """Opening a folder without an index raises LibraryError telling to build it."""
    with pytest.raises(LibraryError, match="library build"):
        MasterLibrary.open(tmp_path)


def test_match_uses_the_index_and_sees_new_masters(library: Path, observatory: Observatory, tmp_path: Path) -> None:
    """An open library matches from the index, and notices masters another build adds meanwhile."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    with MasterLibrary.open(lib, rules=RULES) as opened:
        frame = light_a(exposure=600.0, set_temperature=-20.0, temperature=-20.0)
        first = opened.match(frame)
        assert first.dark is not None and first.dark.record.key.exposure == 300.0 and first.dark_mode == "scaled"
        src = tmp_path / "more"
        write_group(src, observatory.sensors[CAMERA_A], Group(CAMERA_A, "dark", 5, exposure=600.0,
                                                              temperature=-20.0), seed=77, dialect="nina")
        build_library(lib, [src], options=build_options())
        second = opened.match(frame)
        assert second.dark is not None and second.dark.record.key.exposure == 600.0
        assert second.dark_mode == "exact"


def test_loaded_masters_are_cached_and_read_only(library: Path) -> None:
    """Loading a master twice reads it once and returns the same read-only array, equal to the file."""
    with MasterLibrary.open(library, rules=RULES) as opened:
        dark = next(r for r in opened.records(kind=MasterKind.DARK) if r.key.camera == CAMERA_A)
        a = opened.load(dark)
        b = opened.load(dark)
        assert a is b and not a.flags.writeable
        np.testing.assert_array_equal(a, fits.getdata(dark.path))
        assert opened.cache_stats().misses == 1 and opened.cache_stats().hits == 1


def test_cache_is_bounded_in_bytes(library: Path) -> None:
    """With room for one master only, loading another evicts the first (it is read again next time)."""
    with MasterLibrary.open(library, rules=RULES, cache_bytes=160 * 120 * 4) as opened:
        darks = [r for r in opened.records(kind=MasterKind.DARK) if r.key.camera == CAMERA_A][:2]
        opened.load(darks[0])
        opened.load(darks[1])
        opened.load(darks[0])
        assert opened.cache_stats().misses == 3


def test_a_master_whose_file_changed_shape_is_refused(library: Path, tmp_path: Path) -> None:
    """A master file that no longer has the size its index row says raises LibraryError naming it."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    with MasterLibrary.open(lib, rules=RULES) as opened:
        bias = next(r for r in opened.records(kind=MasterKind.BIAS) if r.key.camera == CAMERA_B)
        fits.PrimaryHDU(np.zeros((10, 10), dtype=np.float32)).writeto(bias.path, overwrite=True)
        with pytest.raises(LibraryError, match=bias.path.name):
            opened.load(bias)


def test_prepared_masters_are_reused_per_master_set(library: Path) -> None:
    """Frames matched to the same masters share one prepared calibration; another exposure (scaled dark with a
    bias) gets its own."""
    with MasterLibrary.open(library, rules=RULES) as opened:
        r1 = opened.match(light_a())
        r2 = opened.match(light_a(date_obs=Group(CAMERA_A, "light", 1).night.replace(hour=23)))
        assert opened.prepared(r1) is opened.prepared(r2)
        r3 = opened.match(light_a(exposure=120.0))
        p3 = opened.prepared(r3)
        assert p3 is not opened.prepared(r1) and p3.dark_mode == "scaled" and p3.offset is not None
