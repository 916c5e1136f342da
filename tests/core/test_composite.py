"""Tests of astrod.core.composite: channels from filter names, the kinds they allow, the composites."""

from __future__ import annotations

import numpy as np
import pytest

from astrod.core.composite import channel_of, compose, kinds_for
from tests import synth


def test_filter_names_map_onto_channels() -> None:
    """Common spellings map onto their channel, case-insensitively; the config's names add or override."""
    assert [channel_of(n) for n in ("L", "lum", "Red", "g", "B", "H-alpha", "OIII", "S2", "UV")] == [
        "L", "L", "R", "G", "B", "Ha", "OIII", "SII", None]
    assert channel_of("Baader Ha 7nm", {"Baader Ha 7nm": "Ha"}) == "Ha"
    assert channel_of("R", {"r": "SII"}) == "SII"
    assert channel_of("R", {"r": "nonsense"}) is None


def test_kinds_follow_the_channels_present() -> None:
    """LRGB replaces RGB when L is there; SHO needs all three narrowband channels, HOO two; disabled kinds are
    not made."""
    assert kinds_for({"L", "R", "G", "B", "Ha", "OIII", "SII"}) == ["lrgb", "sho", "hoo"]
    assert kinds_for({"R", "G", "B"}) == ["rgb"]
    assert kinds_for({"Ha", "OIII"}) == ["hoo"]
    assert kinds_for({"L", "R", "G", "B"}, ("rgb",)) == ["rgb"]
    assert kinds_for({"L", "Ha"}) == []


def _planes(seed: int = 3) -> dict[str, np.ndarray]:
    cat = synth.make_catalogue(width=160, height=120, n_stars=60, seed=seed, flux_min=2e4, flux_max=5e5,
                               min_separation=8.0)
    scene, _ = synth.render_stars(width=160, height=120, catalogue=cat, fwhm=2.5, sky=0.0)
    rng = np.random.default_rng(seed)
    throughput = {"L": 3.0, "R": 0.8, "G": 1.0, "B": 0.5, "Ha": 0.2, "OIII": 0.1, "SII": 0.05}
    sky = {"L": 900.0, "R": 400.0, "G": 500.0, "B": 200.0, "Ha": 50.0, "OIII": 40.0, "SII": 30.0}
    return {c: (scene * throughput[c] + sky[c] + rng.standard_normal(scene.shape) * 2.0).astype(np.float32)
            for c in throughput}


def test_rgb_and_lrgb_are_neutral_and_narrowband_is_scaled() -> None:
    """RGB from unequal filters comes out with an equal sky in every plane; LRGB keeps RGB's colour with L's
    detail; HOO's green and blue are the same OIII; SHO's planes are scaled to a common bright end."""
    planes = _planes()
    rgb = compose("rgb", planes)
    sky = np.median(rgb.reshape(3, -1), axis=1)
    assert np.ptp(sky) / sky.mean() < 0.02
    lrgb = compose("lrgb", planes)
    assert lrgb.shape == (3, 120, 160) and np.isfinite(lrgb).all()
    sky = np.median(lrgb.reshape(3, -1), axis=1)
    assert np.ptp(sky) / sky.mean() < 0.02  # no colour from the sky's noise
    assert np.corrcoef(lrgb.mean(axis=0).ravel(), planes["L"].ravel())[0, 1] > 0.99  # L's brightness
    hoo = compose("hoo", planes)
    np.testing.assert_array_equal(hoo[1], hoo[2])
    sho = compose("sho", planes)
    tops = np.percentile(sho.reshape(3, -1), 99.9, axis=1)
    np.testing.assert_allclose(tops, 1.0, atol=0.02)
    with pytest.raises(ValueError, match="needs SII"):
        compose("sho", {"Ha": planes["Ha"], "OIII": planes["OIII"]})
