"""Tests of astrod.io.mapped_masters: prepared masters in mapped scratch files, resident a band at a time."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from astrod.core.calibrate import apply, prepare
from astrod.io.mapped_masters import map_prepared, remove_stale, scratch_name

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
    files = sorted((tmp_path / "set").iterdir())
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
