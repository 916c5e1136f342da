"""Big-endian FITS pixel decoding to float32, with and without a caller-supplied output buffer, against
plain numpy arithmetic as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from astrod.core.convert import int16be_to_float32, scaled_to_float32

# (big-endian dtype, bscale, bzero) as FITS writes them; uint32 is int32 with BZERO 2**31
CASES = [(">u1", 1.0, 0.0), (">u1", 0.5, -3.0), (">i2", 1.0, 32768.0), (">i2", 0.25, 100.0),
         (">i4", 1.0, 0.0), (">i4", 1.0, 2.0**31), (">i8", 1.0, 2.0**63), (">f4", 1.0, 0.0),
         (">f4", 2.0, 1.5), (">f8", 1.0, 0.0), (">f8", 3.0, -7.0)]


def raw_values(dtype: str, size: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=size, endpoint=True, dtype=np.int64 if dt.kind == "i"
                            else np.uint64).astype(dt)
    return rng.normal(0, 1e4, size=size).astype(dt)


def reference(raw: np.ndarray, bscale: float, bzero: float) -> np.ndarray:
    """Physical values as FITS defines them: integers scaled in float64 (exact for 32-bit integers) and
    rounded once to float32 (the 8- and 16-bit cases here are exact in float32 too); floating-point pixels
    scaled in float32, as the reader has always done."""
    if raw.dtype.kind in "iu":
        return (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
    return raw.astype(np.float32) * np.float32(bscale) + np.float32(bzero)


@pytest.mark.parametrize(("dtype", "bscale", "bzero"), CASES)
def test_decoding_into_out_matches_fresh_and_reference(dtype: str, bscale: float, bzero: float) -> None:
    """Every BITPIX decodes to the reference values bit for bit, into a fresh array or into ``out`` (which
    is returned, shape kept); the input is left untouched."""
    raw = raw_values(dtype, 3 * 70_001)  # above the float64 scratch block, not a multiple of it
    before = raw.copy()
    expected = reference(raw, bscale, bzero)
    fresh = scaled_to_float32(raw, bscale=bscale, bzero=bzero)
    out = np.full((3, 70_001), np.nan, dtype=np.float32)
    got = scaled_to_float32(raw, bscale=bscale, bzero=bzero, out=out)
    assert got is out and fresh.shape == raw.shape
    np.testing.assert_array_equal(fresh, expected)
    np.testing.assert_array_equal(out.reshape(-1), expected)
    np.testing.assert_array_equal(raw, before)
    if dtype == ">i2":
        buf = np.frombuffer(raw.tobytes(), dtype=np.uint8)
        out16 = np.full(raw.size, np.nan, dtype=np.float32)
        assert int16be_to_float32(buf, bscale=bscale, bzero=bzero, out=out16) is out16
        np.testing.assert_array_equal(out16, expected)
        np.testing.assert_array_equal(int16be_to_float32(buf, bscale=bscale, bzero=bzero), expected)


def test_scaled_32bit_integers_stay_exact() -> None:
    """uint32 stored as int32 + BZERO 2**31 converts without float32 intermediate error: values near 2**32
    round once, as float64(value) -> float32 would."""
    values = np.array([0, 1, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint64)
    raw = (values.astype(np.int64) - 2**31).astype(">i4")
    out = np.empty(values.size, dtype=np.float32)
    scaled_to_float32(raw, bzero=2.0**31, out=out)
    np.testing.assert_array_equal(out, values.astype(np.float64).astype(np.float32))


def test_slices_of_one_buffer_decode_independently() -> None:
    """Decoding consecutive pieces of the bytes on the calling thread only (``parallel=False``, as the chunked
    reader's threads do) into consecutive slices of one buffer gives the reference values."""
    raw = raw_values(">i2", 10_007)
    buf = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    out = np.empty(raw.size, dtype=np.float32)
    for first in range(0, raw.size, 999):
        stop = min(first + 999, raw.size)
        int16be_to_float32(buf[2 * first:2 * stop], bzero=32768.0, out=out[first:stop], parallel=False)
    np.testing.assert_array_equal(out, reference(raw, 1.0, 32768.0))


@pytest.mark.parametrize("bad", ["size", "dtype", "strided", "readonly"])
def test_unusable_out_is_refused(bad: str) -> None:
    """An ``out`` of the wrong size or dtype, non-contiguous or read-only raises ValueError, unchanged."""
    raw = raw_values(">i2", 100)
    buf = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    buffers: dict[str, np.ndarray] = {"size": np.zeros(99, np.float32), "dtype": np.zeros(100, np.float64),
           "strided": np.zeros(200, np.float32)[::2], "readonly": np.zeros(100, np.float32)}
    out = buffers[bad]
    out.flags.writeable = bad != "readonly"
    with pytest.raises(ValueError, match="out must be"):
        int16be_to_float32(buf, out=out)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out must be"):
        scaled_to_float32(raw, bzero=32768.0, out=out)  # type: ignore[arg-type]
    assert not out.any()
