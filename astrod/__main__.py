from __future__ import annotations

import sys

from astrod.cli import main

sys.exit(main())
