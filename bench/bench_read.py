"""Benchmark: reading a 26 MP uint16 BZERO FITS frame.

Compares astrod's reader with the floor (`np.fromfile` + byte swap of the same bytes) and with astropy.
Run: `.venv/bin/python bench/bench_read.py [--width 6248 --height 4176 --repeat 15]`.
The file is written to a temporary folder and read warm (from the page cache), as the daemon reads a frame
that the capture program has just written.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from astrod.io.fits import read_fits


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up: page cache, JIT
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=6248)
    parser.add_argument("--height", type=int, default=4176)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.fits"
        data = np.random.default_rng(0).integers(0, 65535, (args.height, args.width), dtype=np.uint16)
        fits.PrimaryHDU(data).writeto(path)  # astropy writes uint16 as int16 with BZERO 32768
        offset = 2880 * ((len(fits.getheader(path).tostring()) + 2879) // 2880)
        count = args.width * args.height

        def floor() -> np.ndarray:
            raw = np.fromfile(path, dtype=">u2", count=count, offset=offset)
            return raw.byteswap().view(raw.dtype.newbyteorder())

        def astrod_read() -> np.ndarray:
            return read_fits(path)[0]

        def astropy_read() -> np.ndarray:
            return np.asarray(fits.getdata(path), dtype=np.float32)

        got = astrod_read()
        assert got.dtype == np.float32 and np.array_equal(got, data.astype(np.float32)), "wrong pixels"
        rows = [("np.fromfile + byte swap (floor)", timed(floor, args.repeat)),
                ("astrod read_fits -> float32", timed(astrod_read, args.repeat)),
                ("astropy getdata -> float32", timed(astropy_read, args.repeat))]
    base = statistics.median(rows[0][1])
    print(f"{args.width}x{args.height} uint16 BZERO FITS ({count * 2 / 1e6:.0f} MB), {args.repeat} warm reads")
    print(f"{'reader':36} {'median ms':>10} {'worst ms':>10} {'x floor':>8}")
    for name, times in rows:
        med = statistics.median(times)
        print(f"{name:36} {med * 1e3:10.1f} {max(times) * 1e3:10.1f} {med / base:8.2f}")


if __name__ == "__main__":
    main()
