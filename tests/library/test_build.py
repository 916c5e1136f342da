"""Building the library: the right groups and masters, masters equal to ccdproc's, idempotent, safe to kill."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import sigma_clip

from astrod.core.combine import combine_arrays
from astrod.errors import LibraryError
from astrod.io.fits import read_fits, read_fits_extension, read_fits_header
from astrod.io.index import MasterIndex, file_digest, library_lock
from astrod.library import build as build_module
from astrod.library.build import BadPixelParams, CombineParams, build_library, reindex
from astrod.library.keys import MasterKind
from astrod.library.records import MasterRecord
from tests import synth
from tests.library.observatory import (
    CAMERA_A,
    CAMERA_B,
    NIGHT_1,
    PLAN,
    Group,
    Observatory,
    build_options,
    write_group,
)

REPO = Path(__file__).resolve().parents[2]


def records(library: Path) -> list[MasterRecord]:
    with MasterIndex.open(library, create=False) as index:
        return [MasterRecord.from_row(row, library) for row in index.rows()]


def find(recs: list[MasterRecord], group: Group) -> MasterRecord:
    """The one master whose description has every word of the planned group."""
    found = [r for r in recs if r.kind.value == group.kind and all(w in r.key.describe() for w in group.key_words)]
    assert len(found) == 1, f"{group}: {[r.key.describe() for r in found]}"
    return found[0]


def ccds(paths: list[Path]) -> list[CCDData]:
    return [CCDData(fits.getdata(p).astype(np.float64), unit="adu") for p in paths]


@pytest.fixture(scope="module")
def built(observatory: Observatory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The observatory's library, built once for the module's read-only checks."""
    library = tmp_path_factory.mktemp("library")
    build_library(library, [observatory.sources], options=build_options())
    return library


# ------------------------------------------------------------------------------------------------ groups


def test_every_planned_group_becomes_one_master(built: Path) -> None:
    """Each planned group (camera, gain, temperature, exposure, filter, night) gives exactly one master with
    all its frames, plus one bad-pixel map per camera and gain with darks or flats; nothing else."""
    recs = records(built)
    for group in PLAN:
        record = find(recs, group)
        assert record.n_frames == group.n
        assert record.low_n == (group.n < 5)
        assert record.path.is_file()
    bpm = [r for r in recs if r.kind is MasterKind.BADPIXELS]
    assert sorted((r.key.camera, r.key.gain) for r in bpm) == [(CAMERA_B, 100.0), (CAMERA_A, 100.0)]
    assert len(recs) == len(PLAN) + 2


def test_masters_carry_provenance_headers(built: Path) -> None:
    """A master is float32 FITS with IMAGETYP, NCOMBINE, its grouping keys, method, κ, version and hashes."""
    dark = find(records(built), Group(CAMERA_A, "dark", 5, exposure=300.0))
    with fits.open(dark.path) as hdul:
        h = hdul[0].header
        assert hdul[0].data.dtype == np.dtype(">f4")
    assert h["IMAGETYP"] == "Master Dark"
    assert h["NCOMBINE"] == 5 and h["LOW_N"] is False
    assert (h["INSTRUME"], h["GAIN"], h["OFFSET"], h["SET-TEMP"], h["EXPTIME"]) == (CAMERA_A, 100, 50, -10, 300)
    assert (h["COMBMETH"], h["COMBKAPP"], h["COMBCEN"]) == ("sigma_clip", 3.0, "median")
    assert h["ASTRODV"] and h["ASTRDKEY"] == dark.key_id
    assert h["SRCHASH"] == dark.source_hash and h["BLDHASH"] == dark.build_hash
    assert len(h["HISTORY"]) == 5
    low = find(records(built), Group(CAMERA_A, "bias", 3, gain=0))
    assert fits.getheader(low.path)["LOW_N"] is True


def test_junk_is_skipped_with_one_line_reasons(observatory: Observatory, tmp_path: Path) -> None:
    """Truncated, non-FITS, unclassifiable and 3-plane files are skipped with a one-line reason each, lights
    are ignored, and the build goes on to write every master."""
    report = build_library(tmp_path, [observatory.sources], options=build_options())
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert "truncated" in reasons["truncated.fits"]
    assert "SIMPLE" in reasons["notes.fits"]
    assert "kind unknown" in reasons["mystery.fits"]
    assert "3-plane" in reasons["rgb.fits"]
    assert all("\n" not in r for r in reasons.values())
    assert report.lights_ignored == 1
    assert report.count("new") == len(PLAN) + 2 and report.count("failed") == 0


def test_bad_pixel_map_finds_hot_pixels_and_a_dead_column(tmp_path: Path) -> None:
    """The map flags the sensor's hot pixels (from the darks) and a column that is dark in the flats, and
    few others."""
    sensor = synth.Sensor(width=128, height=96, seed=21, hot_pixels=40)
    src = tmp_path / "src"
    write_group(src / "bias", sensor, Group(CAMERA_A, "bias", 5), seed=1, dialect="nina")
    write_group(src / "dark", sensor, Group(CAMERA_A, "dark", 5, exposure=300.0), seed=2, dialect="nina")
    flats = write_group(src / "flat", sensor, Group(CAMERA_A, "flat", 5, exposure=1.0, filter="L"), seed=3,
                        dialect="nina")
    for path in flats:  # column 77 responds at 20 %: a dead column
        with fits.open(path, mode="update") as hdul:
            data = hdul[0].data.astype(np.float64)
            data[:, 77] = 500 + (data[:, 77] - 500) * 0.2
            hdul[0].data = data.astype(np.uint16)
    build_library(tmp_path / "lib", [src], options=build_options())
    bpm = next(r for r in records(tmp_path / "lib") if r.kind is MasterKind.BADPIXELS)
    mask = fits.getdata(bpm.path).astype(bool)
    hot = sensor.hot_pixel_yx
    assert mask[hot[:, 0], hot[:, 1]].mean() >= 0.95
    assert mask[:, 77].all()
    others = mask.copy()
    others[hot[:, 0], hot[:, 1]] = False
    others[:, 77] = False
    assert others.mean() < 0.005


# ----------------------------------------------------------------------------------------- against ccdproc


def noisy_darks(folder: Path, n: int = 12) -> tuple[list[Path], synth.Sensor]:
    """``n`` darks with cosmic-ray hits in a few frames: something for sigma clipping to reject."""
    sensor = synth.Sensor(width=96, height=64, seed=31)
    paths = []
    rng = np.random.default_rng(5)
    for i in range(n):
        data = sensor.dark(exposure=120.0, temperature=-10.0, seed=i)
        if i % 3 == 0:
            ys, xs = rng.integers(0, 64, 40), rng.integers(0, 96, 40)
            data[ys, xs] = 30000.0
        paths.append(synth.write_fits(folder / f"dark_{i:02d}.fits", data, kind="dark", exposure=120.0,
                                      date_obs=NIGHT_1 + timedelta(minutes=i)))
    return paths, sensor


def test_master_dark_equals_ccdproc_combine(tmp_path: Path) -> None:
    """With ccdproc.combine's sigma-clip parameters (mean centre, std, κ=3, one pass) the master written by
    the build equals ccdproc.combine on the same files within 1e-5 relative."""
    paths, _ = noisy_darks(tmp_path / "src")
    options = build_options(combine=CombineParams(cenfunc="mean", maxiters=1),
                            memory_cap_bytes=96 * 64 * 10 + 12 * 96 * 4 * 9)  # several bands (image, n_used, noise)
    build_library(tmp_path / "lib", [tmp_path / "src"], options=options)
    master = next(r for r in records(tmp_path / "lib") if r.kind is MasterKind.DARK)
    ref = ccdproc.combine(ccds(paths), method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                          sigma_clip_high_thresh=3)
    np.testing.assert_allclose(fits.getdata(master.path), ref.data, rtol=1e-5)


def test_default_master_equals_iterated_astropy_clip(tmp_path: Path) -> None:
    """The default recipe (median centre, κ=3, up to 5 iterations) equals ccdproc's Combiner with astropy's
    sigma_clip applied with those parameters, then average_combine, within 1e-5 relative."""
    paths, _ = noisy_darks(tmp_path / "src")
    build_library(tmp_path / "lib", [tmp_path / "src"], options=build_options())
    master = next(r for r in records(tmp_path / "lib") if r.kind is MasterKind.DARK)
    combiner = ccdproc.Combiner(ccds(paths))
    combiner.data_arr.mask |= sigma_clip(combiner.data_arr.data, axis=0, masked=True, sigma=3, maxiters=5,
                                         cenfunc="median", stdfunc="std").mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = combiner.average_combine()
    np.testing.assert_allclose(fits.getdata(master.path), ref.data, rtol=1e-5)


def test_master_flat_equals_ccdproc_on_calibrated_scaled_flats(built: Path, observatory: Observatory) -> None:
    """The master flat equals ccdproc on the same flats: each minus the library's master dark-flat, divided by
    its median (on the every-4th-pixel grid the build samples), sigma-clip combined (mean, std, κ=3, 5
    iterations, median centre), normalised to mean 1; within 1e-5 relative."""
    recs = records(built)
    flat = find(recs, Group(CAMERA_A, "flat", 5, exposure=2.0, filter="L"))
    darkflat = find(recs, Group(CAMERA_A, "darkflat", 5, exposure=2.0))
    assert fits.getheader(flat.path)["CALDARK"] == darkflat.name
    dark = fits.getdata(darkflat.path).astype(np.float64)
    scaled = []
    for path in sorted(Path(p) for p in flat.info["sources"]):
        calibrated = fits.getdata(path).astype(np.float64) - dark
        scaled.append(CCDData(calibrated / np.median(calibrated[::4, ::4].astype(np.float32)), unit="adu"))
    combiner = ccdproc.Combiner(scaled)
    combiner.data_arr.mask |= sigma_clip(combiner.data_arr.data, axis=0, masked=True, sigma=3, maxiters=5,
                                         cenfunc="median", stdfunc="std").mask
    ref = np.asarray(combiner.average_combine().data)
    ref /= ref.mean()
    got = fits.getdata(flat.path)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert abs(float(got.mean()) - 1.0) < 1e-5


# ------------------------------------------------------------------------------------------- idempotence


def snapshot(library: Path) -> dict[str, tuple[object, ...]]:
    """Every index row (without its creation time) and the hash of every master file's bytes as they are."""
    out = {}
    for r in records(library):
        out[r.key_id] = (r.path.relative_to(library).as_posix(), r.n_frames, r.low_n, r.source_hash, r.build_hash,
                         r.content_hash, file_digest(r.path))
    return out


def test_rebuild_changes_nothing_and_refresh_only_what_changed(observatory: Observatory, tmp_path: Path) -> None:
    """Re-running a build keeps every master (same rows, same files untouched); --refresh with unchanged
    sources rebuilds nothing; after one dark changes only its master (and the bad-pixel map derived from it)
    is rebuilt."""
    src = tmp_path / "src"
    group = Group(CAMERA_A, "dark", 5, exposure=300.0)
    darks = write_group(src / "darks", observatory.sensors[CAMERA_A], group, seed=3, dialect="nina")
    write_group(src / "bias", observatory.sensors[CAMERA_A], Group(CAMERA_A, "bias", 5), seed=4, dialect="nina")
    lib = tmp_path / "lib"
    first = build_library(lib, [src], options=build_options())
    before = snapshot(lib)
    with MasterIndex.open(lib) as index:
        rows_before = index.rows()
    mtimes = {p: p.stat().st_mtime_ns for p in lib.rglob("*.fits")}
    second = build_library(lib, [src], options=build_options())
    assert {m.status for m in second.masters} <= {"exists", "up to date"}
    with MasterIndex.open(lib) as index:
        assert index.rows() == rows_before
    assert {p: p.stat().st_mtime_ns for p in lib.rglob("*.fits")} == mtimes
    third = build_library(lib, [src], options=build_options(refresh=True))
    assert {m.status for m in third.masters} == {"up to date"}
    assert snapshot(lib) == before
    synth.write_fits(darks[0], observatory.sensors[CAMERA_A].dark(exposure=300.0, temperature=-10.0, seed=999),
                     kind="dark", exposure=300.0, camera=CAMERA_A, object=None, date_obs=group.night)
    fourth = build_library(lib, [src], options=build_options(refresh=True))
    status = {m.key.kind: m.status for m in fourth.masters}
    assert status == {MasterKind.BIAS: "up to date", MasterKind.DARK: "rebuilt", MasterKind.BADPIXELS: "rebuilt"}
    assert len(first.masters) == len(fourth.masters) == 3


def test_refresh_never_deletes_a_master_without_sources(built: Path, observatory: Observatory,
                                                        tmp_path: Path) -> None:
    """A refresh from a folder holding only camera B's frames leaves camera A's masters in place."""
    lib = tmp_path / "lib"
    shutil.copytree(built, lib)
    before = {r.key_id for r in records(lib)}
    build_library(lib, [observatory.sources / CAMERA_B.replace(" ", "_")], options=build_options(refresh=True))
    after = records(lib)
    assert {r.key_id for r in after} == before
    assert all(r.path.is_file() for r in after)


def test_missing_source_folder_and_concurrent_build_raise(tmp_path: Path) -> None:
    """A source folder that does not exist, or a library another build holds, raise LibraryError."""
    with pytest.raises(LibraryError, match="does not exist"):
        build_library(tmp_path / "lib", [tmp_path / "nowhere"])
    (tmp_path / "src").mkdir()
    with library_lock(tmp_path / "lib"), pytest.raises(LibraryError, match="another library build"):
        build_library(tmp_path / "lib", [tmp_path / "src"])


def test_lost_index_is_rebuilt_from_headers(built: Path, tmp_path: Path) -> None:
    """Deleting the index and reindexing from the masters' headers gives the same keys, paths, counts and
    content hashes."""
    lib = tmp_path / "lib"
    shutil.copytree(built, lib)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (lib / name).unlink(missing_ok=True)
    assert reindex(lib) == len(records(built))
    want = {r.key_id: (r.path.relative_to(built), r.n_frames, r.low_n, r.source_hash, r.build_hash, r.content_hash)
            for r in records(built)}
    got = {r.key_id: (r.path.relative_to(lib), r.n_frames, r.low_n, r.source_hash, r.build_hash, r.content_hash)
           for r in records(lib)}
    assert got == want


def test_build_after_losing_the_index_rebuilds_nothing(built: Path, observatory: Observatory, tmp_path: Path) -> None:
    """A refresh build in a library whose index was deleted reindexes the masters from their headers first and
    finds every one up to date."""
    lib = tmp_path / "lib"
    shutil.copytree(built, lib)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (lib / name).unlink(missing_ok=True)
    report = build_library(lib, [observatory.sources], options=build_options(refresh=True))
    assert {m.status for m in report.masters} == {"up to date"}
    assert len(records(lib)) == len(records(built))


# ------------------------------------------------------------------------------------------ kill mid-build


def build_command(library: Path, source: Path) -> list[str]:
    return [sys.executable, "-m", "astrod", "library", "build", "--source", str(source), "--library", str(library)]


def index_count(library: Path) -> int:
    path = library / "index.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM masters").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_library(observatory: Observatory, tmp_path: Path) -> None:
    """A build SIGKILLed right after its first master is indexed, then run again, ends with the same index rows
    and master bytes as an uninterrupted build, and no temporary files."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(build_command(whole, observatory.sources), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(build_command(killed, observatory.sources), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while index_count(killed) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    interrupted = index_count(killed)
    assert 1 <= interrupted < len(PLAN) + 2, "the build was not interrupted mid-way"
    subprocess.run(build_command(killed, observatory.sources), check=True, env=env, capture_output=True)
    assert snapshot(killed) == snapshot(whole)
    assert not list(killed.rglob("*.tmp")) and not (killed / ".spool").exists()


# ------------------------------------------------------------------------------------------------ variants


def test_cfa_flat_is_normalised_per_colour(built: Path) -> None:
    """The Bayer camera's master flat keeps its CFA pattern in the header and has mean 1 in each colour."""
    flat = find(records(built), Group(CAMERA_B, "flat", 5, exposure=1.5))
    header = fits.getheader(flat.path)
    assert header["BAYERPAT"] == "RGGB" and flat.bayer == "RGGB"
    data = fits.getdata(flat.path).astype(np.float64)
    colours = synth.cfa_channel_index("RGGB", (0, 0), data.shape)
    for c in range(3):
        assert abs(data[colours == c].mean() - 1.0) < 1e-5


def test_compressed_sources_give_the_same_master(observatory: Observatory, tmp_path: Path) -> None:
    """Gzipped FITS sources are decoded through the spool and give the same master pixels as plain files; the
    spool is gone afterwards."""
    sensor = observatory.sensors[CAMERA_A]
    group = Group(CAMERA_A, "dark", 5, exposure=60.0)
    plain = write_group(tmp_path / "plain", sensor, group, seed=8, dialect="nina")
    (tmp_path / "packed").mkdir()
    for p in plain:
        with fits.open(p) as hdul:
            hdul.writeto(tmp_path / "packed" / f"{p.name}.gz")  # astropy gzips by the name
    build_library(tmp_path / "lib_plain", [tmp_path / "plain"], options=build_options())
    build_library(tmp_path / "lib_packed", [tmp_path / "packed"], options=build_options())
    a = next(r for r in records(tmp_path / "lib_plain") if r.kind is MasterKind.DARK)
    b = next(r for r in records(tmp_path / "lib_packed") if r.kind is MasterKind.DARK)
    np.testing.assert_array_equal(fits.getdata(a.path), fits.getdata(b.path))
    assert b.n_frames == 5 and not (tmp_path / "lib_packed" / ".spool").exists()


def test_library_inside_a_source_folder_is_not_read_back(observatory: Observatory, tmp_path: Path) -> None:
    """A library kept inside a scanned folder is left out of the scan: a second build keeps every master and
    skips nothing new."""
    src = tmp_path / "astro"
    write_group(src / "darks", observatory.sensors[CAMERA_A], Group(CAMERA_A, "dark", 5, exposure=60.0), seed=9,
                dialect="nina")
    first = build_library(src / "library", [src], options=build_options())
    second = build_library(src / "library", [src], options=build_options(refresh=True))
    assert second.scanned == first.scanned == 5 and second.skipped == ()
    assert {m.status for m in second.masters} == {"up to date"}


# --------------------------------------------------------------------------- noise maps and bad-pixel maps


def test_master_dark_keeps_its_temporal_noise_map(tmp_path: Path) -> None:
    """A master dark carries, in its NOISE extension, the per-pixel temporal scatter combine(noise=True) gives
    on the same files, plus the sources' ceiling (uint16: 65535) and gain; its primary image is unchanged (the
    extension is invisible to readers of the first image) and a master bias has no noise map."""
    paths, _ = noisy_darks(tmp_path / "src" / "darks")
    sensor = synth.Sensor(width=96, height=64, seed=31)
    for i in range(5):
        synth.write_fits(tmp_path / "src" / "bias" / f"bias_{i}.fits", sensor.bias(seed=i), kind="bias",
                         date_obs=NIGHT_1 + timedelta(minutes=i))
    build_library(tmp_path / "lib", [tmp_path / "src"], options=build_options())
    recs = records(tmp_path / "lib")
    dark = next(r for r in recs if r.kind is MasterKind.DARK)
    bias = next(r for r in recs if r.kind is MasterKind.BIAS)
    frames = [read_fits(p)[0] for p in paths]
    want = combine_arrays(frames, noise=True)
    image, header = read_fits(dark.path)
    np.testing.assert_allclose(image, want.image, rtol=1e-6)
    noise = read_fits_extension(dark.path, "NOISE")
    assert noise is not None and want.noise is not None
    np.testing.assert_allclose(noise[0], want.noise, rtol=1e-5)
    assert noise[1]["NCOMBINE"] == len(paths) and header["NOISEMAP"] is True
    assert header["SATURATE"] == 65535.0 and header["EGAIN"] == 1.0
    assert read_fits_extension(bias.path, "NOISE") is None and "NOISEMAP" not in read_fits_header(bias.path)


def steady_warm_sensor_library(src: Path) -> synth.Sensor:
    """Five darks (and five bias) of a sensor with 200 steady warm pixels (225-675 e- in 300 s: the dark
    subtracts them) and a flat set whose column 77 responds at 20 % (a dead column)."""
    sensor = synth.Sensor(width=128, height=96, seed=21, hot_pixels=200, hot_rate=1.5)
    write_group(src / "bias", sensor, Group(CAMERA_A, "bias", 5), seed=1, dialect="nina")
    write_group(src / "dark", sensor, Group(CAMERA_A, "dark", 5, exposure=300.0), seed=2, dialect="nina")
    flats = write_group(src / "flat", sensor, Group(CAMERA_A, "flat", 5, exposure=1.0, filter="L"), seed=3,
                        dialect="nina")
    for path in flats:
        with fits.open(path, mode="update") as hdul:
            data = hdul[0].data.astype(np.float64)
            data[:, 77] = 500 + (data[:, 77] - 500) * 0.2
            hdul[0].data = data.astype(np.uint16)
    return sensor


def test_bad_pixel_map_records_why_and_is_rebuilt_under_a_new_recipe(tmp_path: Path) -> None:
    """The map made from a dark with a noise map uses the temporal rule: the steady warm pixels are not flagged,
    the dead flat column is; its header counts the pixels per reason and records the thresholds. Built again
    under other bad-pixel numbers only the map is rebuilt (its build hash holds the recipe), and back."""
    sensor = steady_warm_sensor_library(tmp_path / "src")
    lib = tmp_path / "lib"
    build_library(lib, [tmp_path / "src"], options=build_options())
    bpm = next(r for r in records(lib) if r.kind is MasterKind.BADPIXELS)
    mask = fits.getdata(bpm.path).astype(bool)
    h = fits.getheader(bpm.path)
    warm = sensor.hot_pixel_yx[sensor.hot_pixel_yx[:, 1] != 77]  # outside the dead column
    assert not mask[warm[:, 0], warm[:, 1]].any() and mask[:, 77].all()
    assert h["BPMRULE"] == "temporal" and h["NBADPIX"] == mask.sum()
    assert h["NBADCOL"] == 96 and h["NCOLBAD"] == 1 and h["NBADHOT"] == 0
    assert mask.sum() - 96 < 0.001 * mask.size
    assert (h["BPMUNSTF"], h["BPMHOTF"], h["BPMNSRC"]) == (3.0, 5.0, "fit") and h["BPMHOTL"] > 0
    assert bpm.info["rule"] == "temporal" and bpm.info["reasons"]["column"] == 96
    stricter = build_library(lib, [tmp_path / "src"],
                             options=build_options(badpixels=BadPixelParams(unstable_factor=4.0)))
    assert {m.key.kind: m.status for m in stricter.masters} == {
        MasterKind.BIAS: "exists", MasterKind.DARK: "exists", MasterKind.FLAT: "exists",
        MasterKind.BADPIXELS: "rebuilt"}
    assert fits.getheader(bpm.path)["BPMUNSTF"] == 4.0
    again = build_library(lib, [tmp_path / "src"], options=build_options())
    assert {m.status for m in again.masters if m.key.kind is MasterKind.BADPIXELS} == {"rebuilt"}
    assert fits.getheader(bpm.path)["BPMUNSTF"] == 3.0


def test_dark_without_noise_map_gives_a_master_only_map_until_refreshed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A library whose dark was made before darks kept a noise map gets a map by the conservative master-only
    rule, which says so (header, note) and flags the steady warm pixels; a plain build keeps it; --refresh
    rebuilds the dark with its noise map and the map with the temporal rule, which does not flag them."""
    sensor = steady_warm_sensor_library(tmp_path / "src")
    lib = tmp_path / "lib"
    real_combine = build_module.combine

    def without_noise(*args: object, **kwargs: object) -> object:
        kwargs["noise"] = False
        return real_combine(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(build_module, "combine", without_noise)
        patch.setattr(build_module, "NOISE_RECIPE", 0)  # what older libraries' darks were built under
        old = build_library(lib, [tmp_path / "src"], options=build_options())
    note = next(m.note for m in old.masters if m.key.kind is MasterKind.BADPIXELS)
    assert "master-only" in note and "--refresh" in note
    bpm = next(r for r in records(lib) if r.kind is MasterKind.BADPIXELS)
    dark = next(r for r in records(lib) if r.kind is MasterKind.DARK)
    assert read_fits_extension(dark.path, "NOISE") is None
    h = fits.getheader(bpm.path)
    assert h["BPMRULE"] == "master-only" and any("no noise map" in c for c in h["COMMENT"])
    warm = sensor.hot_pixel_yx[sensor.hot_pixel_yx[:, 1] != 77]  # outside the dead column
    assert fits.getdata(bpm.path).astype(bool)[warm[:, 0], warm[:, 1]].all()
    kept = build_library(lib, [tmp_path / "src"], options=build_options())
    assert {m.status for m in kept.masters} <= {"exists", "up to date"}
    refreshed = build_library(lib, [tmp_path / "src"], options=build_options(refresh=True))
    status = {m.key.kind: m.status for m in refreshed.masters}
    assert status[MasterKind.DARK] == "rebuilt" and status[MasterKind.BADPIXELS] == "rebuilt"
    assert read_fits_extension(dark.path, "NOISE") is not None
    h = fits.getheader(bpm.path)
    mask = fits.getdata(bpm.path).astype(bool)
    assert h["BPMRULE"] == "temporal" and not mask[warm[:, 0], warm[:, 1]].any()


def test_real_st10_darks_give_a_small_map_of_unstable_pixels(shared_data: Path, tmp_path: Path) -> None:
    """`library build` on the ten real SBIG ST-10 darks: a master dark with its noise map and a bad-pixel map by
    the temporal rule flagging well under 0.1 % of the sensor (the master-only rule flagged 2.6 %), no whole
    column (the ST-10's warm and cool columns are steady: the dark corrects them), the pixels near the ADC
    ceiling among them, and every flagged pixel unstable, too hot or saturated by its noise map."""
    darks = shared_data / "oscaar_tres1_sbig_st10" / "darks"
    if not darks.is_dir():
        pytest.skip(f"{darks} is absent")
    lib = tmp_path / "lib"
    report = build_library(lib, [darks], options=build_options())
    assert report.count("failed") == 0
    bpm = next(r for r in records(lib) if r.kind is MasterKind.BADPIXELS)
    dark = next(r for r in records(lib) if r.kind is MasterKind.DARK)
    mask = fits.getdata(bpm.path).astype(bool)
    h = fits.getheader(bpm.path)
    assert h["BPMRULE"] == "temporal" and mask.mean() < 0.001
    assert h["NBADCOL"] == 0 and h["NBADSAT"] >= 1 and h["NBADUNST"] >= 1
    master, _ = read_fits(dark.path)
    noise = read_fits_extension(dark.path, "NOISE")
    assert noise is not None
    excess = master - np.median(master)
    sigma = np.sqrt(h["BPMNFLR"] ** 2 + h["BPMNSLP"] * np.maximum(excess, 0))
    explained = (noise[0] > h["BPMUNSTF"] * sigma) | (excess > h["BPMHOTL"]) | (master >= h["BPMSATL"])
    np.testing.assert_array_equal(mask, explained)
