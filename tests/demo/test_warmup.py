"""`astrod warmup` fills numba's cache with every kernel a stack needs; a command on a cold cache says so once.

Each test runs astrod in subprocesses with its own NUMBA_CACHE_DIR, so the suite's cache is never touched. The
one compile (~1.5 min) is shared by the module's slow tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrod.io.kernel_cache import COMPILE_ESTIMATE
from tests import synth

NOTICE = "compiling kernels, once"


def _astrod(args: list[str], cache: Path, *, debug_cache: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    if debug_cache:
        env["NUMBA_DEBUG_CACHE"] = "1"  # numba prints "[cache] data loaded from" or "data saved to" per kernel
    return subprocess.run([sys.executable, "-m", "astrod", *args], env=env, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cache = tmp_path_factory.mktemp("numba-cache")
    return cache, _astrod(["warmup"], cache)


@pytest.mark.slow
def test_warmup_compiles_once_then_is_quick(warm_cache: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The first warm-up says it compiles and stamps the cache; the next one finds the stamp and compiles
    nothing."""
    cache, first = warm_cache
    assert first.returncode == 0, first.stderr
    assert f"astrod warmup: {NOTICE}" in first.stdout
    assert list(cache.rglob("astrod-kernels.json"))
    again = _astrod(["warmup"], cache)
    assert again.returncode == 0, again.stderr
    assert "compiled already" in again.stdout and NOTICE not in again.stdout


@pytest.mark.slow
def test_after_warmup_a_stack_compiles_nothing(warm_cache: tuple[Path, subprocess.CompletedProcess[str]],
                                               tmp_path: Path) -> None:
    """After the warm-up, building a library and stacking calibrated mono and colour frames (another size than
    the warm-up's) loads every kernel from the cache (numba saves none) and says nothing about compiling."""
    cache, first = warm_cache
    assert first.returncode == 0, first.stderr
    width, height = 320, 240
    for i, bayer in enumerate((None, "GRBG")):
        sensor = synth.Sensor(width=width, height=height, seed=50 + i, hot_pixels=20, bayer=bayer)
        synth.write_calibration_set(tmp_path / "calibration" / str(i), sensor, seed=60 + i)
        session = synth.make_session(n_frames=5, width=width, height=height, seed=70 + i, sensor=sensor,
                                     n_stars=120, max_shift=6.0, max_rotation_deg=0.5)
        session.write(tmp_path / "lights" / str(i), object=f"T{i}")
    built = _astrod(["library", "build", "--source", str(tmp_path / "calibration"), "--library",
                     str(tmp_path / "library")], cache, debug_cache=True)
    assert built.returncode == 0, built.stderr
    outputs = [built]
    for i in range(2):
        stacked = _astrod(["stack", str(tmp_path / "lights" / str(i)), "--library", str(tmp_path / "library"),
                           "-o", str(tmp_path / f"stack{i}.fits"), "--preview", str(tmp_path / f"stack{i}.jpg")],
                          cache, debug_cache=True)
        assert stacked.returncode == 0, stacked.stderr
        outputs.append(stacked)
    text = "".join(p.stdout + p.stderr for p in outputs)
    assert "data loaded from" in text
    saved = [line for line in text.splitlines() if "data saved to" in line]
    assert not saved, "compiled after the warm-up:\n" + "\n".join(saved)
    assert NOTICE not in text


@pytest.mark.slow
def test_cached_kernels_load_ahead_of_the_first_frame(warm_cache: tuple[Path, subprocess.CompletedProcess[str]]
                                                      ) -> None:
    """After the warm-up a fresh process loads every cached kernel signature ahead (what the daemon's start
    does on a background thread) without compiling one; with an empty cache it loads nothing and fails
    nothing."""
    cache, first = warm_cache
    assert first.returncode == 0, first.stderr
    probe = ("from astrod.io.kernel_cache import compile_counts, load_cached_kernels; "
             "print(*load_cached_kernels(), *compile_counts())")
    for folder, expect_loaded in ((cache, True), (cache.parent / "empty-numba-cache", False)):
        env = {**os.environ, "NUMBA_CACHE_DIR": str(folder)}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300,
                             check=True)
        loaded, failed, hits, misses = map(int, out.stdout.split())
        assert failed == 0 and misses == 0
        assert (loaded > 20 and hits == loaded) if expect_loaded else (loaded == 0 and hits == 0)


def test_a_cold_cache_is_announced_once(tmp_path: Path) -> None:
    """With an empty cache, `astrod stack` says once, as a log event, that the kernels will compile (and how
    long that takes), after its arguments are checked; `astrod inspect`, which stacks nothing, does not."""
    lights = tmp_path / "lights"
    lights.mkdir()
    (lights / "broken.fits").write_bytes(b"SIMPLE  =                    T")  # read, rejected: nothing compiles
    stacked = _astrod(["stack", str(lights), "-o", str(tmp_path / "out.fits")], tmp_path / "cache")
    assert stacked.returncode == 1, stacked.stderr  # nothing could be stacked, after the notice
    assert stacked.stderr.count(NOTICE) == 1
    assert '"event": "kernels_compiling"' in stacked.stderr and COMPILE_ESTIMATE in stacked.stderr
    (tmp_path / "empty").mkdir()
    nothing = _astrod(["stack", str(tmp_path / "empty"), "-o", str(tmp_path / "out.fits")], tmp_path / "cache")
    assert nothing.returncode == 2 and NOTICE not in nothing.stderr  # a usage error comes alone
    inspected = _astrod(["inspect", str(lights)], tmp_path / "cache")
    assert NOTICE not in inspected.stderr + inspected.stdout
