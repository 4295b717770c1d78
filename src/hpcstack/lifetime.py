"""Child processes that end with their parent, whatever ends the parent.

A build killed with SIGKILL (the OOM killer, a job past its time limit) runs no
cleanup of its own; ``PR_SET_PDEATHSIG`` makes the kernel signal its children
then, so a build namespace never runs on without the build that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for ``sig`` when the parent dies (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
