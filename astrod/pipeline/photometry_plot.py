"""The plot of a light curve (PNG bytes, matplotlib's Agg canvas: no display, no global pyplot state)."""

from __future__ import annotations

import io
import math

import numpy as np

from astrod.pipeline.photometry import LightCurve


def plot_png(curve: LightCurve, *, width_px: int = 900, height_px: int = 450) -> bytes:
    """The relative flux (normalised to its median) against time, with error bars; PNG bytes."""
    rows = curve.rows
    use_bjd = bool(rows) and all(r.get("bjd_tdb") is not None for r in rows)
    t = np.array([_f(r.get("bjd_tdb" if use_bjd else "jd_utc_mid")) for r in rows], dtype=np.float64)
    rel = np.array([_f(r.get("rel_flux")) for r in rows], dtype=np.float64)
    err = np.array([_f(r.get("rel_flux_err")) for r in rows], dtype=np.float64)
    dpi = 100
    # matplotlib costs 0.7 s to import: paid by the first plot, not by every command
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    good = np.isfinite(rel) & np.isfinite(t)
    if good.any():
        norm = float(np.median(rel[good]))
        t0 = math.floor(float(np.min(t[good])))
        x, y, e = t[good] - t0, rel[good] / norm, err[good] / norm
        ax.vlines(x, y - e, y + e, lw=0.8, alpha=0.6)  # one collection, not one line per error bar
        ax.plot(x, y, "o", ms=3)
        ax.set_xlabel(f"{'BJD_TDB' if use_bjd else 'JD (UTC, mid-exposure)'} - {t0}")
    else:
        ax.text(0.5, 0.5, "no point measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("relative flux (median = 1)")
    ax.set_title(f"{curve.target}: {len(rows)} frames, {len(curve.comparisons)} comparison stars", fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.12)  # fixed: tight_layout costs 100+ ms
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _f(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
