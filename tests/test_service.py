"""U2CB end to end: the service as its own unprivileged account, clients as other users.

Real components: munged (started here), the service on uvicorn with SQLite,
the unprivileged builder, a TLS docker-registry (from test_build), Charliecloud.
Nothing runs as root except starting daemons and creating accounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select as sql_select

from conftest import HPCSTACK_PREFIX, User, _ensure_user, need
from hpcstack.service import db
from test_build import registry  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
U2CB = str(HPCSTACK_PREFIX / "bin" / "u2cb")
SCRATCH_DEF = """Bootstrap: scratch

%setup
    {setup}
    echo made > "$APPTAINER_ROOTFS/made.txt"

%files
    data.txt /data.txt
"""


# --- MUNGE and the service ---------------------------------------------------------------


class Munge:
    """A munged of our own (its own key and socket), run as the munge account."""

    def __init__(self, base: Path) -> None:
        need("munged", "munge", "unmunge")
        self.base = base
        base.chmod(0o755)
        run, lib = base / "run", base / "lib"
        for d, mode in ((run, 0o755), (lib, 0o700)):
            d.mkdir()
            subprocess.run(["chown", "munge:munge", str(d)], check=True)
            d.chmod(mode)
        key = lib / "munge.key"
        key.write_bytes(os.urandom(1024))
        subprocess.run(["chown", "munge", str(key)], check=True)
        key.chmod(0o600)
        self.socket = str(run / "munge.socket")
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={self.socket}",
                        f"--key-file={key}", f"--pid-file={run}/munged.pid",
                        f"--log-file={lib}/munged.log", f"--seed-file={lib}/seed"], check=True)
        self.pid = int((run / "munged.pid").read_text())

    def credential(self, user: User, ttl: int | None = None) -> str:
        argv = ["munge", "-n", f"--socket={self.socket}"] + ([f"--ttl={ttl}"] if ttl else [])
        return user.run(argv, check=True).stdout.strip()

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``hpcstack serve`` as the service account; ``kill9`` and ``start`` again at will."""

    def __init__(self, account: User, munge: Munge, data: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.account, self.munge, self.data, self.args = account, munge, data, list(args)
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = data.parent / f"{data.name}.serve.log"

    def start(self) -> Service:
        argv = [str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "serve", "--port", str(self.port),
                "--data-dir", str(self.data), "--munge-socket", self.munge.socket,
                "--admin", "u2cbadm", "--log-level", "warning", *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.account.argv(argv, self.account.env(
                **self.extra_env)), stdout=log, stderr=log, cwd=self.account.home)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError("service did not start:\n" + self.log.read_text()[-3000:])

    def server_pid(self) -> int:
        """The service's own process (``runuser`` forks it)."""
        assert self.proc is not None
        if os.geteuid() == self.account.uid:
            return self.proc.pid
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(kids.split()[0])

    def kill9(self) -> None:
        os.kill(self.server_pid(), signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.server_pid(), signal.SIGKILL)
                self.proc.wait()

    def client_env(self) -> dict[str, str]:
        return {"U2CB_SERVER": self.url, "U2CB_MUNGE_SOCKET": self.munge.socket}

    def u2cb(self, user: User, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return user.run([U2CB, *args], env=self.client_env(), **kw)

    def get(self, user: User, path: str, **kw) -> httpx.Response:
        cred = self.munge.credential(user)
        return httpx.get(f"{self.url}/api/v1{path}", headers={"X-Munge-Credential": cred},
                         timeout=60, **kw)


@pytest.fixture(scope="module")
def munge():
    """In a directory other accounts can traverse (pytest's own tmp is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix="u2cb-munge-"))
    m = Munge(base)
    yield m
    m.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def account() -> User:
    """The service's own unprivileged account (``useradd -m`` gives it subordinate IDs)."""
    return _ensure_user("u2cb")


@pytest.fixture(scope="module")
def other() -> User:
    return _ensure_user("u2cbother")


@pytest.fixture(scope="module")
def admin() -> User:
    return _ensure_user("u2cbadm")


def data_dir(account: User, name: str) -> Path:
    """A fresh data directory, unique to this test run (several runs may share a machine).

    Those of earlier runs that have ended are removed (sandboxes hold files of
    subordinate IDs: removed by the account from a user namespace).
    """
    path = account.home / "u2cb-test" / f"{name}-{os.getpid()}"
    for old in path.parent.glob(f"{name}-*"):
        pid = old.name.rsplit("-", 1)[1].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            account.run(["unshare", "--map-root-user", "--map-auto", "rm", "-rf", str(old)])
    account.run(["rm", "-rf", str(path)])
    account.run(["mkdir", "-p", str(path.parent)], check=True)
    return path


@pytest.fixture(scope="module")
def service(account: User, munge: Munge, registry):  # noqa: F811
    svc = Service(account, munge, data_dir(account, "main"), *registry_args(registry),
                  "--workers", "2", "--per-user", "2").start()
    yield svc
    svc.stop()


def registry_args(registry) -> list[str]:  # noqa: F811
    """The test registry for builds: its CA, and its loopback port opened in the jail."""
    return ["--docker-cert-dir", str(registry["certs"]), "--build-loopback-port",
            registry["host"].rsplit(":", 1)[1]]


def put(user: User, path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.chown(path, user.uid, user.gid)
    return path


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("u2cb: error: "), lines[0]
    return lines[0][len("u2cb: error: "):]


# --- a terminal to drive `u2cb connect` ------------------------------------------------


class Terminal:
    """``argv`` on a real PTY (its controlling terminal), driven line by line."""

    def __init__(self, user: User, argv: list[str], env: dict[str, str]) -> None:
        import fcntl
        import termios

        self.fcntl, self.termios = fcntl, termios
        self.master, slave = os.openpty()
        self.resize(24, 80)
        self.proc = subprocess.Popen(["setsid", "--ctty", "--wait",
                                      *user.argv(argv, user.env(**env))],
                                     stdin=slave, stdout=slave, stderr=slave, cwd=user.home)
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        self.fcntl.ioctl(self.master, self.termios.TIOCSWINSZ,
                         struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def expect(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern.encode())
        while not (m := rx.search(self.seen)):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {pattern!r}; saw:\n{self.seen[-3000:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        assert m, f"{pattern!r} not seen:\n{self.seen[-3000:]!r}"
        found = m.group(0).decode(errors="replace")
        self.seen = self.seen[m.end():]
        return found

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.master, 65536)
        status = self.proc.wait(timeout=5)
        os.close(self.master)
        return status


# --- 1. the center's documented session ------------------------------------------------


@pytest.fixture(scope="module")
def box(service: Service, user: User, registry) -> str:  # noqa: F811
    """``u2cb create -n box -b docker://…`` from the test registry."""
    proc = service.u2cb(user, "create", "-n", "box", "-b",
                        f"docker://{registry['host']}/debian:bookworm", timeout=600)
    assert proc.returncode == 0, proc.stderr + (service.log.read_text()[-2000:])
    return "box"


def test_create_list_and_status(service: Service, user: User, box: str) -> None:
    listed = json.loads(service.u2cb(user, "list", "img", "--json", check=True).stdout)
    assert [(c["name"], c["kind"], c["state"]) for c in listed] == [("box", "img", "ready")]
    status = json.loads(service.u2cb(user, "status", "-n", "box", "--json", check=True).stdout)
    assert status["source"].startswith("docker://") and status["owner"] == user.name
    table = service.u2cb(user, "list", check=True).stdout
    assert "box" in table and "ready" in table
    log = service.u2cb(user, "logs", "-n", "box", check=True).stdout
    assert "u2cb: build of box started" in log


def test_quick_list_answers_like_the_full_cli(service: Service, user: User, box: str) -> None:
    """`u2cb list` into a pipe skips Typer, Rich and httpx (hpcstack.client.quick); what it
    prints, and its errors, are the full CLI's."""
    def full(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys; from hpcstack.client.main import run_verb; "
                f"sys.exit(run_verb({list(args)!r}))")
        return user.run([str(HPCSTACK_PREFIX / "bin" / "python"), "-c", code],
                        env={**service.client_env(), **env})

    for args in (["list"], ["list", "img"], ["list", "--json"]):
        fast = service.u2cb(user, *args, check=True).stdout
        assert fast == full(*args).stdout and box in fast, args
    down = ["--server", "http://127.0.0.1:9", "list"]
    assert one_line_error(service.u2cb(user, *down)).startswith(
        "cannot reach the build service at http://127.0.0.1:9")
    assert one_line_error(full(*down)).startswith("cannot reach the build service at")
    forged = user.run([U2CB, "list"], env={**service.client_env(), "U2CB_TOKEN": "forged"})
    assert one_line_error(forged) == one_line_error(full("list", U2CB_TOKEN="forged"))


def test_connect_root_shell_apt_and_exit_status(service: Service, user: User,
                                                box: str) -> None:
    """whoami -> root, apt-get install -y hello, Ctrl-C, resize, `exit 3` -> client exits 3."""
    term = Terminal(user, [U2CB, "connect", "-n", box], service.client_env())
    term.expect(r"# ")
    term.send("whoami\n")
    term.expect(r"[\r\n]root\r?\n")
    term.send("sleep 60; echo not-interrupted\n")
    time.sleep(1.5)
    term.send("\x03")
    term.send("echo status=$?\n")
    term.expect(r"status=130")
    term.resize(50, 132)
    time.sleep(0.5)
    term.send("stty size\n")
    term.expect(r"50 132")
    term.send("apt-get update -qq && apt-get install -y -qq hello >/dev/null 2>&1; "
              "echo apt=$?\n")
    term.expect(r"apt=0", timeout=300)
    term.send("exit 3\n")
    assert term.wait() == 3
    # The change persists in the sandbox.
    proc = service.u2cb(user, "connect", "-n", box, "--", "/usr/bin/hello", check=True)
    assert "Hello, world!" in proc.stdout


def test_download_runs_hello_and_resumes(service: Service, user: User, box: str) -> None:
    test_connect_done = service.u2cb(user, "connect", "-n", box, "--", "test", "-x",
                                     "/usr/bin/hello")
    if test_connect_done.returncode != 0:
        pytest.skip("depends on the connect test having installed hello")
    work = user.workdir("u2cb-download")
    proc = service.u2cb(user, "download", "-n", box, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sif = work / "box.sif"
    out = user.hpcstack("exec", str(sif), "hello", check=True).stdout
    assert out.strip() == "Hello, world!"
    info = service.get(user, f"/containers/{box}/pack").status_code  # GET is not allowed
    assert info == 405
    # Resume: a partial file continues with a Range request and ends with the same sha256.
    full = sif.read_bytes()
    part = put(user, work / "again.sif.part", full[: len(full) // 3])
    import hashlib

    sha = hashlib.sha256(full).hexdigest()
    put(user, work / "again.sif.part.sha256", sha + "\n")
    proc = service.u2cb(user, "download", "-n", box, "-o", "again.sif", cwd=work, check=True)
    assert (work / "again.sif").read_bytes() == full and not part.exists()
    assert sha[:12] in proc.stderr


def test_defcreate_with_files_download_and_delete(service: Service, user: User) -> None:
    work = user.workdir("u2cb-def")
    put(user, work / "data.txt", "uploaded with the definition\n")
    put(user, work / "t.def", SCRATCH_DEF.format(setup="true"))
    service.u2cb(user, "defcreate", "-n", "scratch", "-d", "t.def", cwd=work, check=True)
    listed = json.loads(service.u2cb(user, "list", "def", "--json", check=True).stdout)
    assert [c["name"] for c in listed] == ["scratch"]
    service.u2cb(user, "download", "-n", "scratch", cwd=work, check=True)
    listing = subprocess.run(["unsquashfs", "-l", "-o", sif_offset(work / "scratch.sif"),
                              str(work / "scratch.sif")], capture_output=True, text=True,
                             check=True).stdout
    assert "squashfs-root/data.txt" in listing and "squashfs-root/made.txt" in listing
    service.u2cb(user, "delete", "-n", "scratch", check=True)
    assert "scratch" not in service.u2cb(user, "list", check=True).stdout
    err = one_line_error(service.u2cb(user, "status", "-n", "scratch"))
    assert err == "scratch: no such container"


def sif_offset(sif: Path) -> str:
    from hpcstack.runtime.sif import read_sif

    return str(read_sif(sif).primary_partition().offset)


def test_shell_prompt(service: Service, user: User, box: str) -> None:
    proc = service.u2cb(user, "shell", input="help\nlist img\nexit\n", check=True)
    assert "(U2CB Server) > " in proc.stdout
    assert "create" in proc.stdout and "box" in proc.stdout


# --- 2. isolation and credentials -------------------------------------------------------


def test_second_user_cannot_touch_first_users_containers(service: Service, user: User,
                                                        other: User, box: str) -> None:
    assert json.loads(service.u2cb(other, "list", "--json", check=True).stdout) == []
    for verb in (["status", "-n", box], ["download", "-n", box], ["delete", "-n", box],
                 ["connect", "-n", box, "--", "true"]):
        assert one_line_error(service.u2cb(other, *verb)) == f"{box}: no such container", verb
    r = service.get(other, f"/containers/{box}", params={"owner": user.name})
    assert r.status_code == 403
    assert service.u2cb(user, "status", "-n", box, check=True).stdout.startswith("box: ready")


def test_admin_sees_all_and_issues_tokens(service: Service, user: User, admin: User,
                                          box: str) -> None:
    r = service.get(admin, "/containers", params={"all": "true"})
    assert box in [c["name"] for c in r.json()["containers"]]
    cred = service.munge.credential(admin)
    r = httpx.post(f"{service.url}/api/v1/tokens", json={"user": user.name},
                   headers={"X-Munge-Credential": cred})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = httpx.get(f"{service.url}/api/v1/containers",
                  headers={"Authorization": f"Bearer {token}"})
    assert [c["name"] for c in r.json()["containers"]] == [box]
    cred = service.munge.credential(user)
    r = httpx.post(f"{service.url}/api/v1/tokens", json={"user": user.name},
                   headers={"X-Munge-Credential": cred})
    assert r.status_code == 403


def test_admin_lists_and_revokes_tokens_with_u2cb(service: Service, user: User,
                                                  admin: User) -> None:
    issued = service.u2cb(admin, "token", "issue", user.name, check=True)
    token = issued.stdout.strip()
    token_id = issued.stderr.split()[1]
    listed = json.loads(service.u2cb(admin, "token", "list", "--json", check=True).stdout)
    assert {"id": token_id, "user": user.name, "admin": False} in [
        {k: t[k] for k in ("id", "user", "admin")} for t in listed]
    assert token not in json.dumps(listed)
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{service.url}/api/v1/whoami", headers=bearer).status_code == 200
    for verb in (["token", "list"], ["token", "revoke", token_id]):
        assert one_line_error(service.u2cb(user, *verb)) == \
            "only admins may manage API tokens", verb
    service.u2cb(admin, "token", "revoke", token_id, check=True)
    r = httpx.get(f"{service.url}/api/v1/whoami", headers=bearer)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    again = service.u2cb(admin, "token", "revoke", token_id)
    assert one_line_error(again) == f"token {token_id}: no such token"


def test_missing_forged_replayed_expired_credentials_get_401(service: Service,
                                                             user: User) -> None:
    url = f"{service.url}/api/v1/containers"
    assert httpx.get(url).status_code == 401
    assert "no credential" in httpx.get(url).json()["detail"]
    forged = httpx.get(url, headers={"X-Munge-Credential": "MUNGE:AAAAforged:"})
    assert forged.status_code == 401
    cred = service.munge.credential(user)
    assert httpx.get(url, headers={"X-Munge-Credential": cred}).status_code == 200
    replay = httpx.get(url, headers={"X-Munge-Credential": cred})
    assert (replay.status_code, replay.json()["detail"]) == (401, "MUNGE credential replayed")
    cred = service.munge.credential(user, ttl=1)
    time.sleep(2.2)
    expired = httpx.get(url, headers={"X-Munge-Credential": cred})
    assert (expired.status_code, expired.json()["detail"]) == (401, "MUNGE credential expired")
    bad = httpx.get(url, headers={"Authorization": "Bearer u2cb_not-a-token"})
    assert bad.status_code == 401


# --- 6. bad inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "..", "x" * 300])
def test_bad_names(service: Service, user: User, name: str) -> None:
    err = one_line_error(service.u2cb(user, "create", "-n", name, "-b", "docker://x/y"))
    assert err.startswith("name")
    cred = service.munge.credential(user)
    r = httpx.post(f"{service.url}/api/v1/containers", json={"name": name, "base": "docker://x"},
                   headers={"X-Munge-Credential": cred})
    assert r.status_code == 422 and r.json()["detail"].startswith("name"), r.text


def test_unparsable_definition_reaches_the_client(service: Service, user: User) -> None:
    work = user.workdir("u2cb-baddef")
    put(user, work / "bad.def", "Bootstrap: docker\nFrom: debian\n\n%bogus\n    true\n")
    err = one_line_error(service.u2cb(user, "defcreate", "-n", "bad", "-d", "bad.def",
                                      cwd=work))
    assert re.match(r"bad\.def:4: ", err), err
    put(user, work / "abs.def", "Bootstrap: scratch\n%files\n    /etc/shadow /x\n")
    err = one_line_error(service.u2cb(user, "defcreate", "-n", "abs", "-d", "abs.def",
                                      cwd=work))
    assert err.startswith("abs.def:3: %files: /etc/shadow"), err


def test_connect_to_missing_name(service: Service, user: User) -> None:
    assert one_line_error(service.u2cb(user, "connect", "-n", "nosuch")) == \
        "nosuch: no such container"


@pytest.fixture(scope="module")
def limited(account: User, munge: Munge):
    """A second service with small limits: 3 s builds, 60 kB quota, 50 kB uploads."""
    svc = Service(account, munge, data_dir(account, "limited"), "--time-limit", "3",
                  "--quota", "60000", "--max-upload", "50000").start()
    yield svc
    svc.stop()


def test_upload_over_the_limit(limited: Service, user: User) -> None:
    work = user.workdir("u2cb-big")
    put(user, work / "data.txt", b"x" * 60000)
    put(user, work / "t.def", SCRATCH_DEF.format(setup="true"))
    err = one_line_error(limited.u2cb(user, "defcreate", "-n", "big", "-d", "t.def", cwd=work))
    assert err.startswith("upload of ") and "over the limit of 50000 bytes" in err


def test_full_quota(limited: Service, other: User) -> None:
    work = other.workdir("u2cb-quota")
    put(other, work / "data.txt", b"y" * 40000)
    put(other, work / "t.def", SCRATCH_DEF.format(setup="true"))
    limited.u2cb(other, "defcreate", "-n", "first", "-d", "t.def", cwd=work, check=True)
    err = one_line_error(limited.u2cb(other, "defcreate", "-n", "second", "-d", "t.def",
                                      cwd=work))
    assert err.startswith("disk quota full"), err


def test_build_over_its_time_limit_is_killed(limited: Service, user: User) -> None:
    work = user.workdir("u2cb-slow")
    put(user, work / "data.txt", "d\n")
    put(user, work / "t.def", SCRATCH_DEF.format(setup="sleep 300"))
    started = time.monotonic()
    err = one_line_error(limited.u2cb(user, "defcreate", "-n", "slow", "-d", "t.def",
                                      cwd=work))
    assert "time limit of 3 s exceeded" in err, err
    assert time.monotonic() - started < 40
    assert not build_processes(limited.account, "sleep 300")


def build_processes(account: User, needle: str) -> list[str]:
    out = subprocess.run(["ps", "-u", str(account.uid), "-o", "pid=,args="],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if needle in line]


def test_cancel_ends_the_whole_process_tree(service: Service, user: User) -> None:
    work = user.workdir("u2cb-cancel")
    put(user, work / "data.txt", "d\n")
    put(user, work / "t.def", SCRATCH_DEF.format(setup="sleep 400 & sleep 401"))
    service.u2cb(user, "defcreate", "--detach", "-n", "long", "-d", "t.def", cwd=work,
                 check=True)
    deadline = time.monotonic() + 60
    while not build_processes(service.account, "sleep 401"):
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.3)
    assert "long: cancelled" in service.u2cb(user, "cancel", "-n", "long", check=True).stderr
    assert not build_processes(service.account, "sleep 40")
    status = json.loads(service.u2cb(user, "status", "-n", "long", "--json", check=True).stdout)
    assert (status["state"], status["reason"]) == ("cancelled", "cancelled by the user")
    service.u2cb(user, "delete", "-n", "long", check=True)


# --- 3. durability ---------------------------------------------------------------------


def test_kill9_mid_build_requeues_and_keeps_images(account: User, munge: Munge,
                                                   user: User) -> None:
    svc = Service(account, munge, data_dir(account, "crash")).start()
    try:
        work = user.workdir("u2cb-crash")
        put(user, work / "data.txt", "d\n")
        put(user, work / "done.def", SCRATCH_DEF.format(setup="true"))
        put(user, work / "slow.def", SCRATCH_DEF.format(setup="sleep 6"))
        svc.u2cb(user, "defcreate", "-n", "done", "-d", "done.def", cwd=work, check=True)
        done = json.loads(svc.u2cb(user, "status", "-n", "done", "--json",
                                   check=True).stdout)
        svc.u2cb(user, "defcreate", "--detach", "-n", "slow", "-d", "slow.def", cwd=work,
                 check=True)
        deadline = time.monotonic() + 60
        while not (old := build_processes(account, "sleep 6")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        svc.kill9()
        svc.start()  # start-up ends what is left of the old build before serving
        # (the re-queued build may already be in its own "sleep 6": other PIDs)
        left = set(old) & set(build_processes(account, "sleep 6"))
        assert not left, f"build outlived the service: {left}"
        status = json.loads(svc.u2cb(user, "status", "-n", "slow", "--json",
                                     check=True).stdout)
        assert status["reason"].startswith("interrupted: the service stopped"), status
        assert status["state"] in ("queued", "running"), status
        svc.u2cb(user, "logs", "-n", "slow", "-f", check=True, timeout=120)
        status = json.loads(svc.u2cb(user, "status", "-n", "slow", "--json",
                                     check=True).stdout)
        assert (status["state"], status["attempts"]) == ("ready", 2), status
        svc.u2cb(user, "download", "-n", "done", cwd=work, check=True)
        import hashlib

        assert hashlib.sha256((work / "done.sif").read_bytes()).hexdigest() == done["sha256"]
        with contextlib.closing(sqlite3.connect(svc.data / "u2cb.db")) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        svc.stop()


def owner_instance(database_url: str, name: str) -> str | None:
    """Which instance runs the build of ``name`` (from its record)."""
    from hpcstack.service.queue import owner_of

    database = db.Database(database_url)
    try:
        with database.session() as s:
            row = s.scalars(sql_select(db.ContainerRow).where(db.ContainerRow.name == name)).one()
            return owner_of(row.job)[1]
    finally:
        database.dispose()


def wait_for_owner(url: str, name: str) -> str:
    deadline = time.monotonic() + 60
    while (owner := owner_instance(url, name)) is None:
        assert time.monotonic() < deadline, f"{name}: never started"
        time.sleep(0.2)
    return owner


def test_two_instances_on_one_postgresql(account: User, munge: Munge, user: User,
                                         postgres: str) -> None:
    """Two services share PostgreSQL and a data directory: a build runs on one of them;
    the other's crash and restart leaves it running; a cancel through the other stops it."""
    database = db.Database(postgres)
    db.Base.metadata.drop_all(database.engine)
    database.dispose()
    data = data_dir(account, "pair")
    pair = {n: Service(account, munge, data, "--database", postgres, "--instance", n)
            for n in ("a", "b")}
    try:
        for svc in pair.values():
            svc.start()
        work = user.workdir("u2cb-pair")
        put(user, work / "data.txt", "d\n")
        put(user, work / "slow.def", SCRATCH_DEF.format(setup="sleep 8"))
        put(user, work / "long.def", SCRATCH_DEF.format(setup="sleep 300"))
        pair["a"].u2cb(user, "defcreate", "--detach", "-n", "slow", "-d", "slow.def", cwd=work,
                       check=True)
        runner = wait_for_owner(postgres, "slow")
        other = pair["b" if runner == "a" else "a"]
        other.kill9()
        other.start()  # its recovery must leave the other instance's build alone
        pair[runner].u2cb(user, "logs", "-n", "slow", "-f", check=True, timeout=120)
        status = json.loads(other.u2cb(user, "status", "-n", "slow", "--json",
                                       check=True).stdout)
        assert (status["state"], status["attempts"]) == ("ready", 1), status

        pair["a"].u2cb(user, "defcreate", "--detach", "-n", "long", "-d", "long.def", cwd=work,
                       check=True)
        runner = wait_for_owner(postgres, "long")
        other = pair["b" if runner == "a" else "a"]
        deadline = time.monotonic() + 60
        while not build_processes(account, "sleep 300"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        other.u2cb(user, "cancel", "-n", "long", check=True)
        deadline = time.monotonic() + 30
        while json.loads(other.u2cb(user, "status", "-n", "long", "--json",
                                    check=True).stdout)["state"] != "cancelled":
            assert time.monotonic() < deadline, "cancel through the other instance"
            time.sleep(0.3)
        assert not build_processes(account, "sleep 300")
    finally:
        for svc in pair.values():
            svc.stop()


# --- a user's own image as a module -----------------------------------------------------

TOOL_DEF = """\
Bootstrap: docker
From: {registry}/debian:bookworm

%files
    mytool /usr/local/bin/mytool

%post
    chmod 755 /usr/local/bin/mytool
"""
TOOL = """\
#!/bin/sh
echo "mytool {version} $1 rank ${{SLURM_PROCID:-none}} in $(cat /etc/debian_version)"
"""
LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
MODULE_JOB = """\
#!/bin/bash
#SBATCH -n 2
#SBATCH -o job.out
module use ~/.local/share/hpcstack/modules
module load mytools
srun mytool hello
"""


def build_tool(service: Service, user: User, registry, work: Path, version: str) -> None:  # noqa: F811
    put(user, work / "mytool", TOOL.format(version=version))
    put(user, work / "tools.def", TOOL_DEF.format(registry=registry["host"]))
    proc = service.u2cb(user, "defcreate", "-n", "mytools", "-d", "tools.def", cwd=work,
                        timeout=600)
    assert proc.returncode == 0, proc.stderr + service.log.read_text()[-2000:]


def in_module_shell(user: User, script: str) -> subprocess.CompletedProcess[str]:
    return user.run(["bash", "-c", f"source {LMOD_INIT}\n{script}"])


def test_users_image_as_a_module_under_slurm(service: Service, user: User, registry,  # noqa: F811
                                             cluster) -> None:
    from hpcstack.scheduler import submit, wait

    work = user.workdir("u2cb-module")
    modules = user.home / ".local/share/hpcstack/modules"
    service.u2cb(user, "module", "--remove", "-n", "mytools")  # a previous run's
    service.u2cb(user, "delete", "-n", "mytools")
    build_tool(service, user, registry, work, "v1")
    proc = service.u2cb(user, "module", "-n", "mytools", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"module use {modules}; module load mytools" in proc.stderr
    assert (modules / "mytools" / "latest.lua").is_file()  # Lmod
    assert (modules / "mytools" / "latest").read_text().startswith("#%Module")  # Tcl

    # The user's job script, unchanged from what they would write for a center module.
    put(user, work / "job.sh", MODULE_JOB)
    job = submit(work / "job.sh", cwd=work, run=lambda argv: in_module_shell(
        user, f"cd {work} && SLURM_CONF={cluster.conf} {shlex.join(argv)}"))
    result = wait(job, timeout=300, run=lambda argv: user.run(argv, env=cluster.env))
    out = (work / "job.out").read_text() if (work / "job.out").exists() else ""
    assert result.ok, f"{result.state}\n{out}\n{cluster.logs()}"
    lines = out.strip().splitlines()
    assert sorted(line.split(" in ")[0] for line in lines) == [
        "mytool v1 hello rank 0", "mytool v1 hello rank 1"], out
    assert all(line.split(" in ")[1].startswith("12.") for line in lines), out  # the image's

    # A rebuilt image refreshes its module.
    service.u2cb(user, "delete", "-n", "mytools", check=True)
    build_tool(service, user, registry, work, "v2")
    load = "module use ~/.local/share/hpcstack/modules && module load mytools && mytool again"
    assert in_module_shell(user, load).stdout.startswith("mytool v2 again rank none")

    # Bad input: one line each, nothing changed.
    assert one_line_error(service.u2cb(user, "module", "-n", "nosuch")) == \
        "nosuch: no such container"
    err = one_line_error(service.u2cb(user, "module", "-n", "mytools", "--commands", "a;rm"))
    assert err.startswith("--commands: 'a;rm' is not a command name"), err
    assert in_module_shell(user, load).returncode == 0

    service.u2cb(user, "module", "--remove", "-n", "mytools", check=True)
    assert not (modules / "mytools").exists()
    assert in_module_shell(user, load).returncode != 0
    assert one_line_error(service.u2cb(user, "module", "--remove", "-n", "mytools")) == \
        "mytools: you have no module of that name"
