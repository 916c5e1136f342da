"""Tests of astrod.pipeline.oneshot: expanding inputs, ordering with a reference, stacking files."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrod.errors import AstrodError
from astrod.io.frames import expand_frame_paths as expand_paths
from astrod.pipeline.live import FrameResult, PipelineSettings
from astrod.pipeline.oneshot import order_frames, stack_files
from tests import synth


def test_expand_paths_lists_frames_under_folders(tmp_path: Path) -> None:
    """Folders become their frame files (recursively, sorted, hidden and non-frame files left out); files stay
    as given, in order."""
    for name in ("b/2.fits", "b/1.fit", "b/sub/3.fits", "b/.tmp.fits", "b/notes.txt", "a.fits"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = expand_paths([tmp_path / "a.fits", tmp_path / "b"])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a.fits", "b/1.fit", "b/2.fits", "b/sub/3.fits"]


def test_order_frames_puts_the_reference_first_once(tmp_path: Path) -> None:
    """The reference comes first, and a path given twice (even spelled differently) is kept once."""
    a, b, c = tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits"
    assert order_frames([a, b, c, tmp_path / "x" / ".." / "b.fits"], b) == [b, a, c]
    assert order_frames([a, b], None) == [a, b]
    assert order_frames([a], c) == [c, a]


def test_stack_files_reports_every_frame(tmp_path: Path) -> None:
    """Each frame's result reaches the callback in order; the product's table has one row per file."""
    session = synth.make_session(n_frames=4, width=256, height=256, seed=61, max_shift=10.0)
    paths = session.write(tmp_path / "in")
    seen: list[FrameResult] = []
    product = stack_files([*paths, tmp_path / "missing.fits"], PipelineSettings(final_rejection="sigma"),
                          reference=paths[2], on_result=seen.append)
    assert [r.path for r in seen] == [paths[2], paths[0], paths[1], paths[3], tmp_path / "missing.fits"]
    assert [r.status for r in seen] == ["stacked"] * 4 + ["rejected"]
    assert seen[-1].reason is not None and "missing.fits" in seen[-1].reason
    assert product.header["STACKMTH"][0] == "sigma" and product.header["NCOMBINE"][0] == 4
    assert len(product.rows) == 5


def test_stack_files_without_any_good_frame_raises(tmp_path: Path) -> None:
    """When nothing can be stacked the caller gets an AstrodError, not an empty stack."""
    with pytest.raises(AstrodError, match="no frame was stacked"):
        stack_files([tmp_path / "none.fits"], PipelineSettings())


def test_a_reference_given_is_kept_and_otherwise_the_best_frame_becomes_it(tmp_path: Path) -> None:
    """Frames whose first is defocused: without --reference the session re-picks the sharp frame as its
    reference; with --reference the frame given stays the reference (no re-pick)."""
    session = synth.make_session(n_frames=6, width=256, height=256, seed=62, max_shift=10.0, n_stars=120,
                                 flux_min=1e4, flux_max=1e6)
    defocused, _ = synth.render_stars(width=256, height=256, catalogue=session.catalogue, fwhm=4.8,
                                      beta=session.beta, sky=session.sky)
    first = session.sensor.light(defocused, exposure=60.0, temperature=-10.0, seed=3)
    paths = [synth.write_fits(tmp_path / "in" / "a0.fits", first)]
    paths += [synth.write_fits(tmp_path / "in" / f"a{i}.fits", session.frames[i]) for i in range(1, 6)]
    picked = stack_files(paths, PipelineSettings())
    assert picked.header["REFFRAME"][0] != "a0.fits"
    assert any("reference re-picked" in h and "replaces a0.fits" in h for h in picked.history)
    given = stack_files(paths, PipelineSettings(), reference=paths[0])
    assert given.header["REFFRAME"][0] == "a0.fits"
    assert not any("re-picked" in h for h in given.history)
