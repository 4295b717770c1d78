"""The service's PID file: written while it runs, read by ``hpcstack serve --stop``.

``--stop`` signals the PID only when that process is still ``hpcstack serve`` (a PID
reused by another program is left alone), then waits for it to exit: a clean stop
re-queues the builds it was running, as systemd's ``systemctl stop`` does.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.files import write_atomic


def serving(pid: int) -> bool:
    """Whether ``pid`` is a running ``hpcstack serve``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and any(a.endswith(b"hpcstack") for a in argv)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def claim(path: Path) -> None:
    """This process's PID in ``path``; refused while another ``hpcstack serve`` holds it."""
    other = read_pid(path)
    if other is not None and other != os.getpid() and serving(other):
        raise UserError(f"{path}: the service already runs as PID {other} "
                        "(hpcstack serve --stop ends it)")
    write_atomic(path, f"{os.getpid()}\n".encode())


def release(path: Path) -> None:
    """Remove ``path`` if it still names this process (at shutdown: uvicorn ends a
    SIGTERM by raising it again, so code after ``uvicorn.run`` never runs)."""
    if read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def stop_service(path: Path, timeout: float = 60.0) -> str:
    """SIGTERM the service named in ``path`` and wait until it has exited."""
    pid = read_pid(path)
    if pid is None or not serving(pid):
        return f"no service running (no live PID in {path})"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not serving(pid):
            return f"stopped the service (PID {pid})"
        time.sleep(0.1)
    raise UserError(f"PID {pid} did not stop within {timeout:g} s; it is still running")
