"""The INDI camera client against the real indiserver and the CCD and telescope simulators."""

from __future__ import annotations

import gc
import io
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrod.core.stars import detect_stars
from astrod.service.indi import (
    CameraSettings,
    ExposureError,
    IndiCamera,
    IndiConnectionError,
    IndiDeviceError,
)
from tests.service.indi_harness import CAMERA, HEIGHT, MOUNT, WIDTH, IndiServer, free_port, require_indi

pytestmark = pytest.mark.timeout(180)


def _camera(server: IndiServer, **kwargs: object) -> IndiCamera:
    return IndiCamera(host="127.0.0.1", port=server.port, camera=CAMERA, mount=MOUNT, timeout=10.0, **kwargs)  # type: ignore[arg-type]


def test_light_frame_comes_as_fits_with_the_settings_and_stars(server: IndiServer) -> None:
    """A light taken through the client carries the OBJECT, filter, gain, binning and frame type that were set,
    has the simulator's small size, and shows stars (drawn from the fake catalogue)."""
    cam = _camera(server)
    try:
        cam.connect()
        assert cam.connected
        cam.apply(CameraSettings(frame="light", gain=40, binning=1, object="M 31", filter="Luminance"))
        shot = cam.expose(1.0)
    finally:
        cam.disconnect()
    assert shot.data is not None and shot.path is None and shot.object_set
    with fits.open(io.BytesIO(shot.data)) as hdul:
        header = hdul[0].header
        data = hdul[0].data.astype(np.float32)
    assert header["OBJECT"] == "M 31"
    assert header["FILTER"] == "Luminance"
    assert header["IMAGETYP"] == "Light Frame"
    assert header["GAIN"] == pytest.approx(40)
    assert header["EXPTIME"] == pytest.approx(1.0)
    assert data.shape == (HEIGHT, WIDTH)
    assert len(detect_stars(data)) >= 20


def test_calibration_frame_types_reach_the_header(server: IndiServer) -> None:
    """Dark, bias and flat settings give the matching IMAGETYP; a flat is far brighter than a dark."""
    cam = _camera(server)
    levels: dict[str, float] = {}
    try:
        cam.connect()
        for kind, seconds in (("dark", 0.5), ("bias", 0.01), ("flat", 0.05)):
            cam.apply(CameraSettings(frame=kind))
            shot = cam.expose(seconds)
            assert shot.data is not None
            with fits.open(io.BytesIO(shot.data)) as hdul:
                assert hdul[0].header["IMAGETYP"] == f"{kind.capitalize()} Frame"
                levels[kind] = float(np.median(hdul[0].data))
    finally:
        cam.disconnect()
    assert levels["flat"] > 10 * levels["dark"]


def test_local_upload_writes_the_file_where_asked(server: IndiServer, tmp_path: Path) -> None:
    """With upload=local the driver writes the frame itself, at the folder and name given, and no BLOB comes."""
    cam = _camera(server, upload="local")
    target = tmp_path / "capture" / "M_31" / "L" / "M_31_L_1s_0001.fits"
    try:
        cam.connect()
        cam.apply(CameraSettings(frame="light", object="M 31"))
        shot = cam.expose(1.0, local_file=target)
    finally:
        cam.disconnect()
    assert shot.data is None and shot.path == target
    assert fits.getheader(target)["OBJECT"] == "M 31"


def test_a_dropped_camera_never_destroys_its_client(server: IndiServer) -> None:
    """The PyIndi client outlives its IndiCamera: destroying a BaseClient while libindiclient's listener thread
    is still unwinding from serverDisconnected aborted the process ("terminate called ... Resource deadlock
    avoided", reproduced by 60 connect/expose/disconnect/drop cycles), so clients are kept for good."""
    cam = _camera(server)
    try:
        cam.connect()
        cam.apply(CameraSettings(frame="bias"))
        assert cam.expose(0.01).data is not None
    finally:
        cam.disconnect()
    client = weakref.ref(cam._client)
    del cam
    gc.collect()
    assert client() is not None


def test_wrong_port_says_the_server_cannot_be_reached(tmp_path: Path) -> None:
    """Connecting to a port where no indiserver listens fails at once with the host and port in the message."""
    require_indi()
    port = free_port()
    cam = IndiCamera(host="127.0.0.1", port=port, camera=CAMERA, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(IndiConnectionError, match=f"127.0.0.1:{port}"):
        cam.connect()
    cam.disconnect()
    assert not cam.connected
    assert time.monotonic() - t0 < 10


def test_missing_device_names_the_devices_present(server: IndiServer) -> None:
    """A camera name the server does not have gives an IndiDeviceError listing what it does have."""
    cam = IndiCamera(host="127.0.0.1", port=server.port, camera="ZWO CCD ASI294MC Pro", timeout=2.0)
    with pytest.raises(IndiDeviceError, match=r"'ZWO CCD ASI294MC Pro' not found.*CCD Simulator"):
        cam.connect()
    cam.disconnect()


def test_unknown_filter_and_bad_exposure_are_precise_errors(server: IndiServer) -> None:
    """A filter name the wheel lacks lists the wheel's names; an exposure the driver refuses is an
    ExposureError carrying the driver's message."""
    cam = _camera(server)
    try:
        cam.connect()
        with pytest.raises(IndiDeviceError, match=r"'Ha' is not in .*H_Alpha"):
            cam.apply(CameraSettings(filter="Ha"))
        with pytest.raises(ExposureError, match="out of bounds"):
            cam.expose(0.001)
    finally:
        cam.disconnect()


def test_server_loss_is_noticed_and_a_new_connection_works(server: IndiServer) -> None:
    """When indiserver is killed the client notices within seconds; after a restart connect() works again and
    exposures resume."""
    cam = _camera(server)
    try:
        cam.connect()
        server.kill()
        deadline = time.monotonic() + 5.0
        while cam.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not cam.connected
        with pytest.raises(IndiConnectionError):
            cam.expose(1.0)
        server.start()
        cam.connect()
        cam.apply(CameraSettings(frame="light", object="M 31"))
        assert cam.expose(1.0).data is not None
    finally:
        cam.disconnect()
