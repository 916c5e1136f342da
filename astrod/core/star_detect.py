"""numba kernels of star detection (see `astrod.core.stars`): the [1 2 1]-smoothed and 2×2-binned
detection image, the Bayer planes, the σ-clipped background mesh, and the thresholding pass that marks
local maxima and the brightest pixel of each blob."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit, prange

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


def _smooth121(image: FloatArray) -> FloatArray:
    return _smooth121_kernel(image, _chunks(image.shape[0]))


def _bin2_smooth(image: FloatArray) -> FloatArray:
    return _bin2_smooth_kernel(image, _chunks(image.shape[0] // 2))


def _chunks(rows: int) -> int:
    return max(1, min(64, rows // 16))


@njit(cache=True, nogil=True, inline="always")
def _smooth_row(prev: FloatArray, cur: FloatArray, nxt: FloatArray, tmp: FloatArray, out: FloatArray) -> None:
    w = cur.shape[0]
    for j in range(w):
        tmp[j] = np.float32(0.25) * (prev[j] + nxt[j]) + np.float32(0.5) * cur[j]
    out[0] = tmp[0]
    out[w - 1] = tmp[w - 1]
    for j in range(1, w - 1):
        out[j] = np.float32(0.25) * (tmp[j - 1] + tmp[j + 1]) + np.float32(0.5) * tmp[j]


@njit(cache=True, nogil=True, parallel=True)
def _smooth121_kernel(image: FloatArray, nchunks: int) -> FloatArray:  # pragma: no cover - numba
    h, w = image.shape
    out = np.empty((h, w), dtype=np.float32)
    for c in prange(nchunks):
        tmp = np.empty(w, dtype=np.float32)
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            _smooth_row(image[max(i - 1, 0)], image[i], image[min(i + 1, h - 1)], tmp, out[i])
    return out


@njit(cache=True, nogil=True, inline="always")
def _bin_row(image: FloatArray, i: int, out: FloatArray) -> None:
    r0 = image[2 * i]
    r1 = image[2 * i + 1]
    for j in range(out.shape[0]):
        out[j] = np.float32(0.25) * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]))


@njit(cache=True, nogil=True, parallel=True)
def _bin2_smooth_kernel(image: FloatArray, nchunks: int) -> FloatArray:  # pragma: no cover - numba
    # Binning and smoothing fused: each chunk keeps three binned rows, so the frame is read once.
    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = np.empty((h, w), dtype=np.float32)
    for c in prange(nchunks):
        r0, r1 = c * h // nchunks, (c + 1) * h // nchunks
        if r0 >= r1:
            continue
        prev = np.empty(w, dtype=np.float32)
        cur = np.empty(w, dtype=np.float32)
        nxt = np.empty(w, dtype=np.float32)
        tmp = np.empty(w, dtype=np.float32)
        _bin_row(image, max(r0 - 1, 0), prev)
        _bin_row(image, r0, cur)
        for i in range(r0, r1):
            _bin_row(image, min(i + 1, h - 1), nxt)
            _smooth_row(prev, cur, nxt, tmp, out[i])
            prev, cur, nxt = cur, nxt, prev
    return out


@njit(cache=True, nogil=True)
def _radix_sort(v: FloatArray, keys: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32],
                count: IntArray) -> None:  # pragma: no cover - numba
    """Sort finite float32 ``v`` in place: LSD radix sort of their order-preserving uint32 keys.

    About 3× faster than numba's quicksort on the few hundred values of a mesh box, and bytes that all
    keys share (the exponent, mostly) cost one counting pass only.
    """
    n = v.shape[0]
    u = v.view(np.uint32)
    sign = np.uint32(0x80000000)
    ones = np.uint32(0xFFFFFFFF)
    for i in range(n):
        k = u[i]
        keys[i] = (k ^ ones) if k & sign else (k | sign)
    src = keys
    dst = tmp
    for p in range(4):
        shift = np.uint32(8 * p)
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & np.uint32(255)] += 1
        if count[(src[0] >> shift) & np.uint32(255)] == n:
            continue
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (src[i] >> shift) & np.uint32(255)
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    for i in range(n):
        k = src[i]
        u[i] = (k ^ sign) if k & sign else (k ^ ones)


@njit(cache=True, nogil=True, parallel=True)
def _bayer_planes(image: FloatArray, green_main: bool) -> tuple[FloatArray, FloatArray]:  # pragma: no cover
    """Per 2×2 CFA cell: the mean of its four pixels and the mean of its two greens."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    lum = np.empty((h, w), dtype=np.float32)
    green = np.empty((h, w), dtype=np.float32)
    for i in prange(h):
        r0 = image[2 * i]
        r1 = image[2 * i + 1]
        for j in range(w):
            a, b = r0[2 * j], r0[2 * j + 1]
            c, d = r1[2 * j], r1[2 * j + 1]
            lum[i, j] = np.float32(0.25) * ((a + b) + (c + d))
            green[i, j] = np.float32(0.5) * ((a + d) if green_main else (b + c))
    return lum, green


@njit(cache=True, nogil=True)
def _clipped_stats(v: FloatArray, cs: F64, cs2: F64, k: float,
                   iterations: int) -> tuple[float, float]:  # pragma: no cover - numba
    """Median and standard deviation of sorted ``v`` after iterated k-σ clipping about the median.

    ``cs``, ``cs2`` are scratch (len(v) + 1): prefix sums of (v - pivot) and its square give the mean and
    σ of any clipped range in O(1), so each iteration costs two binary searches.
    """
    n = v.shape[0]
    pivot = float(v[n // 2])
    cs[0] = 0.0
    cs2[0] = 0.0
    for i in range(n):
        d = v[i] - pivot
        cs[i + 1] = cs[i] + d
        cs2[i + 1] = cs2[i] + d * d
    lo, hi = 0, n
    for _ in range(iterations):
        m = hi - lo
        med = 0.5 * (float(v[lo + (m - 1) // 2]) + float(v[lo + m // 2]))
        mean = (cs[hi] - cs[lo]) / m
        s = math.sqrt(max((cs2[hi] - cs2[lo]) / m - mean * mean, 0.0))
        if s == 0.0:
            break
        nlo = int(np.searchsorted(v, med - k * s, side="left"))
        nhi = int(np.searchsorted(v, med + k * s, side="right"))
        if (nlo == lo and nhi == hi) or nhi - nlo < 8:
            break
        lo, hi = nlo, nhi
    m = hi - lo
    mean = (cs[hi] - cs[lo]) / m
    var = max((cs2[hi] - cs2[lo]) / m - mean * mean, 0.0)
    return 0.5 * (float(v[lo + (m - 1) // 2]) + float(v[lo + m // 2])), math.sqrt(var * m / max(m - 1, 1))


@njit(cache=True, nogil=True, parallel=True)
def _mesh_stats(image: FloatArray, ny: int, nx: int, step: int, lag: int, k: float, iterations: int,
                cut_rms: float) -> tuple[FloatArray, FloatArray]:  # pragma: no cover - numba
    """σ-clipped median and noise of every box, from a strided sample of its pixels.

    The noise is the k-σ-clipped RMS of differences between pixels ``lag`` apart along a row, over √2 and
    over ``cut_rms`` (the RMS of a Gaussian cut at ±k σ): unlike the spread of the values, differences
    ignore gradients across the box and the wings of stars, which cancel. ``lag`` must exceed the
    correlation length of the noise. Differences need no sort: their centre is 0, and the clipping
    iterates from the values' interquartile range.
    """
    h, w = image.shape
    level = np.full((ny, nx), np.nan, dtype=np.float32)
    sigma = np.full((ny, nx), np.nan, dtype=np.float32)
    off = step // 2
    cap = ((h // ny + 2 + step - 1) // step) * ((w // nx + 2 + step - 1) // step)
    for by in prange(ny):
        # Buffers once per row of boxes: allocating per box costs more than the statistics.
        vals = np.empty(cap, dtype=np.float32)
        diffs = np.empty(cap, dtype=np.float32)
        keys = np.empty(cap, dtype=np.uint32)
        tmp = np.empty(cap, dtype=np.uint32)
        count = np.empty(256, dtype=np.intp)
        cs = np.empty(cap + 1)
        cs2 = np.empty(cap + 1)
        y0, y1 = by * h // ny, (by + 1) * h // ny
        for bx in range(nx):
            x0, x1 = bx * w // nx, (bx + 1) * w // nx
            n = 0
            nd = 0
            for y in range(y0 + min(off, y1 - y0 - 1), y1, step):
                row = image[y]
                for x in range(x0 + min(off, x1 - x0 - 1), x1, step):
                    val = row[x]
                    if not np.isfinite(val) or n >= cap:
                        continue
                    vals[n] = val
                    n += 1
                    xo = x + lag if x + lag < w else x - lag
                    if 0 <= xo < w and np.isfinite(row[xo]):
                        diffs[nd] = row[xo] - val
                        nd += 1
            if n < 8 or nd < 8:
                continue
            v = vals[:n]
            _radix_sort(v, keys, tmp, count)
            level[by, bx] = _clipped_stats(v, cs, cs2, k, iterations)[0]
            s = math.sqrt(2.0) * float(v[(3 * n) // 4] - v[n // 4]) / 1.349
            if not s > 0.0:
                # Quantised data (8-bit pictures, JPEG's flattened blocks): most values are equal and the
                # interquartile range is 0, which would clip every non-zero difference; start from their RMS.
                acc = 0.0
                for i in range(nd):
                    acc += diffs[i] * diffs[i]
                s = max(math.sqrt(acc / nd), 1e-12)
            for _ in range(iterations):
                acc = 0.0
                m = 0
                for i in range(nd):
                    if abs(diffs[i]) <= k * s:
                        acc += diffs[i] * diffs[i]
                        m += 1
                if m < 8:
                    break
                new = math.sqrt(acc / m) / cut_rms
                converged = abs(new - s) <= 1e-4 * s
                s = new
                if converged:
                    break
            sigma[by, bx] = s / math.sqrt(2.0)
    return level, sigma


@njit(cache=True, nogil=True, inline="always")
def _is_local_max(image: FloatArray, i: int, j: int) -> bool:  # pragma: no cover - numba
    """Above its 8 neighbours, strictly above those before it in raster order (one maximum per flat top)."""
    h, w = image.shape
    v = image[i, j]
    for di in range(-1, 2):
        y = i + di
        if y < 0 or y >= h:
            continue
        for dj in range(-1, 2):
            x = j + dj
            if (di == 0 and dj == 0) or x < 0 or x >= w:
                continue
            u = image[y, x]
            if u > v or (u == v and (di < 0 or (di == 0 and dj < 0))):
                return False
    return True


@njit(cache=True, nogil=True, parallel=True)
def _threshold_mask(image: FloatArray, level: FloatArray, sigma: FloatArray, k: float,
                    nchunks: int) -> npt.NDArray[np.uint8]:  # pragma: no cover - numba
    """1 where image > level + k·σ (the mesh interpolated bilinearly like cv2.resize), 2 where such a
    pixel is also a local maximum: above its 8 neighbours, strictly above those before it in raster
    order, so a flat top has one maximum."""
    h, w = image.shape
    ny, nx = level.shape
    thr = (level + np.float32(k) * sigma).astype(np.float32)
    # The mesh rows interpolated along x once; each image row then blends two of them, contiguously.
    tx = np.empty((ny, w), dtype=np.float32)
    for j in range(w):
        sx = min(max((j + 0.5) * nx / w - 0.5, 0.0), nx - 1.0)
        k0 = int(sx)
        k1 = min(k0 + 1, nx - 1)
        f = np.float32(sx - k0)
        for r in range(ny):
            tx[r, j] = thr[r, k0] + f * (thr[r, k1] - thr[r, k0])
    out = np.empty((h, w), dtype=np.uint8)
    for c in prange(nchunks):
        trow = np.empty(w, dtype=np.float32)
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            sy = min(max((i + 0.5) * ny / h - 0.5, 0.0), ny - 1.0)
            y0 = int(sy)
            y1 = min(y0 + 1, ny - 1)
            fy = np.float32(sy - y0)
            t0 = tx[y0]
            t1 = tx[y1]
            for j in range(w):
                trow[j] = t0[j] + fy * (t1[j] - t0[j])
            row = image[i]
            o = out[i]
            for j in range(w):
                o[j] = 1 if row[j] > trow[j] else 0
            words = o[: w // 8 * 8].view(np.uint64)
            j = 0
            while j < w:
                # Eight pixels at a time: most of the frame is below threshold.
                if (j & 7) == 0 and j + 8 <= w and words[j >> 3] == 0:
                    j += 8
                    continue
                if o[j] != 0 and _is_local_max(image, i, j):
                    o[j] = 2
                j += 1
    return out


@njit(cache=True, nogil=True, parallel=True)
def _blob_maxima(mask: npt.NDArray[np.uint8], labels: npt.NDArray[np.int32], n: int, image: FloatArray,
                 nchunks: int) -> tuple[IntArray, IntArray, FloatArray, IntArray, IntArray]:  # pragma: no cover
    """Area of every label, and the local maxima marked in ``mask``: (area, label, value, x, y)."""
    h, w = mask.shape
    partial = np.zeros((nchunks, n), dtype=np.intp)
    counts = np.zeros(nchunks + 1, dtype=np.intp)
    for c in prange(nchunks):
        found = 0
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            row = mask[i]
            for j in range(w):
                if row[j] != 0:
                    partial[c, labels[i, j]] += 1
                    if row[j] == 2:
                        found += 1
        counts[c + 1] = found
    offsets = np.cumsum(counts)
    total = offsets[nchunks]
    lab = np.empty(total, dtype=np.intp)
    val = np.empty(total, dtype=np.float32)
    mx = np.empty(total, dtype=np.intp)
    my = np.empty(total, dtype=np.intp)
    for c in prange(nchunks):
        k = offsets[c]
        for i in range(c * h // nchunks, (c + 1) * h // nchunks):
            row = mask[i]
            for j in range(w):
                if row[j] == 2:
                    lab[k], val[k], mx[k], my[k] = labels[i, j], image[i, j], j, i
                    k += 1
    area = partial.sum(axis=0)
    return area, lab, val, mx, my
