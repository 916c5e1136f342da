"""Tests of astrod.io.mapped_masters: prepared masters in mapped scratch files, resident a band at a time."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from astrod.core.calibrate import apply, prepare
from astrod.io.mapped_masters import map_prepared, open_prepared, remove_stale, scratch_name

SHAPE = (1024, 1024)  # 4 MiB per master: large enough that a band (256 rows, 1 MiB) is well below it


def masters(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float32)
    flat = (1.0 - 0.2 * ((xx - 512) ** 2 + (yy - 512) ** 2) / 512**2).astype(np.float32)
    flat[3, 7] = 0.0  # unusable: left uncorrected
    bias = (500.0 + rng.normal(0.0, 2.0, SHAPE)).astype(np.float32)
    dark = (bias + rng.gamma(2.0, 5.0, SHAPE)).astype(np.float32)
    return {"bias": bias, "dark": dark, "flat": flat}


def resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):
            inside = fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.parametrize("mode", ["exact", "scaled", "optimised"])
def test_mapped_masters_calibrate_bit_for_bit(tmp_path: Path, mode: str) -> None:
    """Calibration with mapped masters equals calibration with the arrays; a second mapping reuses the files."""
    m = masters()
    in_memory = prepare(bias=m["bias"], dark=m["dark"], flat=m["flat"], dark_mode=mode,  # type: ignore[arg-type]
                        dark_exposure=300.0)
    mapped = map_prepared(in_memory, tmp_path / "set")
    assert mapped.release_rows is not None and in_memory.release_rows is None
    rng = np.random.default_rng(4)
    light = (m["dark"] * 0.5 + 900.0 + rng.normal(0.0, 10.0, SHAPE)).astype(np.float32)
    expected = apply(in_memory, light, light_exposure=150.0)
    got = apply(mapped, light, light_exposure=150.0)
    np.testing.assert_array_equal(got.data, expected.data)
    assert got.dark_scale == expected.dark_scale and got.steps == expected.steps
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "set").iterdir()}
    again = map_prepared(in_memory, tmp_path / "set")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "set").iterdir()} == stamps
    np.testing.assert_array_equal(apply(again, light, light_exposure=150.0).data, expected.data)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_only_a_band_of_the_masters_stays_resident(tmp_path: Path) -> None:
    """After mapping, and after calibrating a frame, at most one band of each mapped master is resident:
    the rest of the master lives in the page cache, not in this process."""
    m = masters(1)
    mapped = map_prepared(prepare(dark=m["dark"], flat=m["flat"]), tmp_path / "set")
    files = sorted((tmp_path / "set").glob("*.f32"))
    assert [p.name for p in files] == ["inverse_flat.f32", "offset.f32"]
    full_kib = SHAPE[0] * SHAPE[1] * 4 // 1024
    assert all(resident_kib(p) == 0 for p in files)
    light = np.full(SHAPE, 1000.0, dtype=np.float32)
    apply(mapped, light, out=light)
    band_kib = mapped.band_rows * SHAPE[1] * 4 // 1024
    for path in files:
        assert resident_kib(path) <= band_kib + 4, f"{path.name}: {resident_kib(path)} KiB of {full_kib} resident"
    assert np.isfinite(light).all() and light[3, 7] == pytest.approx(1000.0 - m["dark"][3, 7])


def test_stale_sets_are_removed_and_names_follow_content(tmp_path: Path) -> None:
    """scratch_name is a digest of what identifies the masters; remove_stale keeps only the named sets."""
    assert scratch_name(("a", 1)) == scratch_name(("a", 1)) != scratch_name(("a", 2))
    m = masters(2)
    for name in ("prepared-old", scratch_name("new")):
        map_prepared(prepare(dark=m["dark"]), tmp_path / name)
    (tmp_path / "other").mkdir()
    remove_stale(tmp_path, keep={scratch_name("new")})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["other", scratch_name("new")])


def _same_set(a: object, b: object) -> None:
    for f in fields(a):  # type: ignore[arg-type]
        if f.name == "release_rows":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


@pytest.mark.parametrize("mode", ["exact", "optimised"])
def test_a_complete_set_is_opened_again_without_the_masters(tmp_path: Path, mode: str) -> None:
    """What `map_prepared` leaves is a whole set: `open_prepared` gives every field back, and calibrates the same."""
    m = masters(5)
    bad = np.zeros(SHAPE, dtype=np.bool_)
    bad[10, 20] = bad[500, 501] = True
    in_memory = prepare(bias=m["bias"], dark=m["dark"], flat=m["flat"], bad_pixels=bad, bayer="RGGB",
                        dark_mode=mode, dark_exposure=300.0)  # type: ignore[arg-type]
    map_prepared(in_memory, tmp_path / "set")
    opened = open_prepared(tmp_path / "set")
    assert opened is not None and opened.release_rows is not None
    _same_set(in_memory, opened)
    light = (m["dark"] + 900.0).astype(np.float32)
    expected = apply(in_memory, light, light_exposure=300.0)
    got = apply(opened, light, light_exposure=300.0)
    np.testing.assert_array_equal(got.data, expected.data)
    assert got.steps == expected.steps


def test_a_set_that_is_not_whole_is_not_opened(tmp_path: Path) -> None:
    """No `prepared.npz` (an interrupted run), a damaged one, or a master file of the wrong size: made again."""
    m = masters(6)
    prepared = prepare(dark=m["dark"], flat=m["flat"])
    assert open_prepared(tmp_path / "none") is None
    folder = tmp_path / "set"
    map_prepared(prepared, folder)
    assert open_prepared(folder) is not None
    meta = (folder / "prepared.npz").read_bytes()
    (folder / "prepared.npz").unlink()
    assert open_prepared(folder) is None
    (folder / "prepared.npz").write_bytes(meta[: len(meta) // 2])
    assert open_prepared(folder) is None
    (folder / "prepared.npz").write_bytes(meta)
    with (folder / "offset.f32").open("r+b") as handle:
        handle.truncate(1000)
    assert open_prepared(folder) is None


def test_a_shared_folder_keeps_the_sets_used_lately(tmp_path: Path) -> None:
    """With ``idle_s`` a set another process made or opened lately stays; one idle longer goes."""
    m = masters(7)
    for name in ("prepared-lately", "prepared-long-ago"):
        map_prepared(prepare(dark=m["dark"]), tmp_path / name)
    past = time.time() - 7200
    os.utime(tmp_path / "prepared-long-ago", (past, past))
    os.utime(tmp_path / "prepared-lately", (past, past))
    assert open_prepared(tmp_path / "prepared-lately") is not None  # opening it is using it
    remove_stale(tmp_path, keep={"prepared-mine"}, idle_s=3600.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared-lately"]
