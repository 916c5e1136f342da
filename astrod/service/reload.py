"""SIGHUP: which config changes the running daemon applies, and which wait for a restart."""

from __future__ import annotations

from dataclasses import dataclass, fields

from astrod.config import Config

# sections the daemon applies at once (each by its own means); open sessions keep the pipeline settings they
# started with, new sessions use the new ones
APPLIED = frozenset({"watch", "headers", "library", "stack", "quality", "session", "site", "log", "web"})
# paths: watch and output are applied; state and library are where the daemon's own files are
RESTART_PATHS = ("state", "library")


@dataclass(frozen=True, slots=True)
class ConfigChange:
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def compare(old: Config, new: Config) -> ConfigChange:
    """The changed sections (``paths.*`` by option), split into applied and needing a restart."""
    applied: list[str] = []
    restart: list[str] = []
    for f in fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if f.name == "paths":
            for p in fields(a):
                if getattr(a, p.name) != getattr(b, p.name):
                    (restart if p.name in RESTART_PATHS else applied).append(f"paths.{p.name}")
        elif f.name in APPLIED:
            applied.append(f.name)
        else:
            restart.append(f.name)
    return ConfigChange(tuple(applied), tuple(restart))
