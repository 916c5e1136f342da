"""The decided stack (decisions on measurements, pixels in separate warp and band steps) gives what the live
stack of ``astrod stack`` gives on the same frames."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from astrod.demo import synth
from astrod.io.files import ensure_folder
from astrod.pipeline.ingest import ReadOptions
from astrod.pipeline.oneshot import stack_files
from astrod.pipeline.reprocess_stack import (
    DecidedStack,
    assemble,
    integrate_rows,
    measure_frame,
    warp_frame,
)
from astrod.pipeline.settings import PipelineSettings

SIZE = 128
OPTIONS = ReadOptions.of({}, ())


def _session(root: Path) -> list[Path]:
    """Seven lights whose first is blurred (the reference is re-picked after five) and a last cloudy one."""
    kw = dict(n_frames=7, width=SIZE, height=SIZE, seed=55, max_shift=6.0, n_stars=70, flux_min=2e4, flux_max=1e6)
    sharp = synth.make_session(fwhm=2.4, **kw)  # type: ignore[arg-type]
    blurred = synth.make_session(fwhm=4.0, **kw)  # type: ignore[arg-type]
    frames = [blurred.frames[0], *sharp.frames[1:]]
    scene, _ = synth.render_stars(width=SIZE, height=SIZE, catalogue=sharp.catalogue, sky=100.0)
    frames.append(sharp.sensor.light(synth.cloudy(scene, transmission=0.2, extra_sky=600.0), exposure=60.0,
                                     temperature=-10.0, seed=9))
    session = replace(sharp, frames=frames, truths=[*sharp.truths, sharp.truths[0]],
                      pier_sides=[*sharp.pier_sides, "East"])
    return session.write(root)


def _decided(paths: list[Path], settings: PipelineSettings, cache: Path, *, band_rows: int) -> tuple[DecidedStack,
                                                                                                     np.ndarray]:
    now = datetime.now(UTC)
    stack = DecidedStack(settings)
    for path in paths:
        stack.offer(measure_frame(path, settings, options=OPTIONS, calibrator=None, now=now))
    names = [warp_frame(order, cache, settings, options=OPTIONS, calibrator=None) for order in stack.orders]
    integration = stack.integration()
    assert names == list(integration.files)
    height = integration.shape[-2]
    parts = []
    for r0 in range(0, height, band_rows):
        r1 = min(height, r0 + band_rows)
        parts.append((r0, r1, *integrate_rows(integration, cache, r0, r1, memory_bytes=2**20)))
    image, _count = assemble(integration.shape, parts)
    return stack, image


def test_decided_stack_equals_the_live_stack(tmp_path: Path) -> None:
    """Same frames stacked and rejected with the same reasons, the same re-picked reference and table figures,
    and the same pixels (bands of 37 rows integrated apart) as `stack_files`."""
    paths = _session(tmp_path / "lights")
    settings = PipelineSettings(final_rejection="winsorized")
    live = stack_files(paths, settings, cache_dir=tmp_path / "live-cache")
    stack, image = _decided(paths, settings, ensure_folder(tmp_path / "cache"), band_rows=37)
    product = stack.product(image, np.zeros(image.shape, dtype=np.uint16))
    assert any("reference re-picked" in h for h in live.history)  # the re-pick path is exercised
    assert [(r["path"], r["status"], r["reason"]) for r in product.rows] == \
        [(r["path"], r["status"], r["reason"]) for r in live.rows]
    assert any(r["status"] == "rejected" for r in live.rows)
    for mine, theirs in zip(product.rows, live.rows, strict=True):
        for column in ("dx", "dy", "weight", "transparency", "fwhm", "residual_px"):
            expected = theirs[column]
            assert mine[column] == (None if expected is None else pytest.approx(expected, rel=1e-9)), column
    assert product.header["REFFRAME"] == live.header["REFFRAME"]
    assert product.history == live.history
    finite = np.isfinite(live.image)
    assert np.array_equal(finite, np.isfinite(image))
    scale = float(np.nanmax(np.abs(live.image)))
    assert float(np.max(np.abs(image[finite] - live.image[finite]))) <= 1e-5 * scale


def test_decided_stack_needs_a_final_rejection() -> None:
    """Without a re-integration there is nothing for band tasks to integrate: refused at once."""
    with pytest.raises(ValueError, match="final_rejection"):
        DecidedStack(PipelineSettings(final_rejection="none"))
