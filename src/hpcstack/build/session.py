"""Enter a sandbox as fake root and run a shell or a command in it (``u2cb connect``).

Started as ``unshare … python -m hpcstack.build.session ROOTFS -- CMD…``: the
same user, mount and PID namespaces as a build, with the same ``/proc``,
``/dev``, ``/sys`` and resolver mounts (:func:`~hpcstack.build.inside.build_mounts`),
so ``whoami`` says root and ``apt-get install`` works; what the command changes
stays in the sandbox.  The exit status is the command's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from hpcstack.build import fakeroot
from hpcstack.build.inside import build_mounts, chroot_env

SHELL_PROMPT = r"(u2cb) \u@\h:\w\$ "


def session_argv(rootfs: str, command: Sequence[str] = ()) -> list[str]:
    """The host command line that runs ``command`` (default: a login shell) in ``rootfs``."""
    return fakeroot.namespace_argv([sys.executable, "-m", "hpcstack.build.session",
                                    rootfs, "--", *command])


def default_shell(rootfs: str) -> list[str]:
    if os.path.exists(os.path.join(rootfs, "bin/bash")):
        return ["/bin/bash", "--login", "-i"]
    return ["/bin/sh", "-i"]


def run(rootfs: str, command: Sequence[str]) -> int:
    """Run ``command`` chrooted in ``rootfs`` with the build mounts; its exit status."""
    argv = list(command) or default_shell(rootfs)
    term = os.environ.get("TERM", "xterm")
    env = chroot_env({"TERM": term, "PS1": SHELL_PROMPT, "USER": "root", "LOGNAME": "root",
                      "SHELL": argv[0]})
    # As the namespace's init we must not die of the terminal's Ctrl-C: the command
    # gets it.  A Python-level handler (not SIG_IGN) is reset by exec in the child.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGQUIT, lambda *_: None)
    with build_mounts(rootfs):
        proc = subprocess.Popen(["chroot", rootfs, *argv], env=env, cwd="/")
        while True:
            try:
                status = proc.wait()
                break
            except InterruptedError:
                continue
    return status if status >= 0 else 128 - status


def main(argv: list[str]) -> int:
    rootfs, rest = argv[0], argv[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    return run(rootfs, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
