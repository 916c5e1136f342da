"""What a library build is asked to do (:class:`BuildOptions`) and what it reports back (:class:`BuildReport`).

`astrod.library.build` re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from astrod.config import Config
from astrod.core.combine import CenFunc, Method, StdFunc
from astrod.io.headers import PathRule, rules_from_config
from astrod.library.keys import CalibrationKey
from astrod.library.match import MatchRules

Status = Literal["new", "rebuilt", "exists", "up to date", "failed"]


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True)
class CombineParams:
    """How the frames of a master are combined (see :func:`astrod.core.combine.combine`)."""

    method: Method = "sigma_clip"
    kappa: float = 3.0
    maxiters: int | None = 5
    cenfunc: CenFunc = "median"
    stdfunc: StdFunc = "std"
    nlow: int = 1
    nhigh: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "kappa": self.kappa, "maxiters": self.maxiters, "cenfunc": self.cenfunc,
                "stdfunc": self.stdfunc, "nlow": self.nlow, "nhigh": self.nhigh}


@dataclass(frozen=True, slots=True)
class BadPixelParams:
    """How bad pixels are told from good ones (see :func:`astrod.core.calibrate.find_bad_pixels`); part of a
    bad-pixel map's build hash, so a map made under other numbers is rebuilt."""

    unstable_factor: float = 3.0
    hot_noise_factor: float = 5.0
    saturation_fraction: float = 0.8
    stuck_factor: float = 4.0
    hot_sigma: float = 5.0
    cold_fraction: float = 0.5
    column_fraction: float = 0.5
    column_sigma: float = 5.0
    recipe: int = 2  # 1: hot pixels from the master dark alone; 2: from its temporal noise map

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kwargs(self) -> dict[str, float]:
        return {k: v for k, v in self.as_dict().items() if k != "recipe"}


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Everything a build needs besides its sources and library folder."""

    refresh: bool = False
    jobs: int = 1
    min_frames: int = 5
    memory_cap_bytes: int = 2048 * 1024 * 1024
    temperature_bucket: float = 1.0
    combine: CombineParams = field(default_factory=CombineParams)
    rules: MatchRules = field(default_factory=MatchRules)
    rename: Mapping[str, str] = field(default_factory=dict)
    path_rules: tuple[PathRule, ...] = ()
    badpixels: BadPixelParams = field(default_factory=BadPixelParams)

    @classmethod
    def from_config(cls, config: Config, *, refresh: bool = False, jobs: int = 1,
                    min_frames: int | None = None) -> BuildOptions:
        lib = config.library
        method: Method = lib.combine  # type: ignore[assignment]  # validated by the config's choices
        return cls(refresh=refresh, jobs=max(1, jobs), min_frames=lib.min_frames if min_frames is None else min_frames,
                   memory_cap_bytes=lib.memory_cap_mb * 1024 * 1024, temperature_bucket=lib.temperature_bucket,
                   combine=CombineParams(method=method, kappa=lib.kappa), rules=MatchRules.from_config(config),
                   rename=dict(config.headers.rename), path_rules=rules_from_config(config.headers))


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file the build did not use, and why (one line)."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class BuiltMaster:
    """What the build did for one master key."""

    key: CalibrationKey
    status: Status
    path: Path | None
    n_frames: int
    low_n: bool = False
    note: str = ""
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "kind": self.key.kind.value, "key": self.key.describe(),
                "key_id": self.key.key_id, "path": None if self.path is None else str(self.path),
                "n_frames": self.n_frames, "low_n": self.low_n, "note": self.note, "warnings": list(self.warnings)}


@dataclass(frozen=True, slots=True)
class BuildReport:
    """The outcome of a build: one entry per master key seen, the files skipped, and counts."""

    masters: tuple[BuiltMaster, ...]
    skipped: tuple[Skipped, ...]
    scanned: int
    lights_ignored: int

    def count(self, status: Status) -> int:
        return sum(1 for m in self.masters if m.status == status)
