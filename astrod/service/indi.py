"""INDI cameras through pyindi-client, behind the small :class:`Camera` protocol the capture runner uses.

pyindi-client runs every callback on one listener thread. The callbacks here only copy what arrives (BLOB bytes,
numbers, texts, switch states) into a lock-guarded :class:`_Snapshot` and wake the waiters: they never block and
never raise (an escaping exception would kill the listener). Commands go out from the caller's thread on property
objects fetched afresh from the device each time. After the server goes away, :meth:`IndiCamera.connect` first
calls ``disconnectServer()`` from the caller's thread, then ``connectServer()`` again.

Nothing outside this module imports PyIndi.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from astrod.errors import AstrodError

log = structlog.get_logger()

# Every PyIndi client made stays referenced here for the life of the process. libindiclient's listener
# thread is still unwinding out of serverDisconnected when disconnect() has seen it; a BaseClient destroyed
# then (its IndiCamera collected) frees what that thread is about to touch and aborts the whole process,
# as CI saw in a test that ended right after a disconnect. One client per IndiCamera: a few KB each.
_CLIENTS: list[Any] = []

FRAME_SWITCHES = {"light": "FRAME_LIGHT", "dark": "FRAME_DARK", "bias": "FRAME_BIAS", "flat": "FRAME_FLAT",
                  "darkflat": "FRAME_DARK"}


class IndiError(AstrodError):
    """Something went wrong talking to indiserver or a device."""


class IndiConnectionError(IndiError):
    """indiserver cannot be reached, or the connection was lost: reconnect and go on."""


class IndiDeviceError(IndiError):
    """A device or one of its properties is missing, or it refused a setting."""


class ExposureError(IndiError):
    """An exposure failed: the driver reported it, or no image came in time."""


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """What a capture step sets on the camera before its exposures (None: leave as it is)."""

    frame: str = "light"
    gain: float | None = None
    offset: float | None = None
    binning: int = 1
    object: str = ""
    filter: str = ""


@dataclass(frozen=True, slots=True)
class Exposure:
    """One finished exposure: the FITS bytes (client upload) or the file the driver wrote (local upload)."""

    data: bytes | None
    path: Path | None
    temperature: float | None
    object_set: bool  # whether the driver wrote OBJECT itself (FITS_HEADER property)


class Camera(Protocol):
    """The camera as the capture runner sees it."""

    @property
    def connected(self) -> bool: ...

    @property
    def describe(self) -> str: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def apply(self, settings: CameraSettings) -> None: ...

    def set_cooler(self, celsius: float) -> None: ...

    def temperature(self) -> float | None: ...

    def expose(self, seconds: float, *, local_file: Path | None = None) -> Exposure: ...


def _unreachable_reason(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection fails (PyIndi's connectServer says only that it did): refused, no route, ..."""
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout, 5.0)):
            return "the port answers, but the INDI client could not connect"
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__


@dataclass
class _Prop:
    kind: str
    state: str
    values: dict[str, Any]
    gen: int


@dataclass
class _Blob:
    device: str
    name: str
    format: str
    data: bytes


@dataclass
class _Snapshot:
    """What the listener thread saw, copied; every field is read and written under ``cond``."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    up: bool = False
    lost: bool = False
    devices: set[str] = field(default_factory=set)
    props: dict[tuple[str, str], _Prop] = field(default_factory=dict)
    blobs: deque[_Blob] = field(default_factory=lambda: deque(maxlen=8))
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    gen: int = 0

    def reset(self) -> None:
        with self.cond:
            self.up = False
            self.lost = False
            self.devices.clear()
            self.props.clear()
            self.blobs.clear()
            self.cond.notify_all()

    def prop(self, device: str, name: str) -> _Prop | None:
        with self.cond:
            return self.props.get((device, name))

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the lock) holds; False on timeout. Raises when the server
        connection was lost meanwhile."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.lost:
                    raise IndiConnectionError("connection to indiserver lost")
                if predicate():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))


def _state_name(state: int) -> str:
    import PyIndi

    return {PyIndi.IPS_IDLE: "idle", PyIndi.IPS_OK: "ok", PyIndi.IPS_BUSY: "busy",
            PyIndi.IPS_ALERT: "alert"}.get(state, "unknown")


def _guard(what: str, fn: Callable[[], None]) -> None:
    """Run one callback's work; an exception is logged, never raised (it would kill PyIndi's listener thread)."""
    try:
        fn()
    except Exception as err:  # an exception escaping a callback kills pyindi's listener thread
        with contextlib.suppress(Exception):  # not even a failing logger may escape
            log.warning("indi_callback_failed", callback=what, reason=repr(err))


def _copy_property(prop: Any) -> tuple[tuple[str, str], str, dict[str, Any], list[_Blob]]:
    """The key, type name, values and BLOBs of a property, copied out of PyIndi's objects. Called inside the
    callback, on PyIndi's listener thread: a BLOB's buffer belongs to the listener and is reused after it."""
    import PyIndi

    kind = prop.getType()
    key = (prop.getDeviceName(), prop.getName())
    values: dict[str, Any] = {}
    blobs: list[_Blob] = []
    if kind == PyIndi.INDI_NUMBER:
        values = {w.getName(): float(w.getValue()) for w in PyIndi.PropertyNumber(prop)}
        name = "number"
    elif kind == PyIndi.INDI_TEXT:
        values = {w.getName(): str(w.getText()) for w in PyIndi.PropertyText(prop)}
        name = "text"
    elif kind == PyIndi.INDI_SWITCH:
        values = {w.getName(): w.getState() == PyIndi.ISS_ON for w in PyIndi.PropertySwitch(prop)}
        name = "switch"
    elif kind == PyIndi.INDI_BLOB:
        name = "blob"
        for w in PyIndi.PropertyBlob(prop):
            if w.getBlobLen() > 0:  # copy now: the buffer belongs to the listener and is reused
                blobs.append(_Blob(key[0], key[1], str(w.getFormat()), bytes(w.getblobdata())))
    else:
        name = "light"
    return key, name, values, blobs


def _record(snapshot: _Snapshot, prop: Any) -> None:
    """Copy a new or updated property (and its BLOBs) into ``snapshot`` and wake the waiters."""
    key, name, values, blobs = _copy_property(prop)
    state = _state_name(prop.getState())
    with snapshot.cond:
        snapshot.gen += 1
        snapshot.props[key] = _Prop(name, state, values, snapshot.gen)
        snapshot.blobs.extend(blobs)
        snapshot.cond.notify_all()


def _set_connected(snapshot: _Snapshot, up: bool) -> None:
    """Record that the server connection came up (``up``) or was lost, and wake the waiters."""
    with snapshot.cond:
        snapshot.up = up
        snapshot.lost = not up
        snapshot.cond.notify_all()


def _make_listener(snapshot: _Snapshot) -> Any:
    """A PyIndi.BaseClient whose callbacks copy into ``snapshot`` (PyIndi imported here, lazily)."""
    import PyIndi

    class _Listener(PyIndi.BaseClient):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = snapshot

        def newDevice(self, device: Any) -> None:  # noqa: N802
            def run() -> None:
                with self.snapshot.cond:
                    self.snapshot.devices.add(device.getDeviceName())
                    self.snapshot.cond.notify_all()
            _guard("newDevice", run)

        def removeDevice(self, device: Any) -> None:  # noqa: N802
            def run() -> None:
                with self.snapshot.cond:
                    self.snapshot.devices.discard(device.getDeviceName())
                    self.snapshot.cond.notify_all()
            _guard("removeDevice", run)

        def newProperty(self, prop: Any) -> None:  # noqa: N802
            _guard("newProperty", lambda: _record(self.snapshot, prop))

        def updateProperty(self, prop: Any) -> None:  # noqa: N802
            _guard("updateProperty", lambda: _record(self.snapshot, prop))

        def removeProperty(self, prop: Any) -> None:  # noqa: N802
            def run() -> None:
                with self.snapshot.cond:
                    self.snapshot.props.pop((prop.getDeviceName(), prop.getName()), None)
                    self.snapshot.cond.notify_all()
            _guard("removeProperty", run)

        def newMessage(self, device: Any, message_id: int) -> None:  # noqa: N802
            def run() -> None:
                text = f"{device.getDeviceName()}: {device.messageQueue(message_id)}".strip()
                with self.snapshot.cond:
                    self.snapshot.messages.append(text)
            _guard("newMessage", run)

        def serverConnected(self) -> None:  # noqa: N802
            _guard("serverConnected", lambda: _set_connected(self.snapshot, True))

        def serverDisconnected(self, code: int) -> None:  # noqa: N802
            _guard("serverDisconnected", lambda: _set_connected(self.snapshot, False))
    return _Listener()


def pyindi_available() -> bool:
    try:
        import PyIndi  # noqa: F401
    except ImportError:
        return False
    return True


class IndiCamera:
    """A camera (with an optional filter wheel and mount) on an indiserver, driven through pyindi-client.

    Not thread-safe for commands: one thread (the capture runner's) calls connect/apply/expose; ``connected``
    and ``temperature()`` may be read from any thread.
    """

    def __init__(self, *, host: str, port: int, camera: str, filter_wheel: str = "", mount: str = "",
                 upload: str = "client", timeout: float = 10.0, settle_timeout: float = 60.0,
                 download_timeout: float = 60.0) -> None:
        if upload not in ("client", "local"):
            raise ValueError(f"upload must be 'client' or 'local', not {upload!r}")
        self.host = host
        self.port = port
        self.camera = camera
        self.filter_wheel = filter_wheel
        self.mount = mount
        self.upload = upload
        self.timeout = timeout
        self.settle_timeout = settle_timeout
        self.download_timeout = download_timeout
        self._snapshot = _Snapshot()
        self._client: Any = None
        self._ready = False

    # ------------------------------------------------------------------------------------------ state
    @property
    def describe(self) -> str:
        return f"{self.camera} on indiserver {self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        with self._snapshot.cond:
            return self._ready and self._snapshot.up and not self._snapshot.lost

    def temperature(self) -> float | None:
        prop = self._snapshot.prop(self.camera, "CCD_TEMPERATURE")
        if prop is None or "CCD_TEMPERATURE_VALUE" not in prop.values:
            return None
        return float(prop.values["CCD_TEMPERATURE_VALUE"])

    def messages(self) -> list[str]:
        with self._snapshot.cond:
            return list(self._snapshot.messages)

    # ------------------------------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Connect to indiserver and the devices, and set the upload mode. Raises IndiConnectionError when the
        server cannot be reached, IndiDeviceError when a device is missing or does not connect."""
        self.disconnect()
        import PyIndi

        self._snapshot.reset()
        if self._client is None:
            self._client = _make_listener(self._snapshot)
            _CLIENTS.append(self._client)
        client = self._client
        client.setServer(self.host, int(self.port))
        client.setConnectionTimeout(int(self.timeout), int((self.timeout % 1) * 1e6))
        if not client.connectServer():
            raise IndiConnectionError(f"cannot reach indiserver at {self.host}:{self.port}: "
                                      f"{_unreachable_reason(self.host, self.port, self.timeout)}")
        snap = self._snapshot
        if not snap.wait(lambda: snap.up, self.timeout):
            raise IndiConnectionError(f"indiserver at {self.host}:{self.port} did not answer")
        devices = [self.camera] + [d for d in (self.filter_wheel, self.mount) if d and d != self.camera]
        for device in devices:
            self._connect_device(device)
        if not snap.wait(lambda: (self.camera, "CCD_EXPOSURE") in snap.props, self.timeout):
            raise IndiDeviceError(f"{self.camera}: no CCD_EXPOSURE property: is it a camera?")
        self._wait_quiet(0.5)  # a driver defines its properties one by one after connecting
        if self.upload == "local":
            self._switch(self.camera, "UPLOAD_MODE", "UPLOAD_LOCAL")
            client.setBLOBMode(PyIndi.B_NEVER, self.camera, None)
        else:
            if (self.camera, "UPLOAD_MODE") in snap.props:
                self._switch(self.camera, "UPLOAD_MODE", "UPLOAD_CLIENT")
            client.setBLOBMode(PyIndi.B_ALSO, self.camera, None)
        self._ready = True

    def _connect_device(self, device: str) -> None:
        snap = self._snapshot
        if not snap.wait(lambda: device in snap.devices and (device, "CONNECTION") in snap.props, self.timeout):
            with snap.cond:
                present = ", ".join(sorted(snap.devices)) or "none"
            raise IndiDeviceError(f"device {device!r} not found on indiserver {self.host}:{self.port} "
                                  f"(devices there: {present})")

        def is_on() -> bool:
            p = snap.props.get((device, "CONNECTION"))
            return p is not None and bool(p.values.get("CONNECT")) and p.state != "busy"

        with snap.cond:
            already = is_on()
        if not already:
            self._client.connectDevice(device)
            if not snap.wait(is_on, self.timeout):
                raise IndiDeviceError(f"device {device!r} did not connect within {self.timeout:g} s")
            p = snap.prop(device, "CONNECTION")
            if p is not None and p.state == "alert":
                raise IndiDeviceError(f"device {device!r} refused to connect: {self._last_message(device)}")
        log.info("indi_device_connected", device=device, host=self.host, port=self.port)

    def disconnect(self) -> None:
        """Drop the server connection (devices stay connected in indiserver)."""
        self._ready = False
        if self._client is not None:
            snap = self._snapshot
            with snap.cond:
                was_up = snap.up
            try:
                self._client.disconnectServer()
            except Exception as err:  # the old connection may already be half gone
                log.debug("indi_disconnect_failed", reason=repr(err))
            if was_up:
                # let libindiclient's listener thread see its socket close and finish before anything else
                # happens to the connection (a server dying under a half-closed client has aborted the process)
                deadline = time.monotonic() + min(self.timeout, 5.0)
                with snap.cond:
                    while snap.up and time.monotonic() < deadline:
                        snap.cond.wait(0.05)

    # ------------------------------------------------------------------------------------------ settings
    def apply(self, settings: CameraSettings) -> None:
        """Frame type, gain, offset, binning, OBJECT and filter, each confirmed by the driver."""
        self._require()
        self._switch(self.camera, "CCD_FRAME_TYPE", FRAME_SWITCHES[settings.frame])
        if settings.gain is not None:
            self._number_either(self.camera, [("CCD_GAIN", "GAIN"), ("CCD_CONTROLS", "Gain")], settings.gain, "gain")
        if settings.offset is not None:
            self._number_either(self.camera, [("CCD_OFFSET", "OFFSET"), ("CCD_CONTROLS", "Offset")],
                                settings.offset, "offset")
        if self._snapshot.prop(self.camera, "CCD_BINNING") is not None:
            self._number(self.camera, "CCD_BINNING", {"HOR_BIN": settings.binning, "VER_BIN": settings.binning})
        elif settings.binning != 1:
            raise IndiDeviceError(f"{self.camera}: cannot bin (no CCD_BINNING property)")
        if self.has_object_header:
            self._text(self.camera, "FITS_HEADER", {"FITS_OBJECT": settings.object or "Unknown"})
        if settings.filter:
            self._select_filter(settings.filter)

    @property
    def has_object_header(self) -> bool:
        prop = self._snapshot.prop(self.camera, "FITS_HEADER")
        return prop is not None and "FITS_OBJECT" in prop.values

    def _select_filter(self, name: str) -> None:
        wheel = self.filter_wheel or self.camera
        names = self._snapshot.prop(wheel, "FILTER_NAME")
        if names is None or self._snapshot.prop(wheel, "FILTER_SLOT") is None:
            raise IndiDeviceError(f"filter {name!r} asked but {wheel!r} has no filter wheel (set indi.filter_wheel)")
        slots = [str(v) for _, v in sorted(names.values.items(), key=lambda kv: _slot_index(kv[0]))]
        matches = [i for i, n in enumerate(slots, start=1) if n.strip().lower() == name.strip().lower()]
        if not matches:
            raise IndiDeviceError(f"filter {name!r} is not in {wheel!r} (it has: {', '.join(slots)})")
        self._number(wheel, "FILTER_SLOT", {"FILTER_SLOT_VALUE": matches[0]}, timeout=self.settle_timeout)

    def set_cooler(self, celsius: float) -> None:
        """Switch the cooler on (where the camera has a switch for it) and set the set-point; does not wait."""
        self._require()
        if self._snapshot.prop(self.camera, "CCD_TEMPERATURE") is None:
            raise IndiDeviceError(f"{self.camera}: no cooler (no CCD_TEMPERATURE property)")
        if self._snapshot.prop(self.camera, "CCD_COOLER") is not None:
            self._switch(self.camera, "CCD_COOLER", "COOLER_ON", busy_ok=True)  # busy while it cools
        self._send_number(self.camera, "CCD_TEMPERATURE", {"CCD_TEMPERATURE_VALUE": celsius})

    # ------------------------------------------------------------------------------------------ exposing
    def expose(self, seconds: float, *, local_file: Path | None = None) -> Exposure:
        """Take one exposure and return its image. In local upload mode ``local_file`` is where the driver
        writes it (folder and name without extension are sent as UPLOAD_DIR and UPLOAD_PREFIX)."""
        self._require()
        snap = self._snapshot
        if self.upload == "local":
            if local_file is None:
                raise ValueError("local upload needs local_file")
            self._text(self.camera, "UPLOAD_SETTINGS",
                       {"UPLOAD_DIR": str(local_file.parent), "UPLOAD_PREFIX": local_file.stem})
        with snap.cond:
            snap.blobs.clear()
            path_prop = snap.props.get((self.camera, "CCD_FILE_PATH"))
            path_gen = path_prop.gen if path_prop is not None else 0
            start_gen = snap.gen
        self._send_number(self.camera, "CCD_EXPOSURE", {"CCD_EXPOSURE_VALUE": seconds})
        failed: list[str] = []

        def done() -> bool:
            exp = snap.props.get((self.camera, "CCD_EXPOSURE"))
            if exp is not None and exp.state == "alert" and exp.gen > start_gen:
                failed.append(exp.state)
                return True
            if self.upload == "local":
                p = snap.props.get((self.camera, "CCD_FILE_PATH"))
                return p is not None and p.gen > path_gen
            return any(b.device == self.camera and b.name == "CCD1" for b in snap.blobs)

        limit = seconds + self.download_timeout
        if not snap.wait(done, limit):
            raise ExposureError(f"{self.camera}: no image {limit:g} s after starting a {seconds:g} s exposure")
        if failed:
            raise ExposureError(f"{self.camera}: exposure of {seconds:g} s failed: {self._last_message(self.camera)}")
        temperature = self.temperature()
        if self.upload == "local":
            p = snap.prop(self.camera, "CCD_FILE_PATH")
            written = Path(str(p.values.get("FILE_PATH", ""))) if p is not None else None
            if written is None or not str(written):
                raise ExposureError(f"{self.camera}: the driver did not say where it wrote the image")
            return Exposure(data=None, path=written, temperature=temperature, object_set=self.has_object_header)
        with snap.cond:
            blob = next(b for b in snap.blobs if b.device == self.camera and b.name == "CCD1")
            snap.blobs.clear()
        if not blob.format.lower().startswith(".fits"):
            raise ExposureError(f"{self.camera}: image came as {blob.format!r}, not FITS "
                                "(set CCD_TRANSFER_FORMAT to FITS)")
        return Exposure(data=blob.data, path=None, temperature=temperature, object_set=self.has_object_header)

    # ------------------------------------------------------------------------------------------ helpers
    def _require(self) -> None:
        if not self.connected:
            raise IndiConnectionError(f"not connected to indiserver at {self.host}:{self.port}")

    def _last_message(self, device: str) -> str:
        for text in reversed(self.messages()):
            if text.startswith(device):
                return text
        return "no message from the driver"

    def _wait_quiet(self, quiet: float) -> None:
        """Wait until no new property was defined for ``quiet`` seconds (at most ``timeout``)."""
        snap = self._snapshot
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with snap.cond:
                count = len(snap.props)
            time.sleep(quiet)
            with snap.cond:
                if snap.lost:
                    raise IndiConnectionError("connection to indiserver lost")
                if len(snap.props) == count:
                    return

    def _device(self, device: str) -> Any:
        dev = self._client.getDevice(device)
        if dev is None or not dev.isValid():
            raise IndiDeviceError(f"device {device!r} is gone from indiserver {self.host}:{self.port}")
        return dev

    def _send_number(self, device: str, name: str, values: Mapping[str, float]) -> None:
        prop = self._device(device).getNumber(name)
        if prop is None or not prop.isValid():
            raise IndiDeviceError(f"{device}: no number property {name}")
        for key, value in values.items():
            widget = prop.findWidgetByName(key)
            if widget is None:
                raise IndiDeviceError(f"{device}: {name} has no element {key}")
            widget.setValue(float(value))
        self._client.sendNewNumber(prop)

    def _number(self, device: str, name: str, values: Mapping[str, float], *, timeout: float | None = None) -> None:
        snap = self._snapshot
        with snap.cond:
            gen = snap.gen
        self._send_number(device, name, values)

        def settled() -> bool:
            p = snap.props.get((device, name))
            if p is None or p.gen <= gen or p.state == "busy":
                return False
            return p.state == "alert" or all(abs(float(p.values.get(k, float("nan"))) - v) < 1e-6 * max(1, abs(v))
                                             for k, v in values.items())

        self._confirm(device, name, values, settled, timeout)

    def _number_either(self, device: str, choices: list[tuple[str, str]], value: float, what: str) -> None:
        for prop, key in choices:
            current = self._snapshot.prop(device, prop)
            if current is not None and key in current.values:
                self._number(device, prop, {key: value})
                return
        raise IndiDeviceError(f"{device}: cannot set {what} (none of {', '.join(p for p, _ in choices)})")

    def _switch(self, device: str, name: str, on: str, *, busy_ok: bool = False) -> None:
        import PyIndi

        snap = self._snapshot
        prop = self._device(device).getSwitch(name)
        if prop is None or not prop.isValid():
            raise IndiDeviceError(f"{device}: no switch property {name}")
        if prop.findWidgetByName(on) is None:
            raise IndiDeviceError(f"{device}: {name} has no element {on}")
        with snap.cond:
            gen = snap.gen
            current = snap.props.get((device, name))
            if current is not None and current.values.get(on) and current.state != "alert":
                return
        for widget in prop:
            widget.setState(PyIndi.ISS_ON if widget.getName() == on else PyIndi.ISS_OFF)
        self._client.sendNewSwitch(prop)

        def settled() -> bool:
            p = snap.props.get((device, name))
            return p is not None and p.gen > gen and (busy_ok or p.state != "busy") and (
                p.state == "alert" or bool(p.values.get(on)))

        self._confirm(device, name, {on: 1.0}, settled, None)

    def _text(self, device: str, name: str, values: Mapping[str, str]) -> None:
        snap = self._snapshot
        prop = self._device(device).getText(name)
        if prop is None or not prop.isValid():
            raise IndiDeviceError(f"{device}: no text property {name}")
        with snap.cond:
            gen = snap.gen
        for key, value in values.items():
            widget = prop.findWidgetByName(key)
            if widget is None:
                raise IndiDeviceError(f"{device}: {name} has no element {key}")
            widget.setText(value)
        self._client.sendNewText(prop)

        def settled() -> bool:
            p = snap.props.get((device, name))
            return p is not None and p.gen > gen and p.state != "busy"

        self._confirm(device, name, values, settled, None)

    def _confirm(self, device: str, name: str, values: Mapping[str, Any], settled: Callable[[], bool],
                 timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        if not self._snapshot.wait(settled, limit):
            raise IndiDeviceError(f"{device}: {name} did not confirm {dict(values)} within {limit:g} s")
        p = self._snapshot.prop(device, name)
        if p is not None and p.state == "alert":
            raise IndiDeviceError(f"{device}: {name} refused {dict(values)}: {self._last_message(device)}")


def _slot_index(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0
