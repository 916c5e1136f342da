"""A synthetic observatory for the library tests: two cameras, gains, temperatures, exposures, filters, nights,
two header dialects, and some junk; every group is written from a plan that is also the test's truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astrod.library.build import BuildOptions
from astrod.library.match import MatchRules
from tests import synth

CAMERA_A = "ZWO ASI2600MM Pro"
CAMERA_B = "CCD Simulator"
NIGHT_1 = datetime(2024, 10, 5, 20, 0, tzinfo=UTC)
NIGHT_2 = datetime(2024, 10, 6, 21, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Group:
    """One planned group of frames: what a master should come from."""

    camera: str
    kind: str
    n: int
    gain: int = 100
    temperature: float = -10.0
    exposure: float = 0.0
    filter: str | None = None
    night: datetime = NIGHT_1

    @property
    def key_words(self) -> tuple[str, ...]:
        """Words the master's description must contain."""
        words = [self.kind, self.camera, f"gain {self.gain}", f"{self.temperature:g} °C"]
        if self.kind in ("dark", "darkflat"):
            words.append(f"{self.exposure:g} s")
        if self.kind == "flat":
            words.append(f"filter {self.filter}" if self.filter else "")
            words.append(f"night {self.night.date().isoformat()}")
        return tuple(w for w in words if w)


@dataclass
class Observatory:
    root: Path
    sources: Path
    sensors: dict[str, synth.Sensor]
    groups: list[Group]
    junk: dict[str, Path] = field(default_factory=dict)
    lights: dict[str, Path] = field(default_factory=dict)


PLAN = [
    Group(CAMERA_A, "bias", 5),
    Group(CAMERA_A, "bias", 5, temperature=-20.0),
    Group(CAMERA_A, "bias", 3, gain=0),  # fewer than min_frames: LOW_N
    Group(CAMERA_A, "dark", 5, exposure=60.0),
    Group(CAMERA_A, "dark", 5, exposure=300.0),
    Group(CAMERA_A, "dark", 5, exposure=300.0, temperature=-20.0),
    Group(CAMERA_A, "darkflat", 5, exposure=2.0),
    Group(CAMERA_A, "flat", 5, exposure=2.0, filter="L"),
    Group(CAMERA_A, "flat", 5, exposure=2.0, filter="Ha", night=NIGHT_2),
    Group(CAMERA_B, "bias", 5),
    Group(CAMERA_B, "dark", 5, exposure=120.0),
    Group(CAMERA_B, "flat", 5, exposure=1.5),
]


def write_group(folder: Path, sensor: synth.Sensor, group: Group, *, seed: int, dialect: str) -> list[Path]:
    """Write the frames of ``group`` from ``sensor`` into ``folder``; returns their paths."""
    paths = []
    for i in range(group.n):
        s = seed * 100 + i
        if group.kind == "bias":
            data = sensor.bias(seed=s)
        elif group.kind in ("dark", "darkflat"):
            data = sensor.dark(exposure=group.exposure, temperature=group.temperature, seed=s)
        else:
            data = sensor.flat(level=20000.0, seed=s, exposure=group.exposure, temperature=group.temperature)
        name = f"{group.kind}_{group.gain}_{group.temperature:g}_{group.exposure:g}_{group.filter}_{i:02d}.fits"
        paths.append(synth.write_fits(
            folder / name, data, dialect=dialect, kind=group.kind, exposure=group.exposure, gain=group.gain,
            temperature=group.temperature, set_temperature=group.temperature, filter=group.filter, object=None,
            camera=group.camera, date_obs=group.night + timedelta(minutes=i), bayer=sensor.bayer))
    return paths


def make_observatory(root: Path) -> Observatory:
    sensors = {CAMERA_A: synth.Sensor(width=160, height=120, seed=11),
               CAMERA_B: synth.Sensor(width=128, height=96, seed=12, bayer="RGGB")}
    sources = root / "sources"
    for i, group in enumerate(PLAN):
        dialect = "nina" if group.camera == CAMERA_A else "indi"
        folder = sources / group.camera.replace(" ", "_") / f"{group.kind}s"
        write_group(folder, sensors[group.camera], group, seed=i + 1, dialect=dialect)
    junk = root / "sources" / "junk"
    junk.mkdir(parents=True)
    sensor = sensors[CAMERA_A]
    good = synth.write_fits(junk / "Darks" / "truncated.fits", sensor.dark(exposure=60, temperature=-10, seed=1),
                            kind="dark", exposure=60.0, camera=CAMERA_A)
    good.write_bytes(good.read_bytes()[:-20000])
    (junk / "notes.fits").write_text("not a FITS file at all\n" * 200)
    light = synth.write_fits(junk / "light_001.fits", sensor.bias(seed=5), kind="light", exposure=60.0,
                             camera=CAMERA_A)
    unknown = synth.write_fits(junk / "misc" / "mystery.fits", sensor.bias(seed=6), kind="bias", camera=CAMERA_A,
                               extra={"IMAGETYP": None})
    rgb = synth.write_fits(junk / "Flats" / "rgb.fits", synth.to_rgb(sensor.bias(seed=7)), kind="flat",
                           camera=CAMERA_A)
    return Observatory(root=root, sources=sources, sensors=sensors, groups=list(PLAN),
                       junk={"truncated": good, "notes": junk / "notes.fits", "unknown": unknown, "rgb": rgb},
                       lights={"light": light})


def build_options(**overrides: object) -> BuildOptions:
    """Build options for tests: the site at longitude 0 so nights do not depend on the machine's time zone."""
    values: dict[str, object] = {"rules": MatchRules(longitude=0.0)}
    values.update(overrides)
    return BuildOptions(**values)  # type: ignore[arg-type]
