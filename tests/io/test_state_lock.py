"""One daemon per state folder: the second process to lock it is refused with the holder's pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrod.io.state_lock import StateLock, StateLocked

HOLD = """
import sys, time
from pathlib import Path
from astrod.io.state_lock import StateLock
StateLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateLocked, match=rf"another astrod \(pid {holder.pid}\) holds {tmp_path}"):
            StateLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    lock = StateLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead holder's lock: no stale-lock clean-up needed
    assert (tmp_path / "astrod.lock").read_text().strip() == str(os.getpid())
    lock.release()
