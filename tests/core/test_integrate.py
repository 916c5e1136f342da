"""Tests of astrod.core.integrate's sorted-network kernel against the scalar one it stands in for."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from astrod.core import integrate
from astrod.core.integrate import integrate_bands, sorting_network

F32 = npt.NDArray[np.float32]


@pytest.mark.parametrize("n", [*range(1, 18), 31, 32, 33, 64])
def test_sorting_network_sorts_any_count_of_values(n: int) -> None:
    """The cut Batcher network sorts n values, ties and infinities included (0/1 inputs for n ≤ 12 are
    exhaustive: a network that sorts every 0/1 input sorts every input)."""
    network = sorting_network(n)
    assert np.all(network[:, 0] < network[:, 1]) and np.all(network < n)
    rng = np.random.default_rng(n)
    cases = [rng.standard_normal(n) for _ in range(200)] + [rng.integers(0, 3, n).astype(float) for _ in range(50)]
    cases.append(np.where(rng.uniform(size=n) < 0.3, np.inf, rng.standard_normal(n)))
    if n <= 12:
        cases += [np.array(bits, dtype=float) for bits in itertools.product((0.0, 1.0), repeat=n)]
    for values in cases:
        x = values.copy()
        for lo, hi in network:
            x[lo], x[hi] = min(x[lo], x[hi]), max(x[lo], x[hi])
        np.testing.assert_array_equal(x, np.sort(values))


def _run(kernel: str, band: F32, method: int, weights: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64],
         scales: npt.NDArray[np.float64]) -> tuple[F32, npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """Image, count and rejected maps of one band through ``kernel`` ("scalar" or "network"), κ 3 / 2.5."""
    rows, cols = band.shape[1:]
    out = np.empty((rows, cols), dtype=np.float32)
    count = np.empty((rows, cols), dtype=np.uint16)
    rejected = np.empty((rows, cols), dtype=np.uint16)
    if kernel == "scalar":
        integrate._integrate_band(band, weights, offsets, scales, method, 3.0, 2.5, out, count, rejected)
    else:
        integrate._integrate_band_network(band, weights, offsets, scales, sorting_network(band.shape[0]), method,
                                          3.0, 2.5, out, count, rejected)
    return out, count, rejected


@pytest.mark.parametrize("n", [3, 4, 5, 12, 20])
@pytest.mark.parametrize("method", [0, 1, 2])
def test_network_kernel_equals_the_scalar_kernel(n: int, method: int) -> None:
    """With weights, norms, outliers, NaN samples, pixels without any sample, and a row width that is not a
    whole number of chunks, the network kernel's counts equal the scalar kernel's and its means agree to
    float32 rounding (winsorizing from prefix sums changes σ by ~1e-15 only)."""
    rng = np.random.default_rng(100 + n)
    rows, cols = 5, 3 * 64 + 17
    band = (1000.0 + 20.0 * rng.standard_normal((n, rows, cols))).astype(np.float32)
    band[rng.uniform(size=band.shape) < 0.02] += 500.0  # hot pixels, satellites
    band[rng.uniform(size=band.shape) < 0.01] -= 300.0
    band[rng.uniform(size=band.shape) < 0.05] = np.nan  # frames that do not cover a pixel
    band[:, 0, :3] = np.nan
    band[:, 1, :5] = np.float32(1234.0)  # ties: σ = 0
    weights = rng.uniform(0.5, 2.0, n)
    offsets = rng.normal(0.0, 10.0, n)
    scales = rng.uniform(0.9, 1.1, n)
    o0, c0, r0 = _run("scalar", band, method, weights, offsets, scales)
    o1, c1, r1 = _run("network", band, method, weights, offsets, scales)
    np.testing.assert_array_equal(c1, c0)
    np.testing.assert_array_equal(r1, r0)
    np.testing.assert_array_equal(np.isnan(o1), np.isnan(o0))
    np.testing.assert_allclose(o1, o0, rtol=2e-7, equal_nan=True)
    assert np.all(c0[0, :3] == 0) and np.all(np.isnan(o1[0, :3]))


def test_integrate_bands_uses_the_scalar_kernel_for_linear_fit_and_many_frames() -> None:
    """Linear fit and more frames than `_NETWORK_MAX_FRAMES` still integrate (through `_integrate_band`)."""
    rng = np.random.default_rng(5)
    for n, method in ((integrate._NETWORK_MAX_FRAMES + 1, "winsorized"), (8, "linear_fit")):
        cube = (100.0 + rng.standard_normal((n, 6, 70))).astype(np.float32)

        def read(row0: int, row1: int, cube: F32 = cube) -> F32:
            return cube[:, row0:row1]

        result = integrate_bands(read, n, (6, 70), method=method)  # type: ignore[arg-type]
        assert np.all(np.isfinite(result.image)) and abs(float(np.median(result.image)) - 100.0) < 0.2
        assert np.all(result.count + result.rejected == n)


def _iterated_winsorized_sigma(s: np.ndarray, med: float, sigma: float) -> float:
    """siril's loop run until σ stops moving (not to its 5e-4 tolerance): σ ← 1.134·std(clip(s, med ± 1.5σ))."""
    for _ in range(100_000):
        new = 1.134 * float(np.std(np.clip(s, med - 1.5 * sigma, med + 1.5 * sigma), ddof=1))
        if abs(new - sigma) <= 1e-15 * sigma:
            return new
        sigma = new
    return sigma


@pytest.mark.parametrize("case", ["gaussian", "outliers", "ties", "bimodal", "uniform"])
def test_winsorized_sigma_is_the_limit_of_the_winsorizing_loop(case: str) -> None:
    """The closed-form σ equals the winsorizing loop iterated to convergence (1e-9 relative) for samples of 4
    to 70 values: clean, with hot outliers, with many equal values, from two populations, and flat."""
    rng = np.random.default_rng(["gaussian", "outliers", "ties", "bimodal", "uniform"].index(case) + 90)
    worst = 0.0
    for _ in range(300):
        n = int(rng.integers(4, 71))
        x = rng.normal(1000.0, 30.0, n)
        if case == "outliers":
            x[: int(rng.integers(1, max(2, n // 4)))] += rng.uniform(200.0, 5000.0)
        elif case == "ties":
            x = np.round(x / 40.0) * 40.0
        elif case == "bimodal":
            x[: n // 3] += 400.0
        elif case == "uniform":
            x = rng.uniform(0.0, 1.0, n)
        s = np.sort(x)
        med = float(np.median(s))
        sigma0 = float(np.std(s, ddof=1))
        p1, p2 = np.empty(n + 1), np.empty(n + 1)
        got = integrate._winsorized_sigma(s, 0, n, med, sigma0, p1, p2)
        want = _iterated_winsorized_sigma(s, med, sigma0)
        # relative to the starting σ: where the loop decays to 0 (all but a few samples tied) it never gets there
        worst = max(worst, abs(got - want) / sigma0 if sigma0 > 0.0 else abs(got - want))
    assert worst < 1e-9
