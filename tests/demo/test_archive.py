"""The synthetic archive holds what its docstring promises: 3 nights × 2 targets × 2 filters of lights (one
cloudy light more in each night's first session) and a calibration set per filter."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits

from astrod.demo.archive import FILTERS, NIGHTS, TARGETS, make_archive


def test_archive_layout_and_headers(tmp_path: Path) -> None:
    """12 sessions of ``frames`` lights whose headers name their target and filter, 3 cloudy lights, and bias,
    dark, flat and dark-flat frames for each filter."""
    archive = make_archive(tmp_path, frames=1, size=64)
    assert len(archive.lights) == len(NIGHTS) * len(TARGETS) * len(FILTERS) == 12
    counts = sorted(len(paths) for paths in archive.lights.values())
    assert counts == [1] * 9 + [2] * 3
    for (night, target, band), paths in archive.lights.items():
        for path in paths:
            header = fits.getheader(path)
            assert (header["OBJECT"], header["FILTER"]) == (target, band)
            assert path.parent.parent.name == night
    kinds = sorted(str(fits.getheader(p)["IMAGETYP"]) for p in archive.calibration.rglob("*.fits"))
    assert len(kinds) == 24 and len(set(kinds)) == 4
