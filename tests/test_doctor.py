"""``hpcstack doctor``: all green on a healthy node; each check broken alone gives its line.

Checks are broken without breaking the machine (other test runs share it): every
place a check looks is a field of ``Inputs``, aimed here at a broken copy — a subuid
file without the user, a device node made with mode 0600 in a temporary directory,
a PATH whose ``newuidmap`` is a copy without the setuid bit, a mountinfo saying the
build directory is NFS.  The base of each test is itself healthy (its own device
nodes of mode 0666, the test cluster's munged), so exactly one line is a problem.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO, User
from hpcstack.doctor import Inputs, Status, logic, run_checks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes device nodes (mknod)")
TOOLS = ("unshare", "squashfuse", "unsquashfs", "mksquashfs", "siftool", "ch-run", "newuidmap",
         "newgidmap", "munge", "unmunge", "srun", "mpirun")


def device(path: Path, mode: int, major: int = 10, minor: int = 229) -> Path:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    path.chmod(mode)
    return path


def bin_dir(where: Path, leave_out: str = "", **replaced: Path) -> str:
    """A PATH of links to the real tools, one left out or replaced by a given file."""
    d = where / "bin"
    d.mkdir(parents=True)
    for name in TOOLS:
        if name != leave_out and (real := shutil.which(name)):
            (d / name).symlink_to(replaced.get(name, real))
    return str(d)


@pytest.fixture
def healthy(tmp_path: Path, user: User, cluster) -> Inputs:
    base = tmp_path / "base"
    good = base / "subids"
    base.mkdir()
    good.write_text(f"{user.name}:100000:65536\n")
    return Inputs(user=user.name, subuid=good, subgid=good, path=bin_dir(base),
                  fuse=device(base / "fuse", 0o666), tun=device(base / "tun", 0o666, 10, 200),
                  munge_socket=str(cluster.dir / "munge.socket"), launchers=[],
                  build_dir=tmp_path, cache_dir=tmp_path / "cache", min_free=2**20,
                  slurm_env=cluster.env)


def problems(inputs: Inputs) -> list[str]:
    return [f.line() for f in run_checks(inputs) if f.status is not Status.OK]


def test_the_healthy_base_is_all_green(healthy: Inputs) -> None:
    found = run_checks(healthy)
    assert [f.line() for f in found if f.status is not Status.OK] == []
    assert {f.check for f in found} >= {"subuid", "subgid", "user namespaces", "newuidmap",
                                        "newgidmap", "fuse", "net/tun", "squashfuse",
                                        "unsquashfs", "siftool", "runtime", "module system",
                                        "munge", "build directory on local disk",
                                        "free disk in cache"}


def text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def breakages(tmp: Path, inputs: Inputs) -> dict[str, tuple[Inputs, str]]:
    """One broken input each, and the exact line it must give."""
    u = inputs.user
    no_range = text_file(tmp / "subuid", "other:100000:65536\n")
    small = text_file(tmp / "subgid", f"{u}:300000:1000\n")
    sysctl = tmp / "sys"
    (sysctl / "user").mkdir(parents=True)
    (sysctl / "user" / "max_user_namespaces").write_text("0\n")
    plain = tmp / "newuidmap"
    shutil.copy(shutil.which("newuidmap") or "", plain)
    plain.chmod(0o755)
    fuse600 = device(tmp / "fuse600", 0o600)
    not_dev = text_file(tmp / "tun-file", "")
    mountinfo = text_file(tmp / "mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                          f"90 22 0:50 / {tmp} rw - nfs4 fs:/export rw\n")
    unsetuid = bin_dir(tmp / "p", newuidmap=plain)
    ubuntu = text_file(tmp / "os-release", 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\n'
                       'VERSION_ID="24.04"\n')
    return {
        "release": (replace(inputs, os_release=ubuntu),
                    f"WARN release: Ubuntu 24.04 LTS ({ubuntu}): hpcstack installs on and "
                    "is tested on Debian 12 and 13 only; fix: use Debian 12 (bookworm) or 13 "
                    "(trixie); see docs/debian.md"),
        "subuid": (replace(inputs, subuid=no_range),  # ranges end at 165535: next is 196608
                   f"FAIL subuid: {u} has no subordinate UID range in {no_range}; "
                   f"fix: usermod --add-subuids 196608-262143 {u}"),
        "subgid": (replace(inputs, subgid=small),  # 301000 rounded up to 5 * 65536
                   f"FAIL subgid: {u} has 1000 subordinate GIDs in {small}, 65536 needed; "
                   f"fix: usermod --add-subgids 327680-393215 {u}"),
        "userns": (replace(inputs, proc_sys=sysctl),
                   "FAIL user namespaces: user.max_user_namespaces is 0; fix: sysctl -w "
                   "user.max_user_namespaces=15000 && echo user.max_user_namespaces=15000 > "
                   "/etc/sysctl.d/90-hpcstack-userns.conf"),
        "newuidmap": (replace(inputs, path=unsetuid),
                      f"FAIL newuidmap: {unsetuid}/newuidmap is not setuid root (mode 0755, "
                      f"owner 0); fix: chown root {unsetuid}/newuidmap && chmod u+s "
                      f"{unsetuid}/newuidmap"),
        "fuse": (replace(inputs, fuse=fuse600),
                 f"FAIL fuse: {fuse600} is mode 0600, ordinary users cannot open it "
                 "(squashfuse and ch-run IMAGE.sqfs mount images through it); fix: chmod "
                 f"0666 {fuse600}"),
        "tun": (replace(inputs, tun=not_dev),
                f"FAIL net/tun: {not_dev} is not a character device; fix: rm {not_dev} && "
                "modprobe tun"),
        "siftool": (replace(inputs, path=bin_dir(tmp / "nosif", leave_out="siftool")),
                    "FAIL siftool: not found on PATH; fix: apt-get install siftool"),
        "runtime": (replace(inputs, path=bin_dir(tmp / "noch", leave_out="ch-run")),
                    "FAIL runtime: no container runtime found: install apptainer, singularity "
                    "or charliecloud; fix: apt-get install charliecloud (or install "
                    "apptainer)"),
        "modules": (replace(inputs, module_inits=(tmp / "lmod-init", tmp / "modules-init")),
                    f"FAIL module system: neither Lmod nor Environment Modules: none of "
                    f"{tmp}/lmod-init, {tmp}/modules-init; fix: apt-get install lmod"),
        "launchers": (replace(inputs, launchers=["pmi2"],
                              path=bin_dir(tmp / "nosrun", leave_out="srun")),
                      "FAIL launcher pmi2: srun not found on PATH; fix: apt-get install "
                      "slurm-client"),
        "munge": (replace(inputs, munge_socket=str(tmp / "no.socket")),
                  f"FAIL munge: munged does not answer at {tmp}/no.socket: *; fix: "
                  "systemctl enable --now munge"),
        "network fs": (replace(inputs, mountinfo=mountinfo, build_dir=tmp / "build",
                               cache_dir=Path("/var/cache/none-here")),  # on / (ext4)
                       f"WARN build directory on local disk: {tmp}/build is on nfs4 ({tmp}): "
                       "builds there are slow or fail (no subordinate-ID ownership, no "
                       "xattrs); fix: set HPCSTACK_TMPDIR to a directory on local disk"),
        "disk": (replace(inputs, min_free=2**60),
                 f"FAIL free disk in build directory: {inputs.build_dir} has * free, "
                 "1048576.0 TiB needed; fix: free space there, or set HPCSTACK_TMPDIR to a "
                 "directory with more"),
    }


@pytest.mark.parametrize("what", ["subuid", "subgid", "userns", "newuidmap", "fuse", "tun",
                                  "siftool", "runtime", "modules", "launchers", "munge",
                                  "network fs", "disk"])
def test_each_check_broken_alone_gives_its_own_line(tmp_path: Path, healthy: Inputs,
                                                    what: str) -> None:
    """``*`` in an expected line stands for what the machine says (munge's own error,
    the free space): the rest is exact."""
    inputs, line = breakages(tmp_path, healthy)[what]
    found = problems(inputs)
    if what == "disk":  # the cache is on the same disk: its line too
        found = found[:1]
    assert len(found) == 1, found
    assert fnmatch.fnmatchcase(found[0], line), f"{found[0]}\n!=\n{line}"


def test_an_unshare_without_map_auto() -> None:
    found = logic.tool_finding("unshare", "/usr/bin/unshare", "unshare from util-linux 2.36.1",
                               "util-linux", "2.38")
    assert found.line() == ("FAIL unshare: /usr/bin/unshare is 2.36.1, 2.38 or later needed; "
                            "fix: apt-get install util-linux (from a release that has 2.38)")


def test_launchers_against_what_slurm_lists() -> None:
    """The pure verdict, for plugins this node's Slurm does have (pmix is installed here)."""
    found = logic.launcher_findings(["pmix", "pmi2"], {"none", "pmi2"}, "", None, None)
    assert [f.line() for f in found if f.status is not Status.OK] == [
        "FAIL launcher pmix: Slurm lists no mpi/pmix plugin (it has: none, pmi2); fix: "
        "apt-get install libpmix-dev"]
    assert logic.mpi_types("srun: MPI types are...\nsrun: none\nsrun: pmi2\nsrun: pmix\n"
                           "srun: pmix_v4\n") == {"none", "pmi2", "pmix", "pmix_v4"}


@pytest.mark.parametrize(("text", "line"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nID=debian\n',
     "OK   release: Debian 12 (bookworm)"),
    ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\nID=debian\n',
     "OK   release: Debian 13 (trixie)"),
    ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_ID="11"\nID=debian\n',
     "WARN release: Debian GNU/Linux 11 (bullseye) (/etc/os-release): hpcstack installs on "
     "and is tested on Debian 12 and 13 only; fix: use Debian 12 (bookworm) or 13 (trixie); "
     "see docs/debian.md")])
def test_release_of_the_node(text: str, line: str) -> None:
    assert logic.release_finding(text).line() == line


@pytest.mark.parametrize(("version", "starts"), [
    ("4.1.4", "images with Open MPI 4.x or 5.x"),
    ("5.0.7", "images with Open MPI 5.x only (Open MPI 4 images: srun --mpi=pmix)")])
def test_mpirun_says_which_images_it_starts(version: str, starts: str) -> None:
    """Debian 12's mpirun is Open MPI 4 (ORTE), Debian 13's Open MPI 5 (PRRTE), which cannot
    start Open MPI 4's ranks (docs/modules.md's pair table)."""
    ompi = logic.open_mpi_version(f"mpirun (Open MPI) {version}\n\nReport bugs to x\n")
    [found] = logic.launcher_findings(["mpirun"], None, "", "/usr/bin/mpirun", None, ompi)
    assert found.line() == f"OK   launcher mpirun: /usr/bin/mpirun (Open MPI {version}: " \
                           f"starts {starts})"


def test_cli_on_this_node_as_the_test_user(user: User, cluster, tmp_path: Path) -> None:
    """The whole command as an ordinary user, the site's promised launchers included."""
    for dev in (Path("/dev/fuse"), Path("/dev/net/tun")):
        dev.chmod(0o666)  # as distributions ship them (these VMs: 0600)
    site = REPO / "examples" / "modules" / "site.yaml"
    proc = user.hpcstack("doctor", "--json", "--site", str(site), "--munge-socket",
                         str(cluster.dir / "munge.socket"), "--min-free-gib", "0.01",
                         env=cluster.env)  # the disk is shared: its check is tested apart
    findings = json.loads(proc.stdout)
    bad = [f for f in findings if f["status"] == "fail"]
    assert proc.returncode == (1 if bad else 0)
    assert bad == [], bad
    assert {"launcher pmi2", "launcher pmix", "launcher mpirun"} <= {f["check"]
                                                                     for f in findings}
    text = user.hpcstack("doctor", "--user", "nosuchuser-x", "--munge-socket",
                         str(cluster.dir / "munge.socket"), env=cluster.env)
    assert text.returncode == 1
    assert "FAIL subuid: nosuchuser-x: no such user; fix: useradd -m nosuchuser-x" in \
        text.stdout.splitlines()


def test_user_option_checks_that_users_cache(user: User) -> None:
    """`doctor --user NAME` run by an admin looks at NAME's cache, not the admin's."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hpcstack", "doctor", "--json", "--user",
                           user.name, "--min-free-gib", "0.01"], capture_output=True, text=True)
    cache = [f for f in json.loads(proc.stdout) if f["check"].startswith("cache")]
    assert cache and all(str(user.home / ".cache" / "hpcstack") in f["message"]
                         for f in cache), cache
