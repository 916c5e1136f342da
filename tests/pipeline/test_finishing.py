"""Tests of astrod.pipeline.finishing (and the report it writes): the finished picture of a closed session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core.background import background_mask
from astrod.core.colour import aperture_photometry
from astrod.core.stars import detect_stars
from astrod.io.fits import read_fits, read_fits_header
from astrod.io.frames import read_frame
from astrod.io.images import read_image
from astrod.pipeline.finishing import apply_finish, finish_session, finished_header, plan_finish
from astrod.pipeline.live import LiveStack, PipelineSettings, StackProduct
from astrod.pipeline.settings import FinishSettings
from tests import synth

F32 = npt.NDArray[np.float32]
SUMMARY = {"session": "s1", "key": {"target": "M 27", "filter": "L", "camera": "synthetic OSC"}, "stacked": 5,
           "rejected": 0, "total_exposure_s": 300.0, "rejections": {}}


def _pixels(path: Path) -> F32:
    data = read_fits(path)
    return np.asarray(data[0] if isinstance(data, tuple) else data, dtype=np.float32)


def neutral_figures(image: F32) -> tuple[float, tuple[float, float], int]:
    """What the done-when measures on a finished colour picture: the spread of the three channels' star-masked
    background medians (relative to their mean), the stars' median R/G and B/G (aperture photometry on stars
    detected afresh at full size, signal-to-noise ≥ 30), and how many stars that was."""
    lum = np.nanmean(image, axis=0)
    keep = background_mask(lum)
    bg = [float(np.median(image[c][keep])) for c in range(3)]
    stars = detect_stars(np.nan_to_num(lum, nan=float(np.nanmedian(lum))), bin2=False, max_stars=200)
    flux, err, _ = aperture_photometry(image, stars.x, stars.y, radius=float(np.clip(2 * np.median(stars.fwhm), 3, 12)))
    ok = np.all(np.isfinite(flux), axis=0) & np.all(flux / err > 30, axis=0)
    ratio = (float(np.median(flux[0, ok] / flux[1, ok])), float(np.median(flux[2, ok] / flux[1, ok])))
    return float(np.ptp(bg) / np.mean(bg)), ratio, int(ok.sum())


def bayer_stack(folder: Path, n: int = 5) -> tuple[StackProduct, LiveStack]:
    """A synthetic Bayer (RGGB) session with the sensor's colour cast (QE R 0.75, G 1, B 0.6: a green sky and
    yellow-green stars), a sky gradient of about 10 %, dithered frames; written as FITS lights, read back and
    stacked without calibration."""
    sensor = synth.Sensor(width=384, height=256, seed=17, bayer="RGGB", vignetting=0.0, dust=0, hot_pixels=0)
    session = synth.make_session(n_frames=n, width=384, height=256, seed=23, sensor=sensor, n_stars=150,
                                 sky=800.0, gradient=(0.2, 0.1), max_shift=12.0, max_rotation_deg=0.5,
                                 flux_min=2e4, flux_max=1e6, exposure=60.0)
    folder.mkdir()
    live = LiveStack(PipelineSettings())
    for path in session.write(folder, object="M 27"):
        result = live.process(read_frame(path))
        assert result.status == "stacked", result.reason
    return live.finalize(), live


@pytest.fixture(scope="module")
def bayer_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[StackProduct, LiveStack]:
    """`bayer_stack`, made once for this module's tests (each takes its own copy of the pixels)."""
    return bayer_stack(tmp_path_factory.mktemp("bayer") / "lights")


@pytest.fixture
def bayer_product(bayer_session: tuple[StackProduct, LiveStack]) -> StackProduct:
    return bayer_session[0]


def test_the_live_preview_of_a_colour_session_is_neutral(bayer_session: tuple[StackProduct, LiveStack]) -> None:
    """The preview JPEG's picture is colour-calibrated as it is made: its sky is grey (channel medians of the
    8-bit picture within 2 levels), while the linear preview keeps the cast; the factors are kept for its
    header."""
    _, live = bayer_session
    linear, picture = live.preview(max_size=200)
    medians = np.median(picture.reshape(-1, 3), axis=0)
    assert np.ptp(medians) <= 2
    raw = np.median(linear.reshape(3, -1), axis=1)
    assert np.ptp(raw) / raw.mean() > 0.1
    assert live.preview_balance is not None and live.preview_balance.cards()["CBGAIN3"][0] > 1.3


def test_synthetic_bayer_session_is_finished_neutral(bayer_product: StackProduct, tmp_path: Path) -> None:
    """A synthetic OSC session with a known colour cast: the stack keeps the cast (it stays uncalibrated, its
    header names the factors), the finished picture's background channel medians agree within 2 % and the
    stars' median colour is white within 3 %; it is cropped to the well-covered area; the products and the
    report are written."""
    product = dataclasses.replace(bayer_product, image=bayer_product.image.copy())
    written = finish_session(product, FinishSettings(), tmp_path, frames=5, formats=("fits", "jpg", "tiff"),
                             summary=SUMMARY)
    names = {p.name for p in written}
    assert {"stack.fits", "stack.jpg", "stack.tif", "final.fits", "final.jpg", "final.tif", "background.fits",
            "report.html"} <= names
    assert (tmp_path / "frames.csv").is_file()
    stack = _pixels(tmp_path / "stack.fits")
    spread, ratio, _ = neutral_figures(stack)
    assert spread > 0.1 and ratio[1] < 0.8  # the cast is there in the linear stack
    final = _pixels(tmp_path / "final.fits")
    spread, ratio, n = neutral_figures(final)
    assert spread <= 0.02
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)
    assert n >= 30
    assert final.shape[1] < stack.shape[1] and final.shape[2] < stack.shape[2]
    head = read_fits_header(tmp_path / "stack.fits")
    final_head = read_fits_header(tmp_path / "final.fits")
    assert head["CBGAIN3"] == pytest.approx(final_head["CBGAIN3"]) and head["CBGAIN3"] > 1.3
    assert final_head["FINSTEPS"] == "crop+background+colour" and final_head["NCOMBINE"] == 5
    assert any("from: stack.fits" in h for h in final_head["HISTORY"])
    picture, _ = read_image(tmp_path / "final.tif")
    assert picture.shape == final.shape
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "M 27" in page and "data:image/png;base64," in page and "data:image/jpeg;base64," in page


def test_gradient_is_removed_from_the_finished_picture(bayer_product: StackProduct) -> None:
    """The injected gradient (~10 % of the sky) is gone from the finished picture: per channel, star-free
    patch medians vary by ≤ 1 % of the sky (noise of 5 frames included)."""
    product = bayer_product
    plan = plan_finish(product, FinishSettings(), frames=5)
    final = apply_finish(product.image, plan)
    lum = np.nanmean(final, axis=0)
    keep = background_mask(lum)
    h, w = lum.shape
    for c in range(3):
        sky = float(np.median(final[c][keep]))
        patches = [np.median(final[c, y:y + 40, x:x + 40][keep[y:y + 40, x:x + 40]])
                   for y in range(0, h - 40, 40) for x in range(0, w - 40, 40)]
        assert np.ptp(patches) <= 0.01 * sky


def test_finished_header_moves_the_wcs_and_keeps_the_stack_in_place() -> None:
    """The crop moves CRPIX by its corner; applying out of place leaves the stack unchanged, in place makes
    the stack's own pixels the picture."""
    rng = np.random.default_rng(1)
    image = (100.0 + rng.standard_normal((64, 80))).astype(np.float32)
    count = np.zeros((64, 80), np.uint16)
    count[4:60, 6:75] = 10
    product = StackProduct(image=image, header={"CRPIX1": (40.5, "x"), "CRPIX2": (32.5, "y"),
                                                "CREATOR": ("astrod", "")}, rows=[], count=count)
    plan = plan_finish(product, FinishSettings(background=False), frames=10)
    assert plan.crop == (4, 60, 6, 75) and plan.balance is None
    cards, _ = finished_header(product, plan)
    assert cards["CRPIX1"][0] == 34.5 and cards["CRPIX2"][0] == 28.5
    before = image.copy()
    out = apply_finish(image, plan)
    np.testing.assert_array_equal(image, before)
    inplace = apply_finish(image, plan, in_place=True)
    assert np.shares_memory(inplace, image) and inplace.shape == out.shape == (56, 69)


def test_real_seestar_frames_are_finished_neutral(shared_data: Path, tmp_path: Path) -> None:
    """On the four real Seestar S50 frames (raw GRBG, a bright green sky): the finished picture's background
    channel medians agree within 2 % and the stars' median colour is white within 3 %."""
    folder = shared_data / "seestar_s50_ngc7023_wcs"
    live = LiveStack(PipelineSettings())
    for path in sorted(folder.glob("*.fit")):
        assert live.process(read_frame(path)).status == "stacked"
    product = live.finalize()
    before, ratio_before, _ = neutral_figures(product.image)
    assert before > 0.05 and ratio_before[1] < 0.7  # a green sky, yellow stars (B/G about 0.57) as stacked
    finish_session(product, FinishSettings(), tmp_path, frames=4, formats=("fits", "jpg"), summary=SUMMARY)
    spread, ratio, n = neutral_figures(_pixels(tmp_path / "final.fits"))
    assert spread <= 0.02
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)
    assert n >= 20


def test_astrod_stack_finish_writes_the_finished_picture_beside(tmp_path: Path) -> None:
    """``astrod stack --finish`` writes OUT.final.fits and .jpg (the config's formats) and the removed sky model
    beside the stack, whose header names the crop; the stack itself stays uncropped."""
    from tests.pipeline.conftest import run_cli

    session = synth.make_session(n_frames=4, width=200, height=160, seed=8, n_stars=60, max_shift=6.0,
                                 max_rotation_deg=0.3, gradient=(0.1, 0.0))
    paths = session.write(tmp_path / "lights")
    out = tmp_path / "out" / "m31.fits"
    assert run_cli("stack", *paths, "-o", out, "--method", "mean", "--finish") == 0
    assert {p.name for p in out.parent.iterdir()} >= {"m31.fits", "m31.final.fits", "m31.final.jpg",
                                                      "m31.final-background.fits"}
    stack, final = _pixels(out), _pixels(out.parent / "m31.final.fits")
    assert stack.shape == (160, 200) and final.shape[0] < 160 and final.shape[1] < 200
    head = read_fits_header(out)
    assert head["FINCROP"] == read_fits_header(out.parent / "m31.final.fits")["FINCROP"]


def test_a_stack_that_cannot_be_finished_still_gets_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the finishing kernels fail on a picture, the session's stack and frames table are still written
    (the close must not be retried for ever) and no finished product pretends to exist."""
    import astrod.pipeline.finishing as finishing

    def broken(*_args: object, **_kwargs: object) -> None:
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(finishing, "fit_background", broken)
    image = np.full((40, 60), 100.0, np.float32)
    product = StackProduct(image=image, header={"CREATOR": ("astrod", "")}, rows=[])
    written = finish_session(product, FinishSettings(), tmp_path, frames=3, formats=("fits",), summary=SUMMARY)
    assert [p.name for p in written] == ["stack.fits"]
    assert (tmp_path / "frames.csv").is_file() and not (tmp_path / "final.fits").exists()
