"""Shared fixtures: an ordinary user to build and run as, and helpers to do so.

CI runs as root, but every user-facing build or run path must be exercised as
an unprivileged user.  The session creates one (``useradd -m`` gives it
subordinate UID/GID ranges) and tests run hpcstack as that user through
``runuser``.  When the suite itself runs as an ordinary user, it uses that
user directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_USER = os.environ.get("HPCSTACK_TEST_USER", "hpctest")
REPO = Path(__file__).resolve().parent.parent
HPCSTACK_PREFIX = Path(os.environ.get("HPCSTACK_PREFIX", "/opt/hpcstack"))
USER_PATH = f"{HPCSTACK_PREFIX}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


#: This host's Debian suite: bookworm (Debian 12) or trixie (Debian 13).
HOST_SUITE = _codename()


@dataclass(frozen=True)
class User:
    """An ordinary account: runs commands as itself, with its own home."""

    name: str
    uid: int
    gid: int
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.home / "tmp"),
        }
        env.update(extra)
        return env

    def argv(self, argv: Sequence[str], env: dict[str, str]) -> list[str]:
        """The command line that runs ``argv`` as this user with exactly ``env``."""
        envargs = [f"{k}={v}" for k, v in env.items()]
        if os.geteuid() == self.uid:
            return ["env", "-i", *envargs, *argv]
        return ["runuser", "-u", self.name, "--", "env", "-i", *envargs, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | str | None = None,
        check: bool = False,
        timeout: float = 900,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user; output captured as text."""
        proc = subprocess.run(
            self.argv(argv, self.env(**(env or {}))),
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{list(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                f"--- stderr\n{proc.stderr}"
            )
        return proc

    def hpcstack(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return self.run([str(HPCSTACK_PREFIX / "bin" / "hpcstack"), *args], **kw)

    def workdir(self, name: str) -> Path:
        """A fresh directory owned by the user under its home."""
        path = self.home / "work" / name
        self.run(["rm", "-rf", str(path)])
        self.run(["mkdir", "-p", str(path)], check=True)
        return path


def _ensure_user(name: str) -> User:
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
        pw = pwd.getpwnam(name)
    subids = Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else ""
    if not any(line.startswith(f"{name}:") for line in subids.splitlines()):
        # useradd fills these on Debian; an account made otherwise gets a range here.
        subprocess.run(
            [
                "usermod",
                "--add-subuids",
                "2000000-2065535",
                "--add-subgids",
                "2000000-2065535",
                name,
            ],
            check=True,
        )
    home = Path(pw.pw_dir)
    # Debian 13's useradd makes homes 0700 (HOME_MODE), Debian 12's 0755: test every
    # release with the stricter one, as many sites set it. Nothing of a user's build or run
    # may then depend on another account (a subordinate ID, the service) entering a home.
    home.chmod(0o700)
    user = User(name, pw.pw_uid, pw.pw_gid, home)
    user.run(["mkdir", "-p", str(home / "tmp")], check=True)
    return user


@pytest.fixture(scope="session", autouse=True)
def usable_tun() -> None:
    """``/dev/net/tun`` mode 0666, as distributions ship it (these VMs make it 0600).

    U2CB's jails give builds and sessions their network through it (pasta).
    """
    tun = Path("/dev/net/tun")
    if os.geteuid() == 0 and tun.exists():
        tun.chmod(0o666)


@pytest.fixture(scope="session")
def user() -> User:
    """The unprivileged account every build and run test uses."""
    return _ensure_user(TEST_USER)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cluster():  # type: ignore[no-untyped-def]
    """A real single-node Slurm with its own MUNGE (``tests/slurm.py``), started once."""
    import slurm

    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    need("munged", "slurmctld", "slurmd", "sbatch", "srun")
    running = slurm.start()
    try:
        yield running
    finally:
        running.stop()


APPTAINER_SHIM = Path("/usr/local/libexec/hpcstack/apptainer-shim")


@dataclass(frozen=True)
class Apptainer:
    """Apptainer 1.4 from Debian sid (``scripts/apptainer-sid.sh``), run as an ordinary user.

    ``path`` is a PATH that puts the shim's folder first, so hpcstack itself
    (``--engine apptainer``, ``runtime: apptainer`` wrappers under Slurm, bench)
    finds ``apptainer`` there; :meth:`run` calls it directly.
    """

    shim: Path

    @property
    def path(self) -> str:
        return f"{self.shim.parent}:{USER_PATH}"

    def run(self, user: User, args: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        env = {"PATH": self.path, **kw.pop("env", {})}
        return user.run([str(self.shim), *args], env=env, **kw)


@pytest.fixture(scope="session")
def apptainer() -> Apptainer:
    """The real Apptainer, as the test user sees it; ``/dev/fuse`` 0666 as distributions ship it."""
    shim = APPTAINER_SHIM / "apptainer"
    if os.geteuid() != 0:
        pytest.skip("entering the Apptainer tree needs root (sudo rule made by apptainer-sid.sh)")
    if not shim.exists():
        subprocess.run([str(REPO / "scripts" / "apptainer-sid.sh")], check=True)
    fuse = Path("/dev/fuse")
    if fuse.exists():
        fuse.chmod(0o666)
    return Apptainer(shim)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster in a temp dir, run by an unprivileged account (trust auth)."""
    initdb = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"
    pg_ctl = shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl"
    if not os.path.exists(initdb):
        if os.environ.get("CI"):
            pytest.fail("CI is missing PostgreSQL (initdb)")
        pytest.skip("needs postgresql")
    owner: User = _ensure_user("u2cb")
    base = Path(tempfile.mkdtemp(prefix="u2cb-pg-"))  # pytest's tmp is 0700 root
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    subprocess.run(["chown", owner.name, str(base)], check=True)
    owner.run(["mkdir", "-p", str(sock)], check=True)
    owner.run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
              check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    owner.run([pg_ctl, "-D", str(data), "-l", str(base / "pg.log"), "-w", "-o",
               f"-p {port} -k {sock} -h 127.0.0.1", "start"], check=True, timeout=60)
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    owner.run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], timeout=60)
    shutil.rmtree(base, ignore_errors=True)


def need(*tools: str) -> None:
    """Skip unless every tool is on PATH (CI installs them all; a skip there is a bug)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is missing {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}")
