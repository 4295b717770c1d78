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

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import HPCSTACK_PREFIX, REPO, _ensure_user

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
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze missing (Debian package systemd)")
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


def test_fallback_runs_what_the_unit_runs(tmp_path: Path) -> None:
    account = _ensure_user("u2cb")
    work = account.home / "u2cb-test" / f"unit-{os.getpid()}"
    account.run(["rm", "-rf", str(work)])
    account.run(["mkdir", "-p", str(work)], check=True)
    port = free_port()
    settings = work / "u2cb.yaml"
    account.run(["sh", "-c", f"printf 'port: {port}\\ndata_dir: {work}/data\\n"
                 f"log_level: warning\\n' > {settings}"], check=True)
    unit = tmp_path / "u2cb.service"
    unit.write_text((UNITS / "u2cb.service").read_text().replace(
        "ExecStart=/usr/local/bin/hpcstack", f"ExecStart={HPCSTACK_PREFIX}/bin/hpcstack")
        + f"\n[Service]\nEnvironment=U2CB_CONFIG={settings}\n")
    env = {**os.environ, "U2CB_FALLBACK_LOG": str(tmp_path / "u2cb.log")}
    started = subprocess.run([str(FALLBACK), "start", str(unit)], env=env,
                             capture_output=True, text=True)
    assert started.returncode == 0, started.stderr + (tmp_path / "u2cb.log").read_text()
    pid_file = work / "data" / f"serve-{socket.gethostname().split('.')[0]}_{port}.pid"
    try:
        pid = int(pid_file.read_text())
        want = service_lines(unit)
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
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200
    finally:
        stopped = subprocess.run([str(FALLBACK), "stop", str(unit)], env=env,
                                 capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped the service (PID ")
    assert not Path(f"/proc/{pid}").exists() or b"serve" not in \
        Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not pid_file.exists()  # removed by the service on its way out
    again = subprocess.run([str(FALLBACK), "stop", str(unit)], env=env, capture_output=True,
                           text=True, check=True)
    assert again.stdout.startswith("no service running")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the port is free again: nothing left listening
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=0.5)
        except httpx.TransportError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("something still answers on the service's port")
