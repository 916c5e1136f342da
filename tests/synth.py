"""The seeded synthetic-data generator the tests use.

It lives in ``astrod.demo.synth`` because the built-in demo makes its synthetic night with it too; tests import
it from here (``from tests import synth``), so both see the same truth.
"""

from __future__ import annotations

from astrod.demo.synth import *  # noqa: F403
