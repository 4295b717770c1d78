"""Fakeroot the way Apptainer's first mode does it: a user namespace.

Inside, root is the calling user and IDs 1..65535 map onto the user's
subordinate range from ``/etc/subuid`` and ``/etc/subgid`` (``useradd`` fills
them).  ``unshare --map-root-user --map-auto`` sets that up; a new mount and
PID namespace keep every mount and process of the build private, so they all
vanish with it — after a failure or Ctrl-C nothing is left on the host.

Files a build creates as root inside are owned by the user outside, and files
owned by other IDs inside (``_apt``'s 42) by subordinate IDs outside, which the
user can only remove from inside a namespace again: :func:`remove_tree`.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hpcstack.errors import UserError

NEEDED_IDS = 65536


def _subid_count(path: Path, user: str, uid: int) -> int:
    """Total size of ``user``'s ranges in a subordinate ID file."""
    total = 0
    if not path.is_file():
        return 0
    for line in path.read_text().splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)):
            try:
                total += int(fields[2])
            except ValueError:
                continue
    return total


def check_subids() -> None:
    """Fail with one clear line when the user has no subordinate ID ranges."""
    if os.geteuid() == 0:
        return
    user, uid = getpass.getuser(), os.getuid()
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        if _subid_count(path, user, uid) < NEEDED_IDS - 1:
            raise UserError(
                f"{path}: no subordinate ID range of {NEEDED_IDS - 1} for user {user!r}; "
                f"ask an admin to run: usermod --add-subuids 100000-165535 "
                f"--add-subgids 100000-165535 {user}"
            )
    if shutil.which("unshare") is None:
        raise UserError("unshare not found: install util-linux")


def namespace_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` run as fake root in fresh user, mount and PID namespaces.

    As real root no user namespace is needed; the mount and PID namespaces are
    kept so cleanup works the same way.
    """
    flags = ["--mount", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags = ["--map-root-user", "--map-auto", *flags]
    return ["unshare", *flags, "--", *argv]


def remove_tree(path: Path) -> None:
    """Remove a build tree that may hold files owned by subordinate IDs."""
    if not os.path.lexists(path):
        return
    if os.geteuid() == 0:
        shutil.rmtree(path, ignore_errors=True)
        return
    subprocess.run(namespace_argv(["rm", "-rf", "--one-file-system", str(path)]),
                   stdin=subprocess.DEVNULL, capture_output=True, check=False)
