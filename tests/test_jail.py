"""The jail every U2CB build and session runs in, tried directly as an ordinary user.

``python -m hpcstack.build.jail SPEC -- CMD`` runs one command the way a build
job does (:mod:`hpcstack.build.jail`): its own user, mount, PID, IPC, UTS and
network namespaces, ``pivot_root`` into a tmpfs holding only what the spec
binds.  Each test looks from inside at one wall, with a positive control so it
can fail.  (The service-level attacks are in ``test_isolation.py``.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from conftest import HPCSTACK_PREFIX, User, need

pytestmark = pytest.mark.integration
PY = str(HPCSTACK_PREFIX / "bin" / "python")


def jailed(user: User, spec: dict, *command: str, env: dict[str, str] | None = None
           ) -> tuple[int, str]:
    """Run ``command`` in a jail made from ``spec`` as ``user``: (status, output)."""
    proc = user.run([PY, "-m", "hpcstack.build.jail", json.dumps(spec), "--", *command],
                    timeout=120, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def secret(user: User) -> Iterator[str]:
    """A file of the user's own, outside anything a jail binds."""
    work = user.workdir("jail-secret")
    user.run(["sh", "-c", "echo s3cret-of-the-host > secret.txt"], cwd=work, check=True)
    yield str(work)


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP service on the host's loopback, standing in for the U2CB API or PostgreSQL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"hello from the host\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    server.close()


CONNECT = ("import socket,sys\n"
           "try:\n"
           "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
           "    print('reached', s.recv(100).decode().strip())\n"
           "except OSError as err:\n"
           "    print('refused', err)\n")


def test_the_job_sees_only_its_own_processes(user: User) -> None:
    status, out = jailed(user, {}, "sh", "-c", "ls /proc | grep -c '^[0-9]'; "
                         "tr '\\0' ' ' < /proc/1/cmdline")
    assert status == 0, out
    count, cmdline = out.splitlines()[:2]
    assert int(count) <= 4, out  # the jail's init (PID 1), sh, ls, grep
    assert "-m hpcstack.build.jail" in cmdline, out


def test_the_callers_environment_stays_outside(user: User) -> None:
    """The service's environment (a database URL with its password, say) is not
    readable from the job's, nor from its init's ``/proc/1/environ``."""
    secret = {"U2CB_DATABASE_URL": "postgresql://u2cb:pa55word@db/u2cb"}
    status, out = jailed(user, {}, "sh", "-c", "env; tr '\\0' '\\n' < /proc/1/environ; true",
                         env=secret)
    assert status == 0 and "PATH=" in out, out  # the control: the job's own environment
    assert "pa55word" not in out, out


def test_the_root_holds_only_system_directories_and_binds(user: User, secret: str) -> None:
    status, out = jailed(user, {"binds": [{"path": secret}]}, "sh", "-c",
                         "ls -A /; echo ---; ls -A /home; echo ---; ls /etc")
    assert status == 0, out
    top, home, etc = (part.split() for part in out.split("---\n"))
    assert set(top) <= {"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "opt",
                        "proc", "root", "run", "sbin", "sys", "tmp", "usr", "var"}, top
    assert home == [user.name], home  # only the path to the bound directory
    assert "shadow" not in etc and "passwd" in etc and "resolv.conf" in etc


def test_what_is_not_bound_is_not_there(user: User, secret: str) -> None:
    status, out = jailed(user, {}, "sh", "-c", f"cat {secret}/secret.txt; "
                         "cat /proc/1/root" + secret + "/secret.txt; ls -A /home")
    assert "s3cret-of-the-host" not in out and status != 0, out
    status, out = jailed(user, {"binds": [{"path": secret}]}, "cat", f"{secret}/secret.txt")
    assert (status, out.strip()) == (0, "s3cret-of-the-host")  # the control


def test_read_only_binds_stay_read_only(user: User, secret: str) -> None:
    for command in (f"echo x > {secret}/new", f"mount -o remount,rw {secret} && "
                    f"echo x > {secret}/new", "echo x > /usr/new", "echo x > /new"):
        status, out = jailed(user, {"binds": [{"path": secret}]}, "sh", "-c", command)
        assert status != 0, (command, out)
    user.run(["test", "!", "-e", f"{secret}/new"], check=True)
    status, out = jailed(user, {"binds": [{"path": secret, "writable": True}]}, "sh", "-c",
                         f"echo x > {secret}/new && echo wrote")
    assert (status, out.strip()) == (0, "wrote")
    user.run(["rm", f"{secret}/new"], check=True)


def test_the_hosts_loopback_is_unreachable_but_named_ports(user: User, listener: int) -> None:
    need("pasta")
    status, out = jailed(user, {"network": True}, PY, "-c", CONNECT, str(listener))
    assert status == 0 and out.startswith("refused"), out
    _, out = jailed(user, {"network": True, "loopback_ports": [listener]}, PY, "-c",
                    CONNECT, str(listener))
    assert out.strip() == "reached hello from the host", out


def test_the_hosts_own_address_is_unreachable(user: User) -> None:
    """A service listening on every address is not reached through the node's own IP."""
    need("pasta")
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None,
                                                     socket.AF_INET)} - {"127.0.0.1"}
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(4)
    try:
        port = server.getsockname()[1]
        probe = CONNECT.replace("'127.0.0.1'", "sys.argv[2]")
        for address in addresses or {"127.0.1.1"}:
            _, out = jailed(user, {"network": True}, PY, "-c", probe, str(port), address)
            assert out.startswith("refused"), (address, out)
    finally:
        server.close()


def test_without_network_only_its_own_loopback(user: User, listener: int) -> None:
    status, out = jailed(user, {"network": False}, "sh", "-c", "ls /sys/class/net")
    assert status == 0 and out.split() == ["lo"], out
    _, out = jailed(user, {"network": False}, PY, "-c", CONNECT, str(listener))
    assert out.startswith("refused"), out


def test_no_network_helper_outlives_its_jail(user: User) -> None:
    """pasta attached to a process never ends by itself: the jail's owner ends it."""
    need("pasta")
    status, _ = jailed(user, {"network": True}, "true")
    assert status == 0
    left = subprocess.run(["pgrep", "-u", str(user.uid), "-f", "pasta --config-net"],
                          capture_output=True, text=True).stdout.split()
    assert left == [], left
