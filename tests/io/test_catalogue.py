"""The OpenNGC catalogue through pyongc: objects near a position, named as people write them, stars left out."""

from __future__ import annotations

import pytest

from astrod.io.catalogue import catalogue_missing, display_name, objects_near

MISSING = catalogue_missing()


def test_names_are_written_as_people_write_them() -> None:
    """OpenNGC's padded names lose their zeros and gain a space; other names stay as they are."""
    assert display_name("NGC0224") == "NGC 224"
    assert display_name("M031") == "M 31"
    assert display_name("IC1396") == "IC 1396"
    assert display_name("NGC5194A") == "NGC 5194A"
    assert display_name("Mel022") == "Mel022"


@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
def test_objects_near_a_position_nearest_first() -> None:
    """Around the Iris Nebula the first object is NGC 7023 at its catalogued place; around M 31's centre it is
    named M 31 (not NGC 224), M 32 is near, and no entry is a star or a duplicate."""
    (iris, *_) = objects_near(315.40, 68.17, 0.5)
    assert iris.name == "NGC 7023" and abs(iris.ra - 315.398) < 0.01 and abs(iris.dec - 68.170) < 0.01
    near_m31 = objects_near(10.6848, 41.2690, 1.0)
    assert near_m31[0].name == "M 31" and "M 32" in [o.name for o in near_m31]
    assert all(o.kind not in ("*", "**", "Dup", "NonEx") for o in near_m31)
