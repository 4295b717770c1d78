"""A root shell (fakeroot) in a sandbox, jailed in it (``u2cb connect``).

Started by the service through :func:`start`: fresh user, mount, PID, IPC, UTS
and network namespaces (:mod:`hpcstack.build.jail`), then ``pivot_root`` into
the sandbox itself, with ``/proc``, ``/dev``, ``/sys`` and the host's resolver
mounted in.  ``whoami`` says root and ``apt-get install`` works (the network is
pasta's, without the host's loopback); ``/`` and ``/proc/1/root`` are the
sandbox and nothing else.  What the command changes stays in the sandbox; the
exit status is the command's.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
from collections.abc import Sequence

from hpcstack.build import jail

SHELL_PROMPT = r"(u2cb) \u@\h:\w\$ "


def _take_terminal() -> None:
    """In the child: a session of its own with the PTY on stdin as its terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start(sandbox: str, command: Sequence[str], *, network: bool, term: str, tty: int,
          loopback_ports: Sequence[int] = ()) -> subprocess.Popen:
    """Start the session on the terminal ``tty`` (a PTY's slave side)."""
    spec = jail.JailSpec(rootfs=sandbox, network=network, loopback_ports=list(loopback_ports))
    return jail.start("hpcstack.build.session", [spec.to_json(), "--", *command],
                      spec, stdin=tty, stdout=tty, stderr=tty, env=jail.clean_env(TERM=term),
                      cwd="/", close_fds=True, preexec_fn=_take_terminal)


def default_shell() -> list[str]:
    if os.path.exists("/bin/bash"):
        return ["/bin/bash", "--login", "-i"]
    return ["/bin/sh", "-i"]


def run(spec: jail.JailSpec, command: Sequence[str]) -> int:
    """Enter the jail, run ``command`` (default: a login shell), its exit status."""
    jail.enter(spec)
    argv = list(command) or default_shell()
    env = {"PATH": jail.SAFE_PATH, "HOME": "/root", "LANG": "C", "TERM": os.environ.get("TERM",
           "xterm"), "PS1": SHELL_PROMPT, "USER": "root", "LOGNAME": "root",
           "SHELL": argv[0]}
    # As the namespace's init we must not die of the terminal's Ctrl-C: the command
    # gets it.  A Python-level handler (not SIG_IGN) is reset by exec in the child.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGQUIT, lambda *_: None)
    try:
        proc = subprocess.Popen(argv, env=env, cwd="/")
    except OSError as err:
        print(f"u2cb: {argv[0]}: {err.strerror}", file=sys.stderr)
        return 127
    while True:
        try:
            status = proc.wait()
            break
        except InterruptedError:
            continue
    return status if status >= 0 else 128 - status


def main(argv: list[str]) -> int:
    argv = jail.handshake(argv)
    spec = jail.JailSpec.from_json(argv[0])
    rest = argv[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    return run(spec, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
