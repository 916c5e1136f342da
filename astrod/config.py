"""Configuration: TOML (tomli) into frozen dataclasses, in a visible sequence: load, override, validate.

Every option has a default, so astrod runs with no file at all. Validation collects every problem (unknown
keys with a did-you-mean, wrong types, bad paths, numbers out of range) and reports them together, one line
each with the TOML key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tomli

from astrod.errors import ConfigError
from astrod.model import SETTABLE_RULE_FIELDS

EX_CONFIG = 78  # sysexits.h: configuration error


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         choices: tuple[str, ...] | None = None, path_kind: str | None = None) -> Any:
    """A config field with its documentation and limits (read by the validator and the example test)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "path_kind": path_kind}
    if isinstance(default, list | dict):
        factory = default.copy
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class PathsConfig:
    watch: tuple[Path, ...] = _opt((Path("capture"),), "folders watched for new frames (recursively)",
                                   path_kind="dir")
    output: Path = _opt(Path("stacks"), "where session stacks, previews and reports are written",
                        path_kind="dir")
    state: Path | None = _opt(None, "state folder (journal, checkpoints); default $XDG_STATE_HOME/astrod",
                              path_kind="dir")
    library: Path | None = _opt(None, "master library folder; default $XDG_DATA_HOME/astrod/library",
                                path_kind="dir")


@dataclass(frozen=True, slots=True)
class WatchConfig:
    stable_seconds: float = _opt(5.0, "a file whose size and mtime did not change for this long is finished "
                                      "(fallback for network shares and pollers)", min=0.1, max=3600)
    polling: bool = _opt(False, "poll the folders instead of inotify (network shares)")
    poll_interval: float = _opt(2.0, "seconds between polls when polling", min=0.1, max=600)
    ignore: tuple[str, ...] = _opt(("*.tmp", "*.part", ".*", "*~"), "file name patterns never processed")


@dataclass(frozen=True, slots=True)
class FolderRuleConfig:
    pattern: str = _opt("", "glob on the file's full path, e.g. '*/Lights/Ha/*'")
    set: Mapping[str, str] = _opt({}, "fields to fill where the header lacks them, e.g. {kind='light', "
                                      "filter='Ha'}")


@dataclass(frozen=True, slots=True)
class HeadersConfig:
    rename: Mapping[str, str] = _opt({}, "header keyword renames, e.g. {MYEXPO='EXPTIME'}")
    folders: tuple[FolderRuleConfig, ...] = _opt((), "per-folder defaults ([[headers.folders]] tables)")


@dataclass(frozen=True, slots=True)
class LibraryConfig:
    min_frames: int = _opt(5, "a master from fewer frames is still written but marked LOW_N", min=1, max=10000)
    combine: str = _opt("sigma_clip", "how masters are combined", choices=("sigma_clip", "median", "mean",
                                                                          "minmax"))
    kappa: float = _opt(3.0, "sigma-clip threshold for masters", min=0.5, max=20)
    temperature_bucket: float = _opt(1.0, "set temperatures within this many °C share a master", min=0.1,
                                     max=20)
    temperature_tolerance: float = _opt(1.0, "first temperature tolerance when matching, °C", min=0.0, max=20)
    temperature_max: float = _opt(5.0, "widest temperature tolerance when matching (warns), °C", min=0.0,
                                  max=50)
    flat_max_age_days: float = _opt(30.0, "flats older than this many nights are not used", min=0, max=3650)
    dark_optimisation: bool = _opt(False, "scale darks to minimise the calibrated frame's noise")
    memory_cap_mb: int = _opt(2048, "peak memory of a master build, MiB", min=64, max=1_048_576)


@dataclass(frozen=True, slots=True)
class StackConfig:
    kappa: float = _opt(3.0, "online rejection threshold, sigma", min=0.5, max=20)
    weighting: str = _opt("snr", "frame weights", choices=("none", "snr", "fwhm"))
    transform: str = _opt("similarity", "registration model", choices=("similarity", "affine", "homography"))
    min_stars: int = _opt(8, "matched stars needed to register a frame", min=3, max=1000)
    final_rejection: str = _opt("none", "full re-integration when a session closes",
                                choices=("none", "winsorized", "sigma", "linear_fit"))
    reference_repick_after: int = _opt(5, "once this many frames are stacked, the session's registration reference "
                                          "becomes the best of them (most stars per px of FWHM), once; 0 disables",
                                       min=0, max=1000)
    reference_repick_margin: float = _opt(1.25, "the best frame replaces the reference only when it scores this many "
                                                "times the reference's", min=1.0, max=10)
    preview_every_frames: int = _opt(5, "refresh the preview after this many frames", min=1, max=10000)
    preview_every_seconds: float = _opt(60.0, "or after this many seconds", min=1, max=86400)


OUTPUT_FORMATS = ("fits", "tiff", "xisf", "png", "jpg")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    formats: tuple[str, ...] = _opt(("fits", "jpg"), "formats of each session's final products: fits (float32 "
                                    "linear stack), tiff (16-bit linear stack scaled to 0-65535), xisf (float32 "
                                    "with FITS keywords), png and jpg (the auto-stretched picture)",
                                    choices=OUTPUT_FORMATS)


@dataclass(frozen=True, slots=True)
class FinishConfig:
    colour: bool = _opt(True, "colour stacks: neutral sky background and white balance from the stars' median colour, "
                              "in the previews and the finished picture (stack.fits stays uncalibrated)")
    background: bool = _opt(True, "remove the sky gradient from the finished picture (the model removed is kept as "
                                  "background.fits)")
    background_mesh: int = _opt(16, "sky model: boxes across the longer side of the (binned) picture", min=2, max=64)
    crop_coverage: float = _opt(0.8, "crop the finished picture to the area covered by at least this share of the "
                                     "frames (0: no crop)", min=0.0, max=1.0)
    report: bool = _opt(True, "write report.html (picture, numbers, per-frame plots) beside the finished picture")


COMPOSITE_KINDS = ("lrgb", "rgb", "sho", "hoo")
COMPOSITE_CHANNELS = ("L", "R", "G", "B", "Ha", "OIII", "SII")


@dataclass(frozen=True, slots=True)
class CompositeConfig:
    kinds: tuple[str, ...] = _opt(COMPOSITE_KINDS, "colour composites of a target whose night has stacks in their "
                                                   "filters, written as <target>/composite_<kind>.*, rebuilt when "
                                                   "another filter's session closes (empty: none; LRGB replaces "
                                                   "RGB when there is an L stack)", choices=COMPOSITE_KINDS)
    names: Mapping[str, str] = _opt({}, "filter names (as in FILTER) -> channel (L, R, G, B, Ha, OIII, SII), beyond "
                                        "the usual spellings, e.g. {'Baader Ha 7nm'='Ha'}")


@dataclass(frozen=True, slots=True)
class QualityConfig:
    margin_sigma: float = _opt(5.0, "a frame is rejected only when a figure is this many robust standard deviations "
                                    "(the session's spread and the frame's own uncertainty) worse than the "
                                    "session's median, and also past that figure's ratio below", min=1.0, max=100)
    min_frames: int = _opt(3, "accepted frames before the session's figures judge a frame (until then only a "
                              "collapse of the star count rejects)", min=1, max=1000)
    max_fwhm_ratio: float = _opt(1.4, "reject a frame whose FWHM is also this many times the session's median "
                                      "(bad seeing, focus drift); 0 disables", min=0.0, max=10)
    max_axis_ratio_drop: float = _opt(0.15, "reject a frame whose stars' axis ratio b/a is also this fraction "
                                            "below the session's (trailing, wind, guiding); 0 disables",
                                      min=0.0, max=1.0)
    min_star_ratio: float = _opt(0.5, "reject a frame with also fewer stars than this fraction of the session's "
                                      "median (clouds, dew); 0 disables", min=0.0, max=1.0)
    min_transparency_ratio: float = _opt(0.6, "reject a frame whose stars are also fainter than this fraction of "
                                              "the session's (clouds); 0 disables", min=0.0, max=1.0)
    max_background_ratio: float = _opt(1.5, "reject a frame whose background is also this many times the "
                                            "session's median (Moon, dawn); 0 disables", min=0.0, max=100)
    collapse_star_ratio: float = _opt(0.25, "from the first frame on, reject a frame with fewer stars than this "
                                            "fraction of the session's; 0 disables", min=0.0, max=1.0)
    max_fwhm_px: float = _opt(0.0, "absolute limit: reject a frame whose FWHM exceeds this many pixels; 0 (the "
                                   "default) disables", min=0.0, max=1000)
    max_eccentricity: float = _opt(0.0, "absolute limit: reject a frame whose eccentricity exceeds this; 0 (the "
                                        "default) disables", min=0.0, max=1.0)
    min_star_count: int = _opt(0, "absolute limit: reject a frame with fewer stars; 0 (the default) disables",
                               min=0, max=100000)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    idle_minutes: float = _opt(30.0, "close a session after this long without a new light", min=0.1,
                               max=1440)
    pointing_radius_arcmin: float = _opt(30.0, "lights without OBJECT join a session within this radius",
                                         min=0.1, max=600)
    checkpoint_every: int = _opt(20, "checkpoint the stack after this many frames (a checkpoint is the whole "
                                     "stack state: 400 MB at 26 MP; frames after the last one are re-stacked "
                                     "from their files after a crash)", min=1, max=1000)
    checkpoint_seconds: float = _opt(600.0, "checkpoint frames stacked this long ago even when fewer than "
                                            "checkpoint_every have come", min=1, max=86400)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    latitude: float | None = _opt(None, "site latitude, degrees north (for the end of night)", min=-90,
                                  max=90)
    longitude: float | None = _opt(None, "site longitude, degrees east", min=-180, max=180)
    elevation: float = _opt(0.0, "site elevation, metres", min=-500, max=9000)


@dataclass(frozen=True, slots=True)
class WebConfig:
    enabled: bool = _opt(False, "serve the dashboard and the JSON API")
    host: str = _opt("127.0.0.1", "address to bind; 0.0.0.0 opens it to the network")
    port: int = _opt(8080, "TCP port", min=1, max=65535)
    token: str = _opt("", "token for POST actions (closing sessions); empty: read-only")


@dataclass(frozen=True, slots=True)
class IndiConfig:
    enabled: bool = _opt(False, "drive a camera through INDI (needs pyindi-client)")
    host: str = _opt("localhost", "indiserver host")
    port: int = _opt(7624, "indiserver port", min=1, max=65535)
    camera: str = _opt("CCD Simulator", "INDI camera device name")
    filter_wheel: str = _opt("", "INDI filter wheel device name (empty: none)")
    mount: str = _opt("", "INDI mount device name (empty: none)")
    upload: str = _opt("client", "client: astrod receives each image as a BLOB and writes it into the capture "
                                 "folder; local: the driver writes it there itself (same host only)",
                       choices=("client", "local"))
    connect_timeout: float = _opt(10.0, "seconds to wait for the server and devices", min=0.5, max=600)
    exposure_retries: int = _opt(2, "retries of a failed exposure", min=0, max=100)
    cooler_tolerance: float = _opt(1.0, "°C around the set-point that counts as reached", min=0.1, max=20)
    cooler_timeout: float = _opt(600.0, "seconds to wait for the set-point before going on with a warning", min=0,
                                 max=7200)


@dataclass(frozen=True, slots=True)
class CaptureStepConfig:
    target: str = _opt("", "target name, written as OBJECT (empty for calibration frames)")
    frame: str = _opt("light", "frame type", choices=("light", "dark", "flat", "bias", "darkflat"))
    filter: str = _opt("", "filter name (empty: leave the wheel where it is)")
    exposure: float = _opt(1.0, "seconds", min=0.0, max=36000)
    count: int = _opt(1, "frames to take", min=1, max=100000)
    gain: float | None = _opt(None, "camera gain (unset: leave as is)", min=0, max=100000)
    offset: float | None = _opt(None, "camera offset (unset: leave as is)", min=0, max=100000)
    binning: int = _opt(1, "binning, both axes", min=1, max=16)
    temperature: float | None = _opt(None, "cooler set-point, °C (unset: cooler untouched)", min=-100, max=50)
    start: str = _opt("", "when the step may start: empty (now), 'dusk' (astronomical), or an ISO 8601 time")


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    name: str = _opt("plan", "name of the capture plan (its progress is journaled under this name)")
    steps: tuple[CaptureStepConfig, ...] = _opt((), "the plan's steps ([[capture.steps]] tables), in order")


@dataclass(frozen=True, slots=True)
class SolveConfig:
    enabled: bool = _opt(True, "plate-solve each session's reference frame in the background (astrometry.net's "
                                     "solve-field, never over the network) and put its WCS into the stacks (without "
                                     "solve-field or index files: said once in the log, stacks carry no WCS); "
                                     "`astrod reprocess` solves its sessions' references too; `astrod solve` works "
                                     "either way")
    timeout_s: float = _opt(30.0, "time limit of one solve with an RA/Dec hint from the header, seconds", min=1,
                            max=3600)
    annotate: bool = _opt(False, "once a session's reference is solved, draw the catalogued objects in its field "
                                 "(OpenNGC, with their names) and an RA/Dec grid on the preview JPEG")
    blind_timeout_s: float = _opt(120.0, "time limit of one blind solve (no RA/Dec in the header: the whole sky is "
                                         "searched), seconds", min=1, max=3600)
    index_dirs: tuple[Path, ...] = _opt((), "further folders of astrometry.net index files (2MASS, Gaia, for "
                                            "fields narrower than the Tycho-2 indexes' 25')", path_kind="dir")


@dataclass(frozen=True, slots=True)
class PhotometryTargetConfig:
    name: str = _opt("", "target name (its files: lightcurve_<name>.csv and .png)")
    x: float | None = _opt(None, "x on the session's first reference frame, 1-based as ds9 and FITS count")
    y: float | None = _opt(None, "y on the session's first reference frame, 1-based")
    ra: float | None = _opt(None, "right ascension, degrees (for BJD_TDB and airmass; the position too when x/y "
                                  "are not given, from the plate solution)", min=0, max=360)
    dec: float | None = _opt(None, "declination, degrees", min=-90, max=90)


@dataclass(frozen=True, slots=True)
class PhotometryConfig:
    targets: tuple[PhotometryTargetConfig, ...] = _opt((), "stars whose light curve each session measures "
                                                           "([[photometry.targets]] tables)")
    aperture_fwhm: float = _opt(1.5, "aperture radius, in FWHM of the session's first reference frame", min=0.3,
                                max=10)
    annulus_inner_fwhm: float = _opt(4.0, "sky annulus inner radius, FWHM (at least 2 px beyond the aperture)",
                                     min=0.5, max=50)
    annulus_outer_fwhm: float = _opt(7.0, "sky annulus outer radius, FWHM", min=1.0, max=100)
    max_comparisons: int = _opt(10, "comparison stars in the automatic ensemble", min=1, max=100)
    gain: float = _opt(0.0, "camera gain for the errors, e-/ADU; 0: the frame's EGAIN, else 1", min=0.0, max=1000)
    read_noise: float = _opt(0.0, "read noise, e- (the sky annulus's measured noise counts when larger)", min=0.0,
                             max=1000)
    saturation: float = _opt(0.0, "ADU at which a calibrated pixel counts as saturated; 0: 95 % of 65535",
                             min=0.0, max=1e9)
    telescope_diameter_m: float = _opt(0.0, "telescope aperture for the scintillation noise term (needs [site]); "
                                            "0: left out", min=0.0, max=50)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _opt("info", "log level", choices=("debug", "info", "warning", "error"))
    format: str = _opt("auto", "auto: JSON under systemd or when not on a terminal, else coloured",
                       choices=("auto", "json", "console"))


@dataclass(frozen=True, slots=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    library: LibraryConfig = field(default_factory=LibraryConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    finish: FinishConfig = field(default_factory=FinishConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    web: WebConfig = field(default_factory=WebConfig)
    indi: IndiConfig = field(default_factory=IndiConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def state_dir(self, env: Mapping[str, str] | None = None) -> Path:
        e = os.environ if env is None else env
        if self.paths.state is not None:
            return self.paths.state
        if e.get("STATE_DIRECTORY"):  # systemd's StateDirectory=
            return Path(e["STATE_DIRECTORY"].split(":")[0])
        base = Path(e.get("XDG_STATE_HOME") or Path(e.get("HOME", "~")) / ".local" / "state")
        return Path(os.path.expanduser(base)) / "astrod"

    def library_dir(self, env: Mapping[str, str] | None = None) -> Path:
        e = os.environ if env is None else env
        if self.paths.library is not None:
            return self.paths.library
        base = Path(e.get("XDG_DATA_HOME") or Path(e.get("HOME", "~")) / ".local" / "share")
        return Path(os.path.expanduser(base)) / "astrod" / "library"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (Mapping, dict):
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {Path: "path", str: "string", float: "number", int: "integer", bool: "boolean"}.get(tp, str(tp))


class _Builder:
    """Turns parsed TOML into config dataclasses, collecting every problem instead of stopping at the first."""

    def __init__(self, base: Path, *, check_disk: bool = True) -> None:
        self.problems: list[str] = []
        self.base = base
        self.check_disk = check_disk

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def build(self, cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(path, f"unknown key{hint}")
                continue
            converted = self.convert(hints[key], value, path, fields[key].metadata)
            if converted is not _INVALID:
                kwargs[key] = converted
        return cls(**kwargs)

    def convert(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return self.convert(args[0], value, path, meta)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                self.problem(path, f"expected a table, got {type(value).__name__}")
                return _INVALID
            return self.build(typing.cast(type[Any], tp), value, path)
        if origin is tuple:
            (item,) = typing.get_args(tp)[:1]
            items = value if isinstance(value, list) else None
            if items is None:
                self.problem(path, f"expected a list of {_type_name(item)}, got {type(value).__name__}")
                return _INVALID
            out = [self.convert(item, v, f"{path}[{i}]", meta) for i, v in enumerate(items)]
            return _INVALID if any(o is _INVALID for o in out) else tuple(out)
        if origin in (Mapping, dict) or tp is Mapping:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                self.problem(path, "expected a table of strings")
                return _INVALID
            return dict(value)
        return self.scalar(tp, value, path, meta)

    def scalar(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        if tp is bool:
            if not isinstance(value, bool):
                self.problem(path, f"expected true or false, got {value!r}")
                return _INVALID
            return value
        if tp in (int, float):
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok or (tp is float and isinstance(value, float))
            if not ok:
                self.problem(path, f"expected {_type_name(tp)}, got {value!r}")
                return _INVALID
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                self.problem(path, f"{value} is out of range [{lo}, {hi}]")
                return _INVALID
            return tp(value)
        if tp is str:
            if not isinstance(value, str):
                self.problem(path, f"expected a string, got {value!r}")
                return _INVALID
            choices = meta.get("choices")
            if choices and value not in choices:
                close = difflib.get_close_matches(value, choices, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(path, f"{value!r} is not one of {', '.join(choices)}{hint}")
                return _INVALID
            return value
        if tp is Path:
            if not isinstance(value, str) or not value or "\x00" in value:
                self.problem(path, f"expected a path string, got {value!r}")
                return _INVALID
            p = Path(os.path.expanduser(value))
            if not p.is_absolute():
                p = self.base / p
            if self.check_disk and meta.get("path_kind") == "dir" and p.exists() and not p.is_dir():
                self.problem(path, f"{p} exists and is not a folder")
                return _INVALID
            return p
        raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in the dataclasses, not input


_INVALID = object()


def parse_config(text: str, *, base: Path, source: str = "<config>", check_disk: bool = True) -> Config:
    """Parse TOML text into a Config, relative paths resolved against ``base``; ConfigError lists every problem.
    ``check_disk=False`` leaves out what depends on the disk now (a folder path taken by a file): commands that
    only talk to the daemon must work while its output disk is broken."""
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as err:
        raise ConfigError([f"{source}: not valid TOML: {err}"]) from err
    builder = _Builder(base, check_disk=check_disk)
    config: Config = builder.build(Config, data, "")
    config = _check_cross_fields(with_base(config, base), builder)
    if builder.problems:
        raise ConfigError(builder.problems)
    return config


def with_base(config: Config, base: Path) -> Config:
    """Default folders left out of the file resolve against ``base`` like written ones (the builder already made
    written paths absolute, so only defaults are still relative)."""
    paths = config.paths
    watch = tuple(p if p.is_absolute() else base / p for p in paths.watch)
    output = paths.output if paths.output.is_absolute() else base / paths.output
    return dataclasses.replace(config, paths=dataclasses.replace(paths, watch=watch, output=output))


def _check_cross_fields(config: Config, builder: _Builder) -> Config:
    if config.library.temperature_max < config.library.temperature_tolerance:
        builder.problem("library.temperature_max", "must be at least library.temperature_tolerance")
    for i, rule in enumerate(config.headers.folders):
        if not rule.pattern:
            builder.problem(f"headers.folders[{i}].pattern", "missing")
        for key in rule.set:
            if key not in SETTABLE_RULE_FIELDS:
                close = difflib.get_close_matches(key, sorted(SETTABLE_RULE_FIELDS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                builder.problem(f"headers.folders[{i}].set.{key}", f"not a field a folder rule can set{hint}")
    if not config.output.formats:
        builder.problem("output.formats", "empty: name at least one of " + ", ".join(OUTPUT_FORMATS))
    elif len(set(config.output.formats)) != len(config.output.formats):
        builder.problem("output.formats", "a format is listed twice")
    for name, channel in config.composite.names.items():
        if channel not in COMPOSITE_CHANNELS:
            builder.problem(f"composite.names.{name}", f"{channel!r} is not one of {', '.join(COMPOSITE_CHANNELS)}")
    if (config.site.latitude is None) != (config.site.longitude is None):
        builder.problem("site", "latitude and longitude go together")
    _check_photometry(config.photometry, builder)
    return config


def _check_photometry(p: PhotometryConfig, builder: _Builder) -> None:
    if p.annulus_outer_fwhm <= p.annulus_inner_fwhm:
        builder.problem("photometry.annulus_outer_fwhm", "must be larger than annulus_inner_fwhm")
    names = [t.name for t in p.targets]
    for i, t in enumerate(p.targets):
        key = f"photometry.targets[{i}]"
        if not t.name:
            builder.problem(f"{key}.name", "missing")
        elif names.count(t.name) > 1:
            builder.problem(f"{key}.name", f"{t.name!r} is given twice")
        if (t.x is None) != (t.y is None) or (t.ra is None) != (t.dec is None):
            builder.problem(key, "x goes with y, ra with dec")
        elif t.x is None and t.ra is None:
            builder.problem(key, "give x and y, or ra and dec")


def report_config_error(err: ConfigError, *, prefix: str = "config error: ", stream: TextIO | None = None) -> int:
    """Print every problem of ``err``, one line each (to stderr unless ``stream`` is given), and return
    EX_CONFIG, the exit status of a command that met a bad config file. The one way commands report it."""
    out = sys.stderr if stream is None else stream
    for problem in err.problems:
        print(f"{prefix}{problem}", file=out)
    return EX_CONFIG


def iter_options(cls: type[Any] = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every leaf option as (dotted key path, field), for docs and the example-coverage test."""
    out: list[tuple[str, dataclasses.Field[Any]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(iter_options(typing.cast(type[Any], tp), key))
        else:
            out.append((key, f))
    return out
