"""The exceptions astrod raises. Each message names the file (or config key) and the cause, once."""

from __future__ import annotations


class AstrodError(Exception):
    """Base class of every error astrod raises on purpose."""


class ConfigError(AstrodError):
    """The configuration is invalid; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class FrameReadError(AstrodError):
    """A file could not be read as a frame (missing, truncated, corrupt, unsupported)."""


class FrameRejected(AstrodError):
    """A readable frame was refused by a processing step; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RegistrationError(FrameRejected):
    """A frame could not be registered onto its reference."""


class LibraryError(AstrodError):
    """The master library is missing something or is inconsistent."""


class SolveError(AstrodError):
    """A frame could not be plate-solved (no solver, no index for its scale, too few stars, time limit)."""
