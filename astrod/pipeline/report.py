"""A session's one-page report (``report.html``): the finished picture, the session's numbers and plots of FWHM,
stars, background and weight per frame against observation time (DATE-OBS, not processing order), rejected frames
marked in red.

Self-contained: the picture (JPEG) and the plots (PNG, matplotlib's Agg backend) are embedded as ``data:`` URIs
and the style is inline, so the page works opened from disk, copied elsewhere, or served by the dashboard under a
policy that allows no scripts and nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from astrod.io.previews import encode_image

REPORT = "report.html"
PLOTS = (("fwhm", "FWHM (px)"), ("stars", "stars"), ("background", "background (ADU)"), ("weight", "weight"))

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;background:#fafafa;padding:0 1em}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
img{max-width:100%;height:auto;display:block;border:1px solid #ccc;background:#000}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}.muted{color:#777}.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:2em}
"""


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def plot_png(rows: Sequence[Mapping[str, Any]], *, width_in: float = 10.0) -> bytes | None:
    """The per-frame plots (PNG): one panel per figure in `PLOTS` against DATE-OBS, stacked frames as blue
    dots, rejected ones as red crosses. None when no frame has an observation time and a figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    timed = [(t, r) for r in rows if (t := _when(r.get("date_obs"))) is not None]
    if not timed or not any(_number(r.get(k)) is not None for _, r in timed for k, _ in PLOTS):
        return None
    timed.sort(key=lambda tr: tr[0])
    start = timed[0][0]
    # minutes since the first frame: plain numbers tick far faster than matplotlib's date axis
    minutes = [((t - start).total_seconds() / 60.0, r) for t, r in timed]
    fig = Figure(figsize=(width_in, 1.6 * len(PLOTS) + 0.6), dpi=80)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.97, bottom=0.08, hspace=0.12)
    axes = fig.subplots(len(PLOTS), 1, sharex=True)
    for ax, (key, label) in zip(axes, PLOTS, strict=True):
        for status, style in (("stacked", {"color": "#1f77b4", "marker": "o", "markersize": 4}),
                              ("rejected", {"color": "#d62728", "marker": "x", "markersize": 7})):
            points = [(m, v) for m, r in minutes if r.get("status") == status
                      and (v := _number(r.get(key))) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="none",
                        label=status, **style)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.04, y=0.15)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel(f"minutes since the first frame (DATE-OBS {start:%Y-%m-%d %H:%M:%S} UTC)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _data_uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _table(pairs: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
                    if v is not None and v != "")
    return f"<table>{cells}</table>"


def _exposure(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def report_html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *,
                picture: npt.NDArray[np.uint8] | None, finishing: Sequence[tuple[str, Any]] = (),
                products: Sequence[str] = ()) -> str:
    """The report page of a closed session: ``summary`` (what session.json holds), the frames table ``rows``,
    the stretched ``picture`` (uint8, embedded as JPEG), ``finishing`` (label, value) pairs and the names of
    the ``products`` written beside it (linked)."""
    key = summary.get("key") or {}
    title = f"{key.get('target') or summary.get('label') or 'session'} — {key.get('filter') or 'no filter'}"
    stacked = [r for r in rows if r.get("status") == "stacked"]
    dates = sorted(d for r in rows if (d := r.get("date_obs")))

    def median(name: str) -> str | None:
        values = [v for r in stacked if (v := _number(r.get(name))) is not None]
        return f"{float(np.median(values)):.2f}" if values else None

    numbers = [("session", summary.get("session")), ("camera", key.get("camera")),
               ("frames stacked", summary.get("stacked")), ("frames rejected", summary.get("rejected")),
               ("total exposure", _exposure(float(summary.get("total_exposure_s") or 0.0))),
               ("first frame", dates[0] if dates else None), ("last frame", dates[-1] if dates else None),
               ("median FWHM (px)", median("fwhm")), ("median stars", median("stars")),
               ("median background (ADU)", median("background")), ("closed because", summary.get("closed_because"))]
    wcs = summary.get("wcs")
    if isinstance(wcs, Mapping) and wcs.get("ra") is not None:
        numbers.append(("centre (RA, Dec)", f"{float(wcs['ra']):.4f}°, {float(wcs['dec']):.4f}°"))
        numbers.append(("scale", f"{float(wcs['scale_arcsec']):.3f}″/px"))
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if picture is not None:
        data = encode_image(picture, suffix=".jpg", jpeg_quality=85)
        parts.append(f"<img id=picture alt='finished picture' src='{_data_uri('image/jpeg', data)}'>")
    parts.append("<div class=grid><div><h2>Session</h2>" + _table(numbers) + "</div>")
    if finishing:
        parts.append("<div><h2>Finishing</h2>" + _table(finishing) + "</div>")
    reasons = summary.get("rejections") or {}
    if reasons:
        parts.append("<div><h2>Rejections</h2>" + _table(sorted(reasons.items(), key=lambda kv: -kv[1])) + "</div>")
    parts.append("</div>")
    plot = plot_png(rows)
    parts.append("<h2>Frames against observation time</h2>")
    parts.append(f"<img id=plots alt='FWHM, stars, background and weight per frame' "
                 f"src='{_data_uri('image/png', plot)}'>" if plot is not None
                 else "<p class=muted>no frame has an observation time</p>")
    if products:
        links = " · ".join(f"<a href='{html.escape(n)}'>{html.escape(n)}</a>" for n in products)
        parts.append(f"<h2>Products</h2><p>{links}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
