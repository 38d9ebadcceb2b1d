"""A busy machine on demand (``--load N``): N processes that each spin on a core.

A user's machine is rarely quiet (DataLoader workers, a second model, a CI
runner); ``--load`` measures the peers while N such processes compete with them
for the cores, and stops the processes when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes spinning on the CPU until the block ends (then killed)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
