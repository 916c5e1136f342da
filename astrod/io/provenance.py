"""Provenance in one place (like ccdproc's ``log_to_metadata``): a `Provenance` value says what made a product
(software, inputs, method, parameters, notes) and `provenance_cards` turns it into header cards and HISTORY
lines in one scheme, for every product astrod writes (masters, bad-pixel maps, calibrated frames, stacks).

The scheme:

* ``CREATOR`` = ``"astrod <version>"`` and ``ASTRODV`` = the version, on every product (plus any legacy
  keyword in ``software_cards``, e.g. ``SWCREATE`` on masters);
* the method under ``method_card`` (``COMBMETH``, ``STACKMTH``, ...), ``NCOMBINE`` when given, then one card
  per parameter (keyword -> value, or keyword -> (value, comment));
* HISTORY: one line per input, ``"<input_label> <name>"`` (masters read their ``source <name>`` lines back
  when the index is rebuilt), then one ``"astrod: <note>"`` line per note.

Every text is ASCII (`ascii_text`); HISTORY lines stay whole in `ProvenanceCards.history` and are cut into
72-character cards (`history_lines`) when written into a header (`write_cards`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from astropy.io import fits

from astrod import __version__

SOFTWARE = f"astrod {__version__}"
HISTORY_WIDTH = 72  # characters a HISTORY card holds
CARD_WIDTH = 80

ParamValue = str | int | float | bool | None
Card = tuple[Any, str]

_ASCII = {"°C": "degC", "°": "deg", "→": "->", "×": "x", "±": "+/-", "−": "-"}


def ascii_text(text: str) -> str:
    """``text`` for a FITS header: the symbols reasons use spelled in ASCII, anything else non-ASCII as '?'."""
    for symbol, spelled in _ASCII.items():
        text = text.replace(symbol, spelled)
    return text.encode("ascii", "replace").decode("ascii")


@dataclass(frozen=True, slots=True)
class Provenance:
    """What made a product: its ``kind`` (``"master dark"``, ``"bad-pixel map"``, ``"calibrated frame"``,
    ``"stack"``), the ``software``, the names of its ``inputs``, its ``method`` and ``parameters`` (FITS keyword
    -> value or (value, comment)), and free-text ``notes``."""

    kind: str
    inputs: tuple[str, ...] = ()
    method: str = ""
    parameters: Mapping[str, ParamValue | tuple[ParamValue, str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    software: str = SOFTWARE
    input_label: str = "source"
    method_card: str = "METHOD"
    method_comment: str = ""
    ncombine: int | None = None
    ncombine_comment: str = "frames combined"
    software_cards: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProvenanceCards:
    """The header form of a `Provenance`: cards (keyword -> (value, comment), in order) and whole HISTORY
    lines (ASCII; `history_lines` cuts them to the card width)."""

    cards: dict[str, Card]
    history: tuple[str, ...]


def provenance_cards(prov: Provenance) -> ProvenanceCards:
    """The one function that turns a product's provenance into header cards and HISTORY lines."""
    cards: dict[str, Card] = {"CREATOR": (ascii_text(prov.software), f"software that made this {prov.kind}"),
                              "ASTRODV": (__version__, "astrod version")}
    for key in prov.software_cards:
        cards[key] = (ascii_text(prov.software), "software")
    if prov.method:
        cards[prov.method_card] = (ascii_text(prov.method), prov.method_comment or f"how this {prov.kind} was made")
    if prov.ncombine is not None:
        cards["NCOMBINE"] = (prov.ncombine, prov.ncombine_comment)
    for key, given in prov.parameters.items():
        value, comment = given if isinstance(given, tuple) else (given, "")
        if value is None:
            continue
        cards[key] = (ascii_text(value) if isinstance(value, str) else value, ascii_text(comment))
    history = [ascii_text(f"{prov.input_label} {name}") for name in prov.inputs]
    history += [ascii_text(f"astrod: {note}") for note in prov.notes]
    return ProvenanceCards(cards=cards, history=tuple(history))


def history_lines(line: str) -> list[str]:
    """One HISTORY line as the cards that hold it: ASCII, cut every 72 characters (joined back they give the
    line)."""
    text = ascii_text(line)
    return [text[i:i + HISTORY_WIDTH] for i in range(0, len(text), HISTORY_WIDTH)] or [""]


def put_card(header: fits.Header, key: str, value: Any, comment: str = "") -> None:
    """Set one card: None skips it; text is made ASCII; a value too long to leave room for its comment loses
    the comment."""
    if value is None:
        return
    if isinstance(value, str):
        value = ascii_text(value)
        if 10 + len(value) + 5 + len(comment) > CARD_WIDTH:
            comment = ""
    header[key] = (value, ascii_text(comment))


def write_cards(header: fits.Header, cards: Mapping[str, Card], history: Iterable[str] = ()) -> fits.Header:
    """Write cards (keyword -> (value, comment)) and HISTORY lines (cut at 72 characters) into ``header``;
    returns it."""
    for key, (value, comment) in cards.items():
        put_card(header, key, value, comment)
    for line in history:
        for part in history_lines(line):
            header.add_history(part)
    return header


def write_provenance(header: fits.Header, prov: Provenance) -> fits.Header:
    """``header`` with the provenance cards and HISTORY lines of ``prov`` added."""
    built = provenance_cards(prov)
    return write_cards(header, built.cards, built.history)
