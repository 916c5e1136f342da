"""A master as the library knows it: its key, file, provenance and hashes (one index row, typed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from astrod.io.index import IndexRow
from astrod.library.keys import CalibrationKey, MasterKind


@dataclass(frozen=True, slots=True)
class MasterRecord:
    """One master in the library. ``path`` is absolute; ``info`` holds the details the index keeps as JSON
    (combination method, source names, measured temperature, Bayer pattern, masters it was calibrated with)."""

    key: CalibrationKey
    path: Path
    n_frames: int
    low_n: bool
    source_hash: str
    build_hash: str
    content_hash: str
    created: datetime
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def kind(self) -> MasterKind:
        return self.key.kind

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def temperature_mean(self) -> float | None:
        """Mean sensor temperature of the source frames (the key holds the bucketed set point)."""
        value = self.info.get("temperature_mean")
        return None if value is None else float(value)

    @property
    def bayer(self) -> str | None:
        value = self.info.get("bayer")
        return None if value is None else str(value)

    @property
    def bayer_offset(self) -> tuple[int, int]:
        value = self.info.get("bayer_offset") or (0, 0)
        return (int(value[0]), int(value[1]))

    @property
    def name(self) -> str:
        return self.path.name

    def to_row(self, library: Path) -> IndexRow:
        """The index row of this record, its path relative to the ``library`` folder."""
        try:
            rel = self.path.relative_to(library).as_posix()
        except ValueError:
            rel = self.path.as_posix()
        return IndexRow(key_id=self.key.key_id, kind=self.key.kind.value, camera=self.key.camera,
                        key=self.key.as_dict(), path=rel, n_frames=self.n_frames, low_n=self.low_n,
                        source_hash=self.source_hash, build_hash=self.build_hash, content_hash=self.content_hash,
                        created=self.created.isoformat(), info=dict(self.info))

    @classmethod
    def from_row(cls, row: IndexRow, library: Path) -> MasterRecord:
        rel = PurePosixPath(row.path)
        path = Path(rel) if rel.is_absolute() else library / Path(*rel.parts)
        return cls(key=CalibrationKey.from_dict(dict(row.key)), path=path, n_frames=row.n_frames, low_n=row.low_n,
                   source_hash=row.source_hash, build_hash=row.build_hash, content_hash=row.content_hash,
                   created=datetime.fromisoformat(row.created), info=dict(row.info))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, for ``library list --json``."""
        return {"kind": self.kind.value, "key_id": self.key_id, "key": self.key.as_dict(), "path": str(self.path),
                "n_frames": self.n_frames, "low_n": self.low_n, "source_hash": self.source_hash,
                "content_hash": self.content_hash, "created": self.created.isoformat(), **{
                    k: v for k, v in self.info.items() if k != "sources"}, "sources": self.info.get("sources", [])}
