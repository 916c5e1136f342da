"""Provenance in one place: a `Provenance` value becomes header cards and HISTORY lines in one scheme."""

from __future__ import annotations

import warnings
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from astrod import __version__
from astrod.io.provenance import (
    HISTORY_WIDTH,
    Provenance,
    ascii_text,
    history_lines,
    provenance_cards,
    write_cards,
    write_provenance,
)


def test_cards_carry_software_method_count_and_parameters_in_order() -> None:
    """CREATOR and ASTRODV name the software, the method sits under its keyword, NCOMBINE counts the frames,
    then one card per parameter in the order given (None skipped, bare values without a comment)."""
    prov = Provenance(kind="master dark", inputs=("a.fits", "b.fits"), method="sigma_clip", method_card="COMBMETH",
                      method_comment="combination method", ncombine=2,
                      parameters={"COMBKAPP": (3.0, "sigma-clip threshold"), "REJFRAC": 0.01, "NONE": None},
                      software_cards=("SWCREATE",))
    built = provenance_cards(prov)
    assert built.cards["CREATOR"] == (f"astrod {__version__}", "software that made this master dark")
    assert built.cards["ASTRODV"][0] == __version__ and built.cards["SWCREATE"][0] == f"astrod {__version__}"
    assert built.cards["COMBMETH"] == ("sigma_clip", "combination method")
    assert built.cards["NCOMBINE"] == (2, "frames combined")
    assert built.cards["COMBKAPP"] == (3.0, "sigma-clip threshold") and built.cards["REJFRAC"] == (0.01, "")
    assert "NONE" not in built.cards
    assert list(built.cards)[-2:] == ["COMBKAPP", "REJFRAC"]


def test_history_has_one_line_per_input_then_one_per_note() -> None:
    """Inputs come first as '<label> <name>' (masters read 'source <name>' back), then 'astrod: <note>'."""
    built = provenance_cards(Provenance(kind="stack", inputs=("dark.fits", "flat.fits"), input_label="master:",
                                        notes=("missing master: bias",)))
    assert built.history == ("master: dark.fits", "master: flat.fits", "astrod: missing master: bias")
    plain = provenance_cards(Provenance(kind="master bias", inputs=("b1.fits",)))
    assert plain.history == ("source b1.fits",) and "METHOD" not in plain.cards and "NCOMBINE" not in plain.cards


def test_text_is_ascii() -> None:
    """Symbols are spelled in ASCII, anything else non-ASCII becomes '?', in cards and HISTORY alike."""
    assert ascii_text("-10 °C → 2× ±1 − é") == "-10 degC -> 2x +/-1 - ?"
    built = provenance_cards(Provenance(kind="stack", inputs=("café.fits",), method="σ-clip",
                                        parameters={"NOTE": ("5 °C", "in °C")}, notes=("60 s → 120 s",)))
    assert built.cards["METHOD"][0] == "?-clip" and built.cards["NOTE"] == ("5 degC", "in degC")
    assert built.history == ("source caf?.fits", "astrod: 60 s -> 120 s")
    for line in built.history:
        line.encode("ascii")


def test_long_history_lines_are_cut_at_72_characters_and_join_back() -> None:
    """A HISTORY line longer than a card holds is cut every 72 characters; joined, the pieces give it back."""
    line = "astrod: " + "x" * 150 + " end"
    parts = history_lines(line)
    assert [len(p) for p in parts] == [72, 72, len(line) - 144]
    assert "".join(parts) == line
    assert history_lines("short") == ["short"] and history_lines("y" * HISTORY_WIDTH) == ["y" * 72]


def test_a_written_header_round_trips_through_a_file(tmp_path: Path) -> None:
    """Written into a FITS file without warnings: every card, the long line in 72-character pieces, a long
    value without its comment, and the 'source' lines a master's index rebuild reads back."""
    long_name = "dark_g100_o50_bin1x1_6248x4176_m10C_300s_2024-01-01_0123456789abcdef.fits"
    prov = Provenance(kind="master dark", inputs=("a.fits", "b.fits"), method="mean", method_card="COMBMETH",
                      ncombine=2, parameters={"CALDARK": (long_name, "a comment with no room left")},
                      notes=("n" * 100,))
    path = tmp_path / "p.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        fits.PrimaryHDU(header=write_provenance(fits.Header(), prov)).writeto(path)
    header = fits.getheader(path)
    assert header["CREATOR"] == f"astrod {__version__}" and header["COMBMETH"] == "mean" and header["NCOMBINE"] == 2
    assert header["CALDARK"] == long_name and header.comments["CALDARK"] == ""
    history = [str(h) for h in header["HISTORY"]]
    assert [h.removeprefix("source ") for h in history if h.startswith("source ")] == ["a.fits", "b.fits"]
    assert all(len(h) <= 72 for h in history) and "".join(history[2:]) == "astrod: " + "n" * 100


def test_write_cards_skips_none() -> None:
    """A card whose value is None is not written."""
    header = write_cards(fits.Header(), {"EMPTY": (None, "nothing"), "FULL": (1, "one")})
    assert "EMPTY" not in header and header["FULL"] == 1
