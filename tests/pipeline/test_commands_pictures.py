"""``astrod stack`` on pictures: debayered 8-bit colour JPEGs, as smart telescopes and live-stacking cameras
write them, with a known shift or an alt-az mount's field rotation between frames; written by Pillow from seeded
synthetic star fields whose truth is known."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from PIL import Image
from scipy.spatial import cKDTree
from xisf import XISF

from astrod.model import Transform
from tests import synth
from tests.pipeline.conftest import grid_rms, read_stack, read_table, run_cli, table_transform

W, H = 512, 384
GAIN = 12.0  # e-/ADU of the synthetic 8-bit camera: 2 ADU of sky noise


def _about_centre(*, dx: float, dy: float, rotation_deg: float) -> Transform:
    """Frame -> reference: a rotation about the frame's centre, then a shift."""
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    t = math.radians(rotation_deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    offset = c - r @ c + np.array([dx, dy])
    return Transform.similarity(dx=float(offset[0]), dy=float(offset[1]), rotation_deg=rotation_deg)


def _jpeg_sequence(folder: Path, *, seed: int, n: int, max_shift: float, max_rotation_deg: float,
                   ) -> tuple[list[Path], list[Transform], synth.Catalogue]:
    """``n`` colour JPEGs (quality 90) of one star field, the first the reference; their true transforms."""
    folder.mkdir(parents=True)
    cat = synth.make_catalogue(width=W, height=H, n_stars=300, seed=seed, margin=60, flux_min=3e3, flux_max=1e5,
                               power_index=0.8, min_separation=6.0)
    rng = np.random.default_rng(seed)
    paths, truths = [], []
    for i in range(n):
        truth = Transform.identity() if i == 0 else _about_centre(
            dx=float(rng.uniform(-max_shift, max_shift)), dy=float(rng.uniform(-max_shift, max_shift)),
            rotation_deg=max_rotation_deg * i / max(n - 1, 1))
        scene, _ = synth.render_stars(width=W, height=H, catalogue=cat, transform=truth, fwhm=3.2, sky=600.0)
        electrons = rng.poisson(synth.to_rgb(scene, colour=(1.0, 0.85, 0.6))).astype(np.float64)
        rgb = np.clip(np.rint(electrons / GAIN + 8.0), 0, 255).astype(np.uint8)
        path = folder / f"Light_{i:03d}.jpg"
        Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, 2))).save(path, quality=90)
        paths.append(path)
        truths.append(truth)
    return paths, truths, cat


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Transform]]:
    root = tmp_path_factory.mktemp("jpeg_shift")
    paths, truths, _ = _jpeg_sequence(root / "frames", seed=61, n=6, max_shift=15.0, max_rotation_deg=0.0)
    return root, paths, truths


def test_jpeg_sequence_registers_within_a_tenth_of_a_pixel(shifted: tuple[Path, list[Path], list[Transform]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every frame of a shifted 8-bit colour JPEG sequence is stacked, registered within 0.1 px (RMS over the
    frame) of its true shift; the exposure is reported unknown."""
    root, paths, truths = shifted
    table = root / "frames.csv"
    assert run_cli("stack", root / "frames", "-o", root / "stack.fits", "--frames-table", table) == 0
    assert "exposure unknown" in capsys.readouterr().out
    rows = {Path(r["path"]).name: r for r in read_table(table)}
    for path, truth in zip(paths, truths, strict=True):
        row = rows[path.name]
        assert row["status"] == "stacked", row["reason"]
        assert grid_rms(table_transform(row), truth, width=W, height=H) < 0.1
        assert float(row["noise"]) > 0  # quantised 8-bit sky noise is measured, not 0


def test_stack_writer_follows_the_output_suffix(shifted: tuple[Path, list[Path], list[Transform]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """-o .xisf writes float32 RGB with the provenance keywords (no EXPTIME: the exposure is unknown); -o .tif a
    16-bit RGB TIFF; an unknown suffix is refused before any work."""
    root, paths, _ = shifted
    assert run_cli("stack", *paths[:3], "-o", root / "s.xisf", "--method", "mean") == 0
    doc = XISF(str(root / "s.xisf"))
    pixels = doc.read_image(0, data_format="channels_first")
    assert pixels.dtype == np.float32 and pixels.shape == (3, H, W)
    kw = doc.get_images_metadata()[0]["FITSKeywords"]
    assert kw["NCOMBINE"][0]["value"] == "3" and kw["PLANES"][0]["value"] == "R,G,B"
    assert kw["CREATOR"][0]["value"].startswith("astrod ")
    assert "EXPTIME" not in kw and "EXPTOTAL" not in kw
    assert run_cli("stack", *paths[:3], "-o", root / "s.tif", "--method", "mean") == 0
    with tifffile.TiffFile(root / "s.tif") as tif:
        assert tif.asarray().dtype == np.uint16 and tif.asarray().shape == (H, W, 3)
    capsys.readouterr()
    assert run_cli("stack", *paths[:3], "-o", root / "s.bmp") == 2
    assert "no stack writer for '.bmp'" in capsys.readouterr().err
    assert not (root / "s.bmp").exists()


def _axis_ratios(plane: npt.NDArray[np.float64], xy: npt.NDArray[np.float64], *, radius: int = 5,
                 ) -> npt.NDArray[np.float64]:
    """Minor/major axis ratio of each star's second moments (background-subtracted stamp)."""
    out = []
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    for x, y in xy:
        cx, cy = round(x), round(y)
        stamp = plane[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
        ring = plane[max(cy - 3 * radius, 0):cy + 3 * radius + 1, max(cx - 3 * radius, 0):cx + 3 * radius + 1]
        if stamp.shape != yy.shape or not np.all(np.isfinite(ring)):
            continue
        s = np.clip(stamp - np.median(ring), 0, None)
        total = s.sum()
        if not total > 0:
            continue
        mx, my = (s * xx).sum() / total, (s * yy).sum() / total
        cxx = (s * (xx - mx) ** 2).sum() / total
        cyy = (s * (yy - my) ** 2).sum() / total
        cxy = (s * (xx - mx) * (yy - my)).sum() / total
        lo, hi = np.linalg.eigvalsh(np.array([[cxx, cxy], [cxy, cyy]]))
        out.append(math.sqrt(max(lo, 0.0) / hi))
    return np.asarray(out)


def test_alt_az_jpegs_stack_in_colour_with_round_stars_at_the_corners(tmp_path: Path) -> None:
    """Eight colour JPEGs turning by up to 2° (field rotation of an alt-az mount) plus shifts: all are stacked
    into a (3, H, W) cube, and stars in each corner of every plane are as round as at the centre (a rotation
    left unregistered smears a corner star 8 px at 2°)."""
    paths, truths, cat = _jpeg_sequence(tmp_path / "lights", seed=71, n=8, max_shift=10.0, max_rotation_deg=2.0)
    out, table = tmp_path / "stack.fits", tmp_path / "frames.csv"
    assert run_cli("stack", tmp_path / "lights", "-o", out, "--frames-table", table) == 0
    assert [r["status"] for r in read_table(table)] == ["stacked"] * len(paths)
    cube, header = read_stack(out)
    assert cube.shape == (3, H, W) and header["PLANES"] == "R,G,B" and header["NCOMBINE"] == len(paths)
    assert "EXPTIME" not in header

    inside = (cat.x > 12) & (cat.x < W - 12) & (cat.y > 12) & (cat.y < H - 12)
    nearest, _ = cKDTree(cat.xy).query(cat.xy, k=2)
    bright = inside & (nearest[:, 1] > 12) & (cat.flux > 4e3) & (cat.flux < 2.5e4)  # peaks 30-180 ADU of 255
    corner = 150
    at_corner = {
        name: bright & (np.abs(cat.x - cx) < corner) & (np.abs(cat.y - cy) < corner)
        for name, (cx, cy) in {"top-left": (0, 0), "top-right": (W, 0), "bottom-left": (0, H),
                               "bottom-right": (W, H)}.items()
    }
    for c in range(3):
        for name, sel in at_corner.items():
            ratios = _axis_ratios(cube[c], cat.xy[sel])
            assert ratios.size >= 5, name
            assert float(np.median(ratios)) > 0.9, (c, name, ratios)

    # The measure sees a smear: the same frames averaged after undoing only each one's shift at the centre
    # give elongated corner stars.
    centre = np.array([[(W - 1) / 2, (H - 1) / 2]])
    shifted_only = np.zeros((H, W))
    for path, truth in zip(paths, truths, strict=True):
        d = truth.apply(centre)[0] - centre[0]
        green = np.asarray(Image.open(path), dtype=np.float32)[:, :, 1]
        shifted_only += cv2.warpAffine(green, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (W, H),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    smeared = _axis_ratios(shifted_only / len(paths), cat.xy[at_corner["top-left"] | at_corner["bottom-right"]])
    assert float(np.median(smeared)) < 0.7
