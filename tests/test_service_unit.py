"""The shipped systemd units, and the fallback that runs the same thing without systemd.

systemd is not PID 1 on our machines, so ``systemctl start u2cb`` cannot run here.
What can: ``systemd-analyze verify`` on both units, and the fallback
(``scripts/u2cb-fallback.sh``) started for real, as root, the way ``install.sh
--demo`` starts it; then the running service's user, environment, command line and
working directory are read from ``/proc`` and compared with the unit file.

The static part, stated once: what systemd itself adds for a ``User=`` service.
systemd.exec(5) says it sets ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` from the
account, plus ``Environment=``; its own bookkeeping variables (``INVOCATION_ID``,
``JOURNAL_STREAM``, ``SYSTEMD_EXEC_PID``) have no meaning outside systemd and are
left out.  ``ExecStart``'s program is a Python script, so ``/proc`` shows its
interpreter first.  The test's copy of the unit changes two lines only: ExecStart's
``/usr/local/bin/hpcstack`` becomes this checkout's installed prefix (the link in
/usr/local/bin may point at another install of this machine), and one
``Environment=U2CB_CONFIG=…`` names a settings file with a free port and a fresh data
directory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import HPCSTACK_PREFIX, REPO, User, _ensure_user, need

UNITS = REPO / "systemd"
FALLBACK = REPO / "scripts" / "u2cb-fallback.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts the service as u2cb")


def service_lines(path: Path) -> dict[str, list[str]]:
    """KEY -> values of a unit's [Service] section (comments and blanks left out)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name", ["u2cb.service", "u2cb@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    need("systemd-analyze")  # install.sh installs it (Debian package systemd)
    unit = tmp_path / name.replace("@.", "@site.")  # a template verifies as an instance
    shutil.copy(UNITS / name, unit)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr  # unknown keys only warn


def test_the_template_differs_only_in_its_settings_file() -> None:
    one, many = service_lines(UNITS / "u2cb.service"), service_lines(UNITS / "u2cb@.service")
    assert many.pop("ExecStart") == ["/usr/local/bin/hpcstack serve --config "
                                     "/etc/hpcstack/u2cb-%i.yaml"]
    assert one.pop("ExecStart") == ["/usr/local/bin/hpcstack serve"]
    assert one == many


def test_no_directive_that_would_break_user_namespaces() -> None:
    """With ``User=``, every seccomp-based directive implies NoNewPrivileges (the list is
    systemd.exec(5)'s), and NoNewPrivileges makes newuidmap's setuid bit do nothing."""
    implies_nnp = {"NoNewPrivileges", "PrivateDevices", "ProtectHostname", "ProtectClock",
                   "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                   "RestrictAddressFamilies", "RestrictNamespaces", "LockPersonality",
                   "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID",
                   "SystemCallFilter", "SystemCallArchitectures", "SystemCallLog",
                   "CapabilityBoundingSet", "PrivateUsers", "DynamicUser", "ProtectProc",
                   "ProcSubset", "ProtectControlGroups"}
    for name in ("u2cb.service", "u2cb@.service"):
        lines = service_lines(UNITS / name)
        assert not implies_nnp & set(lines), name
        assert lines["ProtectSystem"] == ["full"] and lines["PrivateTmp"] == ["yes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fallback:
    """The shipped unit, copied with the two changes the module docstring names, run by
    ``scripts/u2cb-fallback.sh`` as root."""

    def __init__(self, tmp_path: Path, name: str, extra: str = "") -> None:
        self.account = _ensure_user("u2cb")
        self.work = self.account.home / "u2cb-test" / f"{name}-{os.getpid()}"
        self.account.run(["rm", "-rf", str(self.work)])
        self.account.run(["mkdir", "-p", str(self.work)], check=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = self.work / "u2cb.yaml"
        self.account.run(["sh", "-c", f"printf 'port: {self.port}\\ndata_dir: {self.work}/data"
                          f"\\nlog_level: warning\\n{extra}' > {settings}"], check=True)
        self.unit = tmp_path / "u2cb.service"
        self.unit.write_text((UNITS / "u2cb.service").read_text().replace(
            "ExecStart=/usr/local/bin/hpcstack", f"ExecStart={HPCSTACK_PREFIX}/bin/hpcstack")
            + f"\n[Service]\nEnvironment=U2CB_CONFIG={settings}\n")
        self.log = tmp_path / "u2cb.log"
        self.env = {**os.environ, "U2CB_FALLBACK_LOG": str(self.log)}
        host = socket.gethostname().split(".")[0]
        self.pid_file = self.work / "data" / f"serve-{host}_{self.port}.pid"

    def __call__(self, action: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(FALLBACK), action, str(self.unit)], env=self.env,
                              capture_output=True, text=True)
        log = self.log.read_text() if self.log.exists() else ""
        assert proc.returncode == 0, proc.stderr + log[-2000:]
        return proc


def test_fallback_runs_what_the_unit_runs(tmp_path: Path) -> None:
    fallback = Fallback(tmp_path, "unit")
    fallback("start")
    pid_file, port = fallback.pid_file, fallback.port
    try:
        pid = int(pid_file.read_text())
        want = service_lines(fallback.unit)
        pw = pwd.getpwnam(want["User"][0])
        expected_env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
                        "SHELL": pw.pw_shell}
        for line in want["Environment"]:
            expected_env.update(word.split("=", 1) for word in line.split())
        proc = Path(f"/proc/{pid}")
        environ = dict(item.split("=", 1) for item in
                       proc.joinpath("environ").read_text().split("\0") if item)
        assert environ == expected_env
        assert proc.stat().st_uid == pw.pw_uid
        argv = proc.joinpath("cmdline").read_text().split("\0")[:-1]
        assert argv[1:] == want["ExecStart"][0].split()  # argv[0]: the script's interpreter
        assert want["WorkingDirectory"] == ["~"]
        assert os.readlink(proc / "cwd") == pw.pw_dir
        assert httpx.get(f"{fallback.url}/api/v1/health").status_code == 200
    finally:
        stopped = fallback("stop")
    assert stopped.stdout.startswith("stopped the service (PID ")
    assert not Path(f"/proc/{pid}").exists() or b"serve" not in \
        Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not pid_file.exists()  # removed by the service on its way out
    assert fallback("stop").stdout.startswith("no service running")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the port is free again: nothing left listening
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=0.5)
        except httpx.TransportError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("something still answers on the service's port")


def test_a_build_survives_a_fallback_stop_and_start(tmp_path: Path, user: User) -> None:
    """Stopped mid-build with ``hpcstack serve --stop``: the build is re-queued, and
    finishes once the service is started again."""
    from test_service import SCRATCH_DEF, Munge, build_processes, put

    base = Path(tempfile.mkdtemp(prefix="u2cb-munge-"))
    munge = Munge(base)
    fallback = Fallback(tmp_path, "restart", f"munge_socket: {munge.socket}\\n")
    env = {"U2CB_SERVER": fallback.url, "U2CB_MUNGE_SOCKET": munge.socket}
    u2cb = str(HPCSTACK_PREFIX / "bin" / "u2cb")
    try:
        fallback("start")
        work = user.workdir("u2cb-fallback-restart")
        put(user, work / "data.txt", "d\n")
        put(user, work / "slow.def", SCRATCH_DEF.format(setup="sleep 7"))
        user.run([u2cb, "defcreate", "--detach", "-n", "slow", "-d", "slow.def"], cwd=work,
                 env=env, check=True)
        deadline = time.monotonic() + 60
        while not build_processes(fallback.account, "sleep 7"):
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)
        fallback("stop")
        assert not build_processes(fallback.account, "sleep 7")  # ended with the service
        fallback("start")
        user.run([u2cb, "logs", "-n", "slow", "-f"], env=env, check=True, timeout=120)
        status = json.loads(user.run([u2cb, "status", "-n", "slow", "--json"], env=env,
                                     check=True).stdout)
        assert (status["state"], status["attempts"]) == ("ready", 2), status
    finally:
        subprocess.run([str(FALLBACK), "stop", str(fallback.unit)], env=fallback.env,
                       capture_output=True)
        munge.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_fallback_start_with_a_wrong_setting_says_so_in_one_line(tmp_path: Path) -> None:
    fallback = Fallback(tmp_path, "wrong", "max_workers: many\\n")
    proc = subprocess.run([str(FALLBACK), "start", str(fallback.unit)], env=fallback.env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    settings = fallback.work / "u2cb.yaml"
    assert proc.stderr.strip().splitlines() == [
        f"hpcstack: error: {settings}:4: max_workers: Input should be a valid integer, "
        "unable to parse string as an integer"]
