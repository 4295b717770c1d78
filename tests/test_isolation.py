"""U2CB isolation, tested by attack: a second, hostile user tries every door.

Two ordinary accounts use one build service (the real ``hpcstack serve`` as its own
unprivileged account, real MUNGE; the local executor, then a real Slurm).  The
*victim* keeps a secret in a sandbox (``u2cb connect … > /secret``) and another in a
file uploaded with a definition.  The *attacker* probes from every place where its
code runs — a ``connect`` shell, ``%setup``, ``%post`` (chrooted, and escaped to the
jail's root through ``/proc/1/root``) and ``%test`` — for the victim's data, the
service's data directory, database, environment and MUNGE socket, other processes,
the service port and other loopback services, and tries to write where it must not
(also after remounting read-only mounts read-write).  It also sends crafted
definitions and requests through the CLI, raw HTTP and WebSockets, and runs into
the limits.  Every case asserts on both sides: the probe saw nothing (while a
positive control shows the probe itself works), nothing of the victim's was read,
changed or lost, and the service answers 4xx with one line and keeps serving.

Nothing here runs as root but starting daemons, creating accounts and reading the
service's files to check them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from conftest import User, _ensure_user
from test_build import registry  # noqa: F401  (the fixture)
from test_service import (  # noqa: F401  (munge: the fixture)
    U2CB,
    Munge,
    Service,
    Terminal,
    data_dir,
    munge,
    one_line_error,
    put,
    registry_args,
)

pytestmark = pytest.mark.integration

ATTACKS = "isolation"


# --- the actors -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svc_account() -> User:
    """The service's account (its own: other suites' process checks use ``u2cb``)."""
    return _ensure_user("u2cbatk")


@pytest.fixture(scope="module")
def victim() -> User:
    return _ensure_user("atkvictim")


@pytest.fixture(scope="module")
def attacker() -> User:
    return _ensure_user("atkattacker")


def half(secret: str) -> tuple[str, str]:
    """A secret in two halves: the probe's own text never holds it whole."""
    return secret[: len(secret) // 2], secret[len(secret) // 2:]


@dataclass
class Listener:
    """A TCP service on this host that no build or session may reach; counts connections."""

    host: str
    sock: socket.socket = field(init=False)
    accepted: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((self.host, 0))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.accepted.append(conn.recv(100))
                except OSError:
                    self.accepted.append(b"")

    def close(self) -> None:
        self.sock.close()


def host_address() -> str:
    """This host's own non-loopback address (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent
        return s.getsockname()[0]


@dataclass
class Canaries:
    """What the attacker must never see: loopback and host services, processes, env."""

    loopback: Listener
    anyaddr: Listener
    host_ip: str
    marks: dict[str, str]  # process marker -> whose process (a ``sleep`` argument)
    procs: list[subprocess.Popen]
    env_secret: str


@pytest.fixture(scope="module")
def canaries(victim: User, svc_account: User) -> Iterator[Canaries]:
    marks = {f"{secrets.randbelow(10**6) + 10**6}.{n}": who
             for n, who in enumerate(("victim", "service"))}
    owners = {"victim": victim, "service": svc_account}
    procs = [subprocess.Popen(owners[who].argv(["sleep", mark], owners[who].env()),
                              stdin=subprocess.DEVNULL, start_new_session=True)
             for mark, who in marks.items()]
    c = Canaries(Listener("127.0.0.1"), Listener("0.0.0.0"), host_address(), marks, procs,
                 "u2cb-env-" + secrets.token_hex(12))
    yield c
    for p in procs:  # runuser and the sleep it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    c.loopback.close()
    c.anyaddr.close()


# --- the service, local and on Slurm ----------------------------------------------------


def service_ca(svc_account: User, registry, name: str) -> Path:  # noqa: F811
    """The registry's CA in a directory the service account owns, as a site keeps it."""
    ca = svc_account.home / f"{name}-ca-{os.getpid()}"
    svc_account.run(["rm", "-rf", str(ca)])
    svc_account.run(["mkdir", "-p", str(ca)], check=True)
    svc_account.run(["cp", str(Path(registry["certs"]) / "ca.crt"), str(ca)], check=True)
    return ca


@pytest.fixture(scope="module", params=["local", "slurm"])
def service(request, svc_account: User, munge: Munge, registry,  # noqa: F811
            canaries: Canaries) -> Iterator[Service]:
    """The service as its own account; the registry's CA lives in a directory it owns.

    ``U2CB_TEST_CREDENTIAL`` in its environment stands for what a site puts there
    (``U2CB_DATABASE_URL`` with a PostgreSQL password): no build may see it.
    """
    env = {"U2CB_TEST_CREDENTIAL": canaries.env_secret}
    args = ["--workers", "3", "--per-user", "2", "--build-log-limit", "1000000"]
    if request.param == "slurm":
        cluster = request.getfixturevalue("cluster")
        env.update(cluster.env)
        args += ["--executor", "slurm"]
    ca = service_ca(svc_account, registry, request.param)
    reg_args = registry_args(registry)
    reg_args[reg_args.index("--docker-cert-dir") + 1] = str(ca)
    svc = Service(svc_account, munge, data_dir(svc_account, f"{ATTACKS}-{request.param}"),
                  *reg_args, *args, env=env).start()
    svc.ca = ca  # type: ignore[attr-defined]
    svc.executor = request.param  # type: ignore[attr-defined]
    yield svc
    svc.stop()
    svc_account.run(["rm", "-rf", str(ca)])


def container_dir(svc: Service, owner: User, name: str) -> Path:
    """Where the service keeps ``owner``'s container ``name`` (read from its database)."""
    from hpcstack.service import db

    database = db.Database(f"sqlite:///{svc.data / 'u2cb.db'}")
    try:
        with database.session() as s:
            row = db.find(s, owner.uid, name)
            assert row is not None, f"{owner.name} has no {name}"
            return svc.data / "containers" / str(row.id)
    finally:
        database.dispose()


def fingerprint(root: Path, skip_hash: str = "sandbox/") -> dict[str, tuple]:
    """Every path under ``root``: type and mode, size, and the sha256 of each file
    (in a sandbox only of ``/secret``: hashing all of Debian for every test is slow)."""
    out: dict[str, tuple] = {}
    for path, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(path, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            hashed = p.is_file() and not p.is_symlink() and (
                not rel.startswith(skip_hash) or rel == "sandbox/secret")
            sha = hashlib.sha256(p.read_bytes()).hexdigest() if hashed else ""
            out[rel] = (st.st_mode, st.st_size, sha)
    return out


@dataclass
class Victim:
    user: User
    sandbox_secret: str
    upload_secret: str
    box: Path  # its sandbox container's directory on the service
    defn: Path  # its definition-built container's directory

    def files(self) -> dict[str, dict[str, tuple]]:
        return {"box": fingerprint(self.box), "def": fingerprint(self.defn)}


@pytest.fixture(scope="module")
def victim_data(service: Service, victim: User, registry) -> Victim:  # noqa: F811
    """The victim's sandbox ``vbox`` with ``/secret``, and ``vdef`` with an uploaded secret."""
    box_secret, upload_secret = ("victim-box-" + secrets.token_hex(16),
                                 "victim-upload-" + secrets.token_hex(16))
    proc = service.u2cb(victim, "create", "-n", "vbox", "-b",
                        f"docker://{registry['host']}/debian:bookworm", timeout=600)
    assert proc.returncode == 0, proc.stderr + service.log.read_text()[-2000:]
    service.u2cb(victim, "connect", "-n", "vbox", "--", "sh", "-c",
                 f"echo {box_secret} > /secret", check=True)
    work = victim.workdir(f"iso-victim-{service.executor}")  # type: ignore[attr-defined]
    put(victim, work / "secret.txt", upload_secret + "\n")
    put(victim, work / "v.def", "Bootstrap: scratch\n\n%files\n    secret.txt /secret.txt\n")
    proc = service.u2cb(victim, "defcreate", "-n", "vdef", "-d", "v.def", cwd=work,
                        timeout=600)
    assert proc.returncode == 0, proc.stderr + service.log.read_text()[-2000:]
    v = Victim(victim, box_secret, upload_secret, container_dir(service, victim, "vbox"),
               container_dir(service, victim, "vdef"))
    assert (v.box / "sandbox" / "secret").read_text().strip() == box_secret
    assert (v.defn / "def" / "secret.txt").read_text().strip() == upload_secret
    v.before = v.files()  # type: ignore[attr-defined]
    return v


def assert_victim_untouched(service: Service, v: Victim) -> None:
    """Nothing of the victim's was changed or lost, it still reads its own, the service serves."""
    assert v.files() == v.before  # type: ignore[attr-defined]
    out = service.u2cb(v.user, "connect", "-n", "vbox", "--", "cat", "/secret", check=True)
    assert out.stdout.strip() == v.sandbox_secret
    listed = json.loads(service.u2cb(v.user, "list", "--json", check=True).stdout)
    assert {(c["name"], c["state"]) for c in listed} >= {("vbox", "ready"), ("vdef", "ready")}
    assert httpx.get(f"{service.url}/api/v1/health", timeout=10).status_code == 200


# --- the probe: what hostile code looks for wherever it runs -----------------------------

PROBE = r"""
say() { echo "PROBE $door $*"; }
tcp() {
    if timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && echo probe-$door >&3" 2>/dev/null
    then say tcp open "$1:$2"; else say tcp closed "$1:$2"; fi
}
probe() {
    door=$1
    say start
    # 1. the secrets, anywhere this view reaches (the jail's root too)
    for root in / /proc/1/root; do
        grep -rlsF -e "$VA$VB" -e "$UA$UB" -e "$MA$MB" --exclude-dir=proc \
            --exclude-dir=sys --exclude-dir=dev --exclude-dir=usr "$root" 2>/dev/null |
        while read -r f; do
            if grep -qsF "$MA$MB" "$f"; then say found mine "$f"; else say found victim "$f"; fi
        done
    done
    # 2. the service's files, named outright (also through /proc/1/root)
    for p in $PATHS; do
        for at in "" /proc/1/root; do
            if [ -e "$at$p" ] || [ -L "$at$p" ]; then say exists "$at$p"; fi
            ls -la "$at$p" 2>/dev/null | head -5 | sed "s|^|PROBE $door listing |"
            if [ -f "$at$p" ] || [ -S "$at$p" ]; then
                head -c 300 "$at$p" 2>/dev/null | tr -c '[:print:]\n' . |
                    sed "s|^|PROBE $door read |"
            fi
        done
    done
    for p in $SKELETON; do
        for at in "" /proc/1/root; do
            for e in "$at$p"/* "$at$p"/.[!.]*; do
                if [ -e "$e" ] || [ -L "$e" ]; then say entry "$e"; fi
            done
        done
    done
    for s in $SOCKETS; do
        munge -n --socket="$s" 2>/dev/null | sed "s|^|PROBE $door munge |"
    done
    # 3. other processes and their environment
    for d in /proc/[0-9]*; do
        say proc "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null | cut -c1-160)"
    done
    cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -a U2CB_TEST_CREDENTIAL |
        sed "s|^|PROBE $door environ |"
    # 4. services on the host
    for t in $TARGETS; do tcp "${t%:*}" "${t##*:}"; done
    # 5. writes where only the service writes, also after remounting read-only mounts
    for p in $WRITE_TO; do
        for at in "" /proc/1/root; do
            if (echo "pwned by $door" > "$at$p/pwned-$door") 2>/dev/null; then
                say wrote "$at$p"
            fi
        done
    done
    while read -r _ _ _ _ m opts _; do
        case ",$opts," in *,ro,*) ;; *) continue ;; esac
        case "$m" in /proc*|/sys*) continue ;; esac
        if mount -o remount,bind,rw "$m" 2>/dev/null; then
            say remounted "$m"
            if [ -d "$m" ] && (echo "pwned by $door" > "$m/pwned-$door") 2>/dev/null; then
                say wrote "$m"
            fi
        fi
    done < /proc/self/mountinfo
    say end
}
"""


@dataclass
class Probe:
    """The probe's output from every door, as the attacker got it."""

    text: dict[str, str]  # door -> all it printed (build doors: the whole build log)
    lines: dict[str, list[str]]  # door -> the PROBE lines, "PROBE DOOR " cut off

    def said(self, door: str, what: str) -> list[str]:
        return [line[len(what) + 1:] for line in self.lines[door]
                if line.startswith(what + " ") or line == what]


BUILD_DOORS = ("setup", "post", "post-escaped", "test")
DOORS = ("connect", *BUILD_DOORS)


def probe_script(service: Service, v: Victim, c: Canaries, mine: str, registry,  # noqa: F811
                 cluster=None) -> str:
    """The probe with what the attacker is assumed to know (the service's data dir)."""
    (va, vb), (ua, ub), (ma, mb) = half(v.sandbox_secret), half(v.upload_secret), half(mine)
    paths = [service.data / "u2cb.db", service.data / "u2cb.db-wal", service.data / "tmp",
             service.data / "cache" / str(v.user.uid), v.box, v.box / "sandbox" / "secret",
             v.defn / "def" / "secret.txt", v.defn / "image.sif", v.defn / "build.log",
             service.account.home / ".bashrc", Path(service.munge.socket),
             Path("/run/munge/munge.socket.2")]
    # on the way to the job's own binds: may exist, holding nothing but that way
    skeleton = [service.account.home, service.data.parent, service.data,
                service.data / "containers", service.data / "cache"]
    sockets = [service.munge.socket, "/run/munge/munge.socket.2"]
    targets = [f"127.0.0.1:{service.port}", f"127.0.0.1:{c.loopback.port}",
               f"{c.host_ip}:{c.anyaddr.port}", f"{c.host_ip}:{service.port}",
               registry["host"]]
    if cluster is not None:
        paths.append(cluster.dir)
        sockets.append(str(cluster.dir / "munge.socket"))
        conf = cluster.conf.read_text()
        targets += [f"127.0.0.1:{m}" for m in re.findall(r"Port=(\d+)", conf)]
    write_to = [service.data, service.data / "containers", v.box, v.box / "sandbox",
                v.defn / "def", service.account.home, service.ca]
    header = "\n".join([
        f"VA='{va}'; VB='{vb}'; UA='{ua}'; UB='{ub}'; MA='{ma}'; MB='{mb}'",
        f"PATHS='{' '.join(map(str, paths))}'", f"SOCKETS='{' '.join(sockets)}'",
        f"TARGETS='{' '.join(targets)}'", f"SKELETON='{' '.join(map(str, skeleton))}'",
        f"WRITE_TO='{' '.join(map(str, write_to))}'"])
    return header + PROBE


def probe_lines(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {d: [] for d in DOORS}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == "PROBE" and parts[1] in out:
            out[parts[1]].append(parts[2] if len(parts) > 2 else "")
    return out


@pytest.fixture(scope="module")
def probed(request, service: Service, attacker: User, victim_data: Victim,
           canaries: Canaries, registry) -> Probe:  # noqa: F811
    """The attacker runs the probe from a connect shell and from every build section."""
    cluster = request.getfixturevalue("cluster") if service.executor == "slurm" else None  # type: ignore[attr-defined]
    mine = "attacker-own-" + secrets.token_hex(16)
    script = probe_script(service, victim_data, canaries, mine, registry, cluster)
    proc = service.u2cb(attacker, "create", "-n", "abox", "-b",
                        f"docker://{registry['host']}/debian:bookworm", timeout=600)
    assert proc.returncode == 0, proc.stderr + service.log.read_text()[-2000:]
    service.u2cb(attacker, "connect", "-n", "abox", "--", "sh", "-c",
                 f"echo {mine} > /mine", check=True)
    connect = service.u2cb(attacker, "connect", "-n", "abox", "--", "/bin/sh", "-c",
                           script + "\nprobe connect\n", timeout=600)
    assert connect.returncode == 0, connect.stdout[-3000:] + connect.stderr
    work = attacker.workdir(f"iso-probe-{service.executor}")  # type: ignore[attr-defined]
    put(attacker, work / "probe.sh", script + '\nprobe "$1"\n')
    put(attacker, work / "mine.txt", mine + "\n")
    indented = "\n".join("    " + line for line in script.splitlines())
    put(attacker, work / "probe.def", f"""Bootstrap: docker
From: {registry['host']}/debian:bookworm

%files
    probe.sh /probe.sh
    mine.txt /mine.txt

%setup -c /bin/sh
{indented}
    probe setup

%post
    /bin/sh /probe.sh post
    cp /probe.sh /proc/1/root/tmp/probe.sh
    chroot /proc/1/root /bin/sh /tmp/probe.sh post-escaped
    apt-get update -qq && apt-get install -y -qq hello >/dev/null
    echo "PROBE post apt-installed $(hello)"

%test
    /bin/sh /probe.sh test
    echo "PROBE test hello-says $(hello)"
""")
    build = service.u2cb(attacker, "defcreate", "-n", "aprobe", "-d", "probe.def", cwd=work,
                         timeout=900)
    log = service.u2cb(attacker, "logs", "-n", "aprobe", check=True).stdout
    assert build.returncode == 0, build.stderr + log[-4000:]
    text = {"connect": connect.stdout + connect.stderr, **{d: log for d in BUILD_DOORS}}
    lines = probe_lines(connect.stdout + log)
    for door in DOORS:
        assert "start" in lines[door] and "end" in lines[door], (door, text[door][-3000:])
    return Probe(text, lines)


# --- attacks from inside: a connect shell, %setup, %post (and escaped), %test -------------


def test_probe_positive_controls(probed: Probe, door: str, registry) -> None:  # noqa: F811
    """The probe works: it finds the attacker's own secret, sees its own processes and
    reaches the registry the site opened; otherwise the attacks below could not fail."""
    assert [f for f in probed.said(door, "found") if f.startswith("mine ")], \
        probed.text[door][-3000:]
    assert probed.said(door, "proc"), probed.text[door][-3000:]
    assert f"open {registry['host']}" in probed.said(door, "tcp")


@pytest.fixture(params=DOORS)
def door(request) -> str:
    return request.param


def test_attack_read_victims_secrets_anywhere(probed: Probe, door: str, service: Service,
                                              victim_data: Victim) -> None:
    """grep -r over / and /proc/1/root for the victim's sandbox and upload secrets."""
    assert not [f for f in probed.said(door, "found") if f.startswith("victim ")]
    for secret in (victim_data.sandbox_secret, victim_data.upload_secret):
        assert secret not in probed.text[door]
    assert_victim_files_untouched(service, victim_data)


def test_attack_read_service_data_db_and_munge(probed: Probe, door: str, service: Service,
                                               attacker: User, victim_data: Victim) -> None:
    """u2cb.db, the victim's container and files and cache, the service account's home,
    MUNGE sockets: not there, not read.  Of the data dir and the service's home the view
    holds only the way to the job's own binds (its container's files, its cache, the CA)."""
    assert probed.said(door, "exists") == [], probed.said(door, "exists")
    assert probed.said(door, "listing") == []
    assert probed.said(door, "read") == []
    assert probed.said(door, "munge") == []
    assert "SQLite format" not in probed.text[door]
    assert "MUNGE:" not in probed.text[door]
    allowed = own_view(service, attacker)
    entries = [e.removeprefix("/proc/1/root") for e in probed.said(door, "entry")]
    assert [e for e in entries if e not in allowed] == []


def own_view(service: Service, attacker: User) -> set[str]:
    """The paths of the data dir and the service's home an attacker's job may see."""
    data, home = service.data, service.account.home
    ids = attackers_containers(service, attacker)
    return {str(p) for p in [home / data.parent.name, data.parent / data.name,
                             home / service.ca.name,  # type: ignore[attr-defined]
                             data / "containers", data / "cache",
                             data / "cache" / str(attacker.uid),
                             *(data / "containers" / str(i) for i in ids)]}


def attackers_containers(service: Service, attacker: User) -> list[int]:
    from hpcstack.service import db

    database = db.Database(f"sqlite:///{service.data / 'u2cb.db'}")
    try:
        with database.session() as s:
            return [r.id for r in db.listing(s, attacker.uid)]
    finally:
        database.dispose()


def own_writable(service: Service, attacker: User, path: str) -> bool:
    """The job's own scratch, cache and private mounts: writable by design."""
    path = path.removeprefix("/proc/1/root")
    own = [str(service.data / "containers" / str(i) / "tmp")
           for i in attackers_containers(service, attacker)]
    own += [str(service.data / "cache" / str(attacker.uid)), "/tmp", "/var/tmp", "/run",
            "/dev"]
    return any(path == o or path.startswith(o + "/") for o in own)


def test_attack_see_other_processes(probed: Probe, door: str, canaries: Canaries) -> None:
    """/proc/*/cmdline shows the jail's own processes only: not the service, munged,
    Slurm's daemons, a victim's process or another of the service account's."""
    procs = probed.said(door, "proc")
    for cmdline in procs:
        for mark in canaries.marks:
            assert mark not in cmdline, cmdline
        for daemon in ("hpcstack serve", "munged", "slurmd", "slurmctld", "slurmstepd",
                       "uvicorn", "docker-registry"):
            assert daemon not in cmdline, cmdline
    assert len(procs) < 30, procs


def test_attack_read_service_environment(probed: Probe, door: str,
                                         canaries: Canaries) -> None:
    """/proc/*/environ holds nothing of the service's environment (site credentials)."""
    assert probed.said(door, "environ") == []
    assert canaries.env_secret not in probed.text[door]


@pytest.mark.parametrize("target", ["service-port", "loopback-service", "host-address",
                                    "service-on-host-address", "slurm-daemons"])
def test_attack_reach_host_services(probed: Probe, door: str, target: str, service: Service,
                                    canaries: Canaries, request) -> None:
    """TCP to the service's port, a loopback service, the host's own address (and
    Slurm's daemons): refused, and the listeners saw no connection."""
    c = canaries
    addrs = {"service-port": [f"127.0.0.1:{service.port}"],
             "loopback-service": [f"127.0.0.1:{c.loopback.port}"],
             "host-address": [f"{c.host_ip}:{c.anyaddr.port}"],
             "service-on-host-address": [f"{c.host_ip}:{service.port}"]}
    if target == "slurm-daemons":
        if service.executor != "slurm":  # type: ignore[attr-defined]
            pytest.skip("no Slurm daemons with the local executor")
        conf = request.getfixturevalue("cluster").conf.read_text()
        addrs[target] = [f"127.0.0.1:{p}" for p in re.findall(r"Port=(\d+)", conf)]
    tried = probed.said(door, "tcp")
    for addr in addrs[target]:
        assert f"closed {addr}" in tried, tried
        assert f"open {addr}" not in tried
    assert c.loopback.accepted == [] and c.anyaddr.accepted == []
    assert httpx.get(f"{service.url}/api/v1/health", timeout=10).status_code == 200


def test_attack_write_victims_and_services_files(probed: Probe, door: str, service: Service,
                                                 attacker: User, victim_data: Victim) -> None:
    """Writes into the data dir, the victim's container, sandbox and uploads, the
    service's home and CA dir: all fail, nothing appears there."""
    wrote = probed.said(door, "wrote")
    assert [w for w in wrote if not own_writable(service, attacker, w)] == [], wrote
    assert_victim_files_untouched(service, victim_data)
    assert [p for p in service_files(service) if p.name.startswith("pwned-")
            and not own_writable(service, attacker, str(p))] == []


def test_attack_remount_read_only_mounts_writable(probed: Probe, door: str, service: Service,
                                                  attacker: User, victim_data: Victim) -> None:
    """mount -o remount,bind,rw on every read-only mount of the view: refused (the jail's
    read-only binds — uploads, the site's CA, the Python, /etc — stay read-only).  Only
    what %setup's own confinement made read-only of the job's scratch may be undone."""
    remounted = probed.said(door, "remounted")
    assert [m for m in remounted if not own_writable(service, attacker, m)] == [], remounted
    assert not [p for p in service.ca.iterdir() if p.name != "ca.crt"]  # type: ignore[attr-defined]
    assert_victim_files_untouched(service, victim_data)


def service_files(service: Service) -> list[Path]:
    """Files of this service: its data dir (but sandboxes), its CA dir, the account's home."""
    home = service.account.home
    out = [p for p in home.iterdir() if p.is_file()]
    for root in (service.data, service.ca):  # type: ignore[attr-defined]
        for path, _dirs, files in os.walk(root):
            if "/sandbox" in path:
                continue
            out += [Path(path, f) for f in files]
    return out


def assert_victim_files_untouched(service: Service, v: Victim) -> None:
    assert v.files() == v.before  # type: ignore[attr-defined]
    assert httpx.get(f"{service.url}/api/v1/health", timeout=10).status_code == 200


def test_apt_get_install_works_in_post_and_test(probed: Probe) -> None:
    """The jail keeps the network builds need: apt-get from the Debian mirror in %post,
    and what it installed runs in %test."""
    assert "apt-installed Hello, world!" in probed.lines["post"]
    assert "hello-says Hello, world!" in probed.lines["test"]


# --- crafted definitions and uploads, through raw HTTP and the CLI -----------------------


def munge_headers(service: Service, user: User) -> dict[str, str]:
    return {"X-Munge-Credential": service.munge.credential(user)}


def post_definition(service: Service, user: User, name: str, text: str,
                    uploads: dict[str, bytes]) -> httpx.Response:
    """``POST /api/v1/containers/def`` as ``u2cb defcreate`` sends it (multipart)."""
    files = [("definition", ("t.def", text.encode()))]
    files += [("files", (Path(p).name, data)) for p, data in uploads.items()]
    return httpx.post(f"{service.url}/api/v1/containers/def",
                      data={"name": name, "paths": list(uploads)}, files=files,
                      headers=munge_headers(service, user), timeout=60)


def crafted(v: Victim) -> dict[str, tuple[str, dict[str, bytes], str]]:
    """attack -> (definition, uploads, the start its one-line refusal must have)."""
    data = {"d.txt": b"d\n"}
    hide = "Bootstrap: scratch\n%files\n    d.txt /d.txt\n"
    box, img = v.box / "sandbox", v.defn / "image.sif"
    sec = v.defn / "def" / "secret.txt"
    cases = {
        "form-feed-hides-setup": (hide + "\f%setup\n    cat /etc/shadow\n", data, "t.def:4: "),
        "bare-cr-hides-setup": ("Bootstrap: scratch\r%setup\r    id\n%files\n    d.txt /d\n",
                                data, "t.def:1: "),
        "line-separator-hides-post": (hide + "\u2028%post\n    id\n", data, "t.def:4: "),
        "paragraph-separator-hides-post": (hide + "%test\u2029%post\n", data, "t.def:4: "),
        "next-line-u0085-hides-post": (hide + "\u0085%post\n    id\n", data, "t.def:4: "),
        "nul-byte": (hide + "%post\n    id\x00\n", data, "t.def:5: "),
        "escape-sequence": (hide + "%post\n    echo \x1b[2J\n", data, "t.def:5: "),
        "localimage-victims-name": ("Bootstrap: localimage\nFrom: vbox\n", {}, "t.def:2: "),
        "localimage-host-path": (f"Bootstrap: localimage\nFrom: {box}\n", {}, "t.def:2: "),
        "localimage-victims-image": (f"Bootstrap: localimage\nFrom: {img}\n", {}, "t.def:2: "),
        "localimage-dotdot": (f"Bootstrap: localimage\nFrom: ../{v.box.name}/sandbox\n", {},
                              "t.def:2: "),
        "oci-archive-host-path": (f"Bootstrap: oci-archive\nFrom: {img}\n", {}, "t.def:2: "),
        "docker-archive-host-path": (f"Bootstrap: docker-archive\nFrom: {sec}\n", {},
                                     "t.def:2: "),
        "oci-host-layout": (f"Bootstrap: oci\nFrom: {box}:latest\n", {}, "t.def:2: "),
        "oci-archive-dotdot": ("Bootstrap: oci-archive\nFrom: ../d.txt\n", data, "t.def:2: "),
        "files-absolute-host-source": (f"Bootstrap: scratch\n%files\n    {sec} /s\n", data,
                                       "t.def:3: "),
        "files-dotdot-source": (f"Bootstrap: scratch\n%files\n    ../../{v.defn.name}/def/"
                                "secret.txt /s\n", data, "t.def:3: "),
        "files-not-uploaded": ("Bootstrap: scratch\n%files\n    secret.txt /s\n", data,
                               "t.def:3: "),
        "upload-path-absolute": ("Bootstrap: scratch\n", {str(sec): b"x"}, "paths "),
        "upload-path-dotdot": ("Bootstrap: scratch\n", {"../../x": b"x"}, "paths "),
    }
    return cases


CRAFTED = ["form-feed-hides-setup", "bare-cr-hides-setup", "line-separator-hides-post",
           "paragraph-separator-hides-post", "next-line-u0085-hides-post", "nul-byte",
           "escape-sequence", "localimage-victims-name", "localimage-host-path",
           "localimage-victims-image", "localimage-dotdot", "oci-archive-host-path",
           "docker-archive-host-path", "oci-host-layout", "oci-archive-dotdot",
           "files-absolute-host-source", "files-dotdot-source", "files-not-uploaded",
           "upload-path-absolute", "upload-path-dotdot"]


def assert_refused_and_serving(service: Service, attacker: User, v: Victim, status: int,
                               detail: str, name: str) -> None:
    assert 400 <= status < 500
    assert "\n" not in detail and "Traceback" not in detail and detail, detail
    listed = json.loads(service.u2cb(attacker, "list", "--json", check=True).stdout)
    assert name not in [c["name"] for c in listed]
    assert_victim_files_untouched(service, v)


@pytest.mark.parametrize("attack", CRAFTED)
def test_crafted_definition_over_http(service: Service, attacker: User, victim_data: Victim,
                                      attack: str) -> None:
    text, uploads, start = crafted(victim_data)[attack]
    name = "x" + hashlib.sha256(attack.encode()).hexdigest()[:8]
    r = post_definition(service, attacker, name, text, uploads)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(start), detail
    assert_refused_and_serving(service, attacker, victim_data, r.status_code, detail, name)


@pytest.mark.parametrize("attack", [a for a in CRAFTED if not a.startswith("upload-path")])
def test_crafted_definition_through_cli(service: Service, attacker: User,
                                        victim_data: Victim, attack: str) -> None:
    text, uploads, start = crafted(victim_data)[attack]
    work = attacker.workdir(f"iso-crafted-{attack}")
    for rel, data in uploads.items():
        put(attacker, work / rel, data)
    put(attacker, work / "t.def", text.encode())
    name = "c" + hashlib.sha256(attack.encode()).hexdigest()[:8]
    err = one_line_error(service.u2cb(attacker, "defcreate", "-n", name, "-d", "t.def",
                                      cwd=work))
    assert err.startswith(start), err
    assert_refused_and_serving(service, attacker, victim_data, 422, err, name)


@pytest.mark.parametrize("base", ["vbox", "vdef"])
def test_create_from_victims_container_name(service: Service, attacker: User,
                                            victim_data: Victim, base: str) -> None:
    """``u2cb create -b NAME`` resolves NAME only among the attacker's own containers."""
    err = one_line_error(service.u2cb(attacker, "create", "-n", "stolen", "-b", base))
    assert "container of yours" in err, err
    r = httpx.post(f"{service.url}/api/v1/containers", json={"name": "stolen2", "base": base},
                   headers=munge_headers(service, attacker), timeout=60)
    assert r.status_code == 404 and "container of yours" in r.json()["detail"], r.text
    assert_refused_and_serving(service, attacker, victim_data, r.status_code,
                               r.json()["detail"], "stolen2")


# --- the victim's containers by name: CLI, REST, WebSocket -------------------------------

CLI_VERBS = {"status": ["status", "-n", "{n}"], "logs": ["logs", "-n", "{n}"],
             "download": ["download", "-n", "{n}"], "delete": ["delete", "-n", "{n}"],
             "cancel": ["cancel", "-n", "{n}"], "connect": ["connect", "-n", "{n}", "--", "id"]}


@pytest.mark.parametrize("verb", list(CLI_VERBS))
@pytest.mark.parametrize("target", ["vbox", "vdef"])
def test_cli_on_victims_container(service: Service, attacker: User, victim_data: Victim,
                                  verb: str, target: str) -> None:
    argv = [a.format(n=target) for a in CLI_VERBS[verb]]
    work = attacker.workdir("iso-cli")
    err = one_line_error(service.u2cb(attacker, *argv, cwd=work))
    assert err == f"{target}: no such container", err
    assert not list(work.iterdir())
    assert_victim_files_untouched(service, victim_data)


REST = {"status": ("GET", ""), "log": ("GET", "/log"), "pack": ("POST", "/pack"),
        "image": ("GET", "/image"), "cancel": ("POST", "/cancel"), "delete": ("DELETE", "")}


@pytest.mark.parametrize("as_owner", [False, True], ids=["by-name", "owner-param"])
@pytest.mark.parametrize("call", list(REST))
def test_rest_on_victims_container(service: Service, attacker: User, victim_data: Victim,
                                   call: str, as_owner: bool) -> None:
    """By name: 404 (not even its existence); with ``?owner=victim``: 403."""
    method, suffix = REST[call]
    params = {"owner": victim_data.user.name} if as_owner else {}
    for target in ("vbox", "vdef"):
        r = httpx.request(method, f"{service.url}/api/v1/containers/{target}{suffix}",
                          params=params, headers=munge_headers(service, attacker), timeout=60)
        expected = (403, "only admins may act on other users' containers") if as_owner \
            else (404, f"{target}: no such container")
        assert (r.status_code, r.json()["detail"]) == expected, r.text
    assert_victim_files_untouched(service, victim_data)


@pytest.mark.parametrize("as_owner", [False, True], ids=["by-name", "owner-param"])
@pytest.mark.parametrize("socket_path", ["connect", "log/ws"])
def test_websocket_on_victims_container(service: Service, attacker: User,
                                        victim_data: Victim, socket_path: str,
                                        as_owner: bool) -> None:
    """The session and log WebSockets refuse with the REST API's status, then close."""
    target = "vbox" if socket_path == "connect" else "vdef"
    query = f"?owner={victim_data.user.name}&cmd=cat&cmd=/secret" if as_owner \
        else "?cmd=cat&cmd=/secret"
    url = f"ws{service.url[4:]}/api/v1/containers/{target}/{socket_path}{query}"
    got = []
    with ws_connect(url, additional_headers=munge_headers(service, attacker),
                    open_timeout=30) as ws, contextlib.suppress(Exception):
        for msg in ws:
            got.append(msg)
    assert len(got) == 1 and isinstance(got[0], str), got
    ctl = json.loads(got[0])
    expected = {"status": 403, "error": "only admins may act on other users' containers"} \
        if as_owner else {"status": 404, "error": f"{target}: no such container"}
    assert ctl == expected
    assert_victim_files_untouched(service, victim_data)


def test_victim_keeps_everything(service: Service, victim_data: Victim, probed: Probe) -> None:
    """After every attack: the victim's files as they were, its secret readable by it,
    its containers listed and ready, its image downloadable with the recorded sha256."""
    assert_victim_untouched(service, victim_data)
    work = victim_data.user.workdir("iso-victim-download")
    service.u2cb(victim_data.user, "download", "-n", "vdef", cwd=work, check=True)
    status = json.loads(service.u2cb(victim_data.user, "status", "-n", "vdef", "--json",
                                     check=True).stdout)
    assert hashlib.sha256((work / "vdef.sif").read_bytes()).hexdigest() == status["sha256"]


# --- limits: log, quota during a build, sessions per user, idle sessions -----------------

TINY_DEF = """Bootstrap: scratch

%setup
    for f in /bin/sh /bin/sleep /bin/cat /bin/echo; do
        cp --parents -L "$f" $(ldd "$f" | grep -o '/[^ ]*') "$APPTAINER_ROOTFS/"
    done
"""


@pytest.fixture(scope="module", params=["local", "slurm"])
def limited(request, svc_account: User, munge: Munge, attacker: User,  # noqa: F811
            victim: User) -> Iterator[Service]:
    """A service with small limits: 4000-byte logs, 30 MB quota, one build or session
    per user, sessions end after 4 s without input.  Both users get a tiny sandbox."""
    env, args = {}, []
    if request.param == "slurm":
        cluster = request.getfixturevalue("cluster")
        env.update(cluster.env)
        args = ["--executor", "slurm"]
    svc = Service(svc_account, munge, data_dir(svc_account, f"{ATTACKS}-lim-{request.param}"),
                  "--per-user", "1", "--build-log-limit", "4000", "--quota", "30000000",
                  "--session-idle-limit", "4", *args, env=env).start()
    svc.executor = request.param  # type: ignore[attr-defined]
    try:
        for who in (attacker, victim):
            work = who.workdir(f"iso-tiny-{request.param}")
            put(who, work / "tiny.def", TINY_DEF)
            proc = svc.u2cb(who, "defcreate", "-n", "tinyimg", "-d", "tiny.def", cwd=work,
                            timeout=300)
            assert proc.returncode == 0, proc.stderr + svc.log.read_text()[-2000:]
            svc.u2cb(who, "create", "-n", "tiny", "-b", "tinyimg", check=True, timeout=300)
        yield svc
    finally:
        svc.stop()


def test_limit_build_log_is_cut(limited: Service, attacker: User) -> None:
    """A %setup that floods stdout: the log stops at the limit with a marker; the build
    goes on and ends."""
    work = attacker.workdir("iso-flood")
    put(attacker, work / "t.def", "Bootstrap: scratch\n\n%setup\n"
        "    head -c 300000 /dev/zero | tr '\\0' x\n    echo; echo flood-ended\n"
        "    touch \"$APPTAINER_ROOTFS/x\"\n")
    limited.u2cb(attacker, "defcreate", "-n", "flood", "-d", "t.def", cwd=work, check=True,
                 timeout=300)
    log = limited.u2cb(attacker, "logs", "-n", "flood", check=True).stdout
    assert "[u2cb: the log was cut at 4000 bytes" in log
    assert "flood-ended" not in log
    assert len(log.encode()) < 4000 + 1000
    assert httpx.get(f"{limited.url}/api/v1/health", timeout=10).status_code == 200


def test_limit_quota_exceeded_during_the_build(limited: Service, attacker: User,
                                               victim: User) -> None:
    """dd past the quota in %setup: the build is killed and fails with one line; the
    victim's containers are still there."""
    work = attacker.workdir("iso-dd")
    put(attacker, work / "t.def", "Bootstrap: scratch\n\n%setup\n"
        "    dd if=/dev/zero of=\"$APPTAINER_ROOTFS/big\" bs=1M count=60 status=none\n"
        "    sleep 20\n")
    err = one_line_error(limited.u2cb(attacker, "defcreate", "-n", "dd", "-d", "t.def",
                                      cwd=work, timeout=300))
    assert "disk quota exceeded during the build" in err, err
    listed = json.loads(limited.u2cb(victim, "list", "--json", check=True).stdout)
    assert {c["name"] for c in listed} == {"tinyimg", "tiny"}
    out = limited.u2cb(victim, "connect", "-n", "tiny", "--", "/bin/echo", "still-mine")
    assert out.stdout.strip() == "still-mine", out.stderr


def start_session(svc: Service, user: User, *cmd: str) -> subprocess.Popen:
    """``u2cb connect`` with its input open and silent (a user away from the keyboard)."""
    return subprocess.Popen(user.argv([U2CB, "connect", "-n", "tiny", "--", *cmd],
                                      user.env(**svc.client_env())),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=user.home)


def test_limit_sessions_per_user(limited: Service, attacker: User, victim: User) -> None:
    """A second session over ``--per-user`` is refused with one line; the victim's own
    session still opens while the attacker holds all of its own."""
    first = start_session(limited, attacker, "/bin/sh", "-c", "echo held; sleep 30")
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "held"
        err = one_line_error(limited.u2cb(attacker, "connect", "-n", "tiny", "--", "true"))
        assert err.startswith("tiny: 1 builds and sessions of yours are running"), err
        out = limited.u2cb(victim, "connect", "-n", "tiny", "--", "/bin/echo", "mine")
        assert (out.returncode, out.stdout.strip()) == (0, "mine"), out.stderr
    finally:
        first.kill()
        first.communicate()
    assert httpx.get(f"{limited.url}/api/v1/health", timeout=10).status_code == 200


def test_limit_idle_session_ends(limited: Service, attacker: User) -> None:
    """A session without input past ``--session-idle-limit`` ends, and its processes too."""
    mark = f"{secrets.randbelow(10**6) + 10**6}.7"
    proc = start_session(limited, attacker, "/bin/sleep", mark)
    out, _ = proc.communicate(timeout=120)
    assert "u2cb: session ended: no input for 4 s" in out
    assert proc.returncode != 0
    left = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True)
    assert left.stdout == ""


# --- connect, usable in its jail ---------------------------------------------------------


def test_connect_in_the_jail_keeps_size_ctrl_c_and_status(service: Service,
                                                          attacker: User,
                                                          probed: Probe) -> None:
    """Terminal size from the start, Ctrl-C to a process of the jail's PID namespace,
    a signal's exit status; the session is the jail's init (PID 1) and, in the nested
    user namespace where the jail's mounts are locked, the shell's parent (PID 2)."""
    if service.executor != "local":  # type: ignore[attr-defined]
        pytest.skip("sessions do not depend on the executor")
    term = Terminal(attacker, [U2CB, "connect", "-n", "abox"], service.client_env())
    term.expect(r"# ")
    term.send("stty size\n")
    term.expect(r"24 80")
    term.send("tr '\\0' ' ' < /proc/1/cmdline; echo; echo pid=$$ ppid=$PPID\n")
    term.expect(r"hpcstack\.build\.session")
    term.expect(r"ppid=2\b")
    term.send("sleep 300\n")
    time.sleep(1.5)
    term.send("\x03")
    term.send("echo status=$?\n")
    term.expect(r"status=130")
    term.resize(41, 99)
    time.sleep(0.5)
    term.send("stty size\n")
    term.expect(r"41 99")
    term.send("kill -KILL $$\n")
    assert term.wait() == 137


# --- an exploit chain: plant a symbolic link where the service reads for the attacker ---


@pytest.mark.parametrize("target", ["victim-upload", "service-db"])
def test_exploit_build_log_symlink_to_others_files(service: Service, attacker: User,
                                                   victim_data: Victim, target: str,
                                                   registry) -> None:  # noqa: F811
    """From %post, escape to the jail's root, find the own container directory,
    remount it writable and make ``build.log`` a link to the victim's upload (or the
    service's database): ``u2cb logs`` must not serve it."""
    aim = {"victim-upload": victim_data.defn / "def" / "secret.txt",
           "service-db": service.data / "u2cb.db"}[target]
    containers = service.data / "containers"
    work = attacker.workdir(f"iso-exploit-{target}")
    put(attacker, work / "x.def", f"""Bootstrap: docker
From: {registry['host']}/debian:bookworm

%post
    chroot /proc/1/root /bin/sh -c 'echo "exploit: ran"
    for d in {containers}/*; do
        [ -d "$d" ] || continue
        echo "exploit: sees $d"
        mount -o remount,bind,rw "$d" && echo "exploit: remounted $d"
        ln -sfn {aim} "$d/build.log.x" && mv -fT "$d/build.log.x" "$d/build.log" &&
            echo "exploit: planted $d/build.log"
    done' || true
""")
    name = f"exploit-{target}"
    build = service.u2cb(attacker, "defcreate", "-n", name, "-d", "x.def", cwd=work,
                         timeout=600)
    log = service.u2cb(attacker, "logs", "-n", name)
    seen = log.stdout + log.stderr
    assert victim_data.upload_secret not in seen
    assert "SQLite format" not in seen
    assert build.returncode == 0, build.stderr + seen[-2000:]
    said = re.findall(r"^exploit: (\w+)", seen, re.M)  # its output, not sh -x's trace
    assert "ran" in said, seen[-2000:]  # it did run: the log is still the log
    assert "planted" not in said and "remounted" not in said, seen[-2000:]
    mine = container_dir(service, attacker, name)
    assert not (mine / "build.log").is_symlink()
    assert_victim_files_untouched(service, victim_data)
