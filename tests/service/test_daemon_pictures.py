"""The daemon on pictures: colour JPEGs from a smart telescope's folder, routed by a folder rule (they carry no
frame type, target or exposure), stacked in colour, and the session's products written in the configured
formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from xisf import XISF

from tests.pipeline.test_commands_pictures import H, W, _jpeg_sequence
from tests.service.daemon_harness import DaemonProcess, Observatory


@pytest.mark.slow
def test_jpegs_routed_by_a_folder_rule_give_products_in_the_configured_formats(obs: Observatory,
                                                                              tmp_path: Path) -> None:
    """Four colour JPEGs under capture/seestar/ become one session of target M 42 through a [[headers.folders]]
    rule; on close it writes stack.tif (16-bit RGB), stack.xisf (float32 with NCOMBINE 4) and stack.jpg, and no
    stack.fits (not among [output] formats)."""
    obs.write_config(extra="""
[output]
formats = ["tiff", "xisf", "jpg"]
[[headers.folders]]
pattern = "*/seestar/*"
set = { kind = "light", object = "M 42" }
""")
    paths, _, _ = _jpeg_sequence(tmp_path / "jpegs", seed=81, n=4, max_shift=8.0, max_rotation_deg=0.5)
    daemon = DaemonProcess(obs)
    try:
        daemon.wait_started()
        for path in paths:
            obs.publish(path, f"seestar/{path.name}")
        obs.wait_for(lambda: list(obs.statuses().values()).count("stacked") == len(paths), timeout=120,
                     message=f"4 stacked frames, journal: {obs.statuses()}")
        daemon.close_all()
        obs.wait_for(lambda: any(obs.stacks.rglob("session.json")), timeout=120, message="the closed session")
    finally:
        assert daemon.terminate() == 0
    (folder,) = {p.parent for p in obs.stacks.rglob("session.json")}
    assert "M_42" in str(folder)
    assert json.loads((folder / "session.json").read_text())["stacked"] == 4
    names = {p.name for p in folder.iterdir()}
    assert {"stack.tif", "stack.xisf", "stack.jpg", "frames.csv"} <= names and "stack.fits" not in names
    with tifffile.TiffFile(folder / "stack.tif") as tif:
        assert tif.asarray().dtype == np.uint16 and tif.asarray().shape == (H, W, 3)
    doc = XISF(str(folder / "stack.xisf"))
    assert doc.read_image(0, data_format="channels_first").shape == (3, H, W)
    assert doc.get_images_metadata()[0]["FITSKeywords"]["NCOMBINE"][0]["value"] == "4"
