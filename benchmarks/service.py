#!/usr/bin/env python3
"""U2CB service benchmarks, one run, figures side by side (never asserted).

    /opt/hpcstack/bin/python benchmarks/service.py [--quick]

1. ``GET /api/v1/containers`` for a user with 100 containers: requests/s and p99
   latency at 1, 8 and 32 concurrent clients (API token auth; one MUNGE figure).
2. ``u2cb download`` throughput against reading the same file from disk
   (target >= 0.8).
3. A definition built through the service (in its jail) against ``hpcstack build``
   directly (target <= 1.05 x + 1 s).
4. ``u2cb connect -- true`` round trip, and what the jail adds: a session started
   in its jail (namespaces, pivot_root, pasta) against the same command run the way
   sessions ran before the jail (``unshare`` fake root and ``chroot``).

Run it as an ordinary user with subordinate IDs (the service runs as that user on
a scratch data directory)::

    runuser -u hpcbench -- /opt/hpcstack/bin/python benchmarks/service.py

A and B are interleaved over several rounds and medians compared, as this shared
2-vCPU machine drifts from minute to minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hpcstack.client.api import Client
from hpcstack.client.config import ClientConfig
from hpcstack.client.transfer import download
from hpcstack.files import sha256_file
from hpcstack.service import auth, db, store
from hpcstack.service.config import Settings
from hpcstack.service.models import Kind, State

BIN = Path(sys.executable).parent
DEF = """Bootstrap: scratch

%setup
    mkdir -p "$APPTAINER_ROOTFS/opt"
    head -c 20000000 /dev/urandom > "$APPTAINER_ROOTFS/opt/blob"

%files
    data.txt /data.txt
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(settings: Settings, uid: int, user: str, blob_mib: int) -> str:
    """100 ready containers and one big image, written straight into the database."""
    settings.containers_dir().mkdir(parents=True, exist_ok=True)
    database = db.Database(settings.db_url)
    database.create_all()
    with database.session() as s:
        for i in range(100):
            s.add(db.ContainerRow(uid=uid, owner=user, name=f"c{i:03d}", kind=Kind.IMG.value,
                                  source="docker://bench/debian:12", state=State.READY.value,
                                  attempts=1, usage=0, size=1000 * i))
        big = db.ContainerRow(uid=uid, owner=user, name="big", kind=Kind.DEF.value,
                              source="big.def", state=State.READY.value, attempts=1, usage=0)
        s.add(big)
        s.flush()
        paths = store.Paths(settings.containers_dir(), big.id)
        paths.dir.mkdir(parents=True)
        with paths.image.open("wb") as fh:
            for _ in range(blob_mib):
                fh.write(os.urandom(1 << 20))
        big.sha256 = sha256_file(paths.image)
        big.size = paths.image.stat().st_size
    token, _ = auth.issue_token(database, user, uid, False)
    database.dispose()
    return token


async def load(url: str, headers: dict[str, str], clients: int, seconds: float
               ) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) with ``clients`` concurrent loops."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            r = await client.get(url, headers=headers)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        started = time.monotonic()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, p99 * 1000


def read_from_disk(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    with src.open("rb") as fi, dst.open("wb") as fo:
        while block := fi.read(1 << 20):
            fo.write(block)
    return time.perf_counter() - started


def drain(client: Client, name: str) -> None:
    """The image over HTTP, thrown away as it arrives: the transfer without write or hash."""
    with client.stream(f"/containers/{name}/image", {}) as resp:
        resp.raise_for_status()
        for _ in resp.iter_raw():
            pass


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args()
    seconds, rounds, blob = (2.0, 2, 128) if args.quick else (5.0, 3, 256)
    base = Path(tempfile.mkdtemp(prefix="u2cb-bench-"))
    settings = Settings(data_dir=base / "data")
    uid = os.getuid()
    user = auth.user_name(uid)
    token = seed(settings, uid, user, blob)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "hpcstack"), "serve", "--port", str(port),
                               "--data-dir", str(settings.data_dir), "--log-level",
                               "warning"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        print(f"U2CB service benchmarks ({os.cpu_count()} CPUs, as {user})")
        print("\n1. GET /api/v1/containers, 100 containers, API token")
        print(f"   {'clients':>7} {'req/s':>9} {'p99 ms':>9}")
        for n in (1, 8, 32):
            rps, p99 = asyncio.run(load(f"{url}/api/v1/containers", headers, n, seconds))
            print(f"   {n:>7} {rps:>9.1f} {p99:>9.1f}")
        print_munge_cost()

        client = Client(ClientConfig(server=url, token=token))
        image = next(settings.containers_dir().glob("*/image.sif"))
        out = base / "out"
        out.mkdir()
        disk, http, wire, hashing = [], [], [], []
        for _ in range(rounds):  # interleaved A B C D
            subprocess.run(["sync"], check=False)
            disk.append(read_from_disk(image, out / "disk.sif"))
            http.append(timed(lambda: download(client, "big", out / "big.sif", quiet=True)))
            (out / "big.sif").unlink()
            wire.append(timed(lambda: drain(client, "big")))
            hashing.append(timed(lambda: sha256_file(image)))
        mib = image.stat().st_size / 2**20
        d, h, w, s = (statistics.median(x) for x in (disk, http, wire, hashing))
        print(f"\n2. Download of a {mib:.0f} MiB SIF (median of {rounds}, includes sha256 "
              "check)")
        print(f"   disk read+write {mib / d:8.1f} MiB/s   u2cb download {mib / h:8.1f} MiB/s"
              f"   ratio {d / h:.2f} (target >= 0.8)")
        print(f"   where it goes: the HTTP transfer alone {mib / w:.0f} MiB/s ({d / w:.2f} x disk);"
              f" sha256 of the file alone {mib / s:.0f} MiB/s ({d / s:.2f} x disk), and client,"
              f" server and hash share {os.cpu_count()} CPUs")

        build_comparison(client, base, rounds)
        connect_comparison(client, url, token, settings, rounds * 4)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(base, ignore_errors=True)


def print_munge_cost() -> None:
    if not shutil.which("munge"):
        return
    try:
        n, started = 20, time.perf_counter()
        for _ in range(n):
            subprocess.run(["munge", "-n"], capture_output=True, check=True)
        ms = 1000 * (time.perf_counter() - started) / n
        print(f"   (a MUNGE credential costs the client {ms:.1f} ms to make; "
              "the service decodes one per request)")
    except subprocess.CalledProcessError:
        print("   (munged not running: MUNGE cost not measured)")


def build_comparison(client: Client, base: Path, rounds: int) -> None:
    work = base / "def"
    work.mkdir()
    (work / "data.txt").write_text("bench\n")
    (work / "b.def").write_text(DEF)
    direct, service = [], []
    for i in range(rounds):
        direct.append(timed(lambda: subprocess.run(
            [str(BIN / "hpcstack"), "build", "--force", "-q", str(work / "b.sif"),
             str(work / "b.def")], cwd=work, check=True, capture_output=True)))

        def via_service(i: int = i) -> None:
            client.defcreate(f"b{i}", "b.def", (work / "b.def").read_bytes(),
                             [("data.txt", work / "data.txt")])
            while client.status(f"b{i}")["state"] not in ("ready", "failed", "cancelled"):
                time.sleep(0.1)
        service.append(timed(via_service))
    d, s = statistics.median(direct), statistics.median(service)
    print(f"\n3. A definition built (median of {rounds})")
    print(f"   hpcstack build {d:6.2f} s   through the service {s:6.2f} s   ratio {s / d:.2f}"
          f"   (target <= 1.05 x + 1 s = {1.05 * d + 1:.2f} s)")


def connect_comparison(client: Client, url: str, token: str, settings: Settings,
                       rounds: int) -> None:
    """``connect -- true``: the whole round trip, and the jail's share of it."""
    from hpcstack.build.session import start

    client.create("box", "debootstrap://bookworm")
    while (state := client.status("box")["state"]) not in ("ready", "failed", "cancelled"):
        time.sleep(0.2)
    if state != "ready":
        print(f"\n4. connect: the sandbox build {state}; not measured")
        return
    u2cb = [str(BIN / "u2cb"), "--server", url]
    env = {**os.environ, "U2CB_TOKEN": token}
    sandbox = next(settings.containers_dir().glob("*/sandbox"))
    trip, jailed, bare = [], [], []
    for _ in range(rounds):  # interleaved A B C
        trip.append(timed(lambda: subprocess.run([*u2cb, "connect", "-n", "box", "--", "true"],
                                                 env=env, check=True, capture_output=True)))
        master, tty = os.openpty()
        jailed.append(timed(lambda tty=tty: start(str(sandbox), ["true"], network=True,
                                                  term="xterm", tty=tty).wait()))
        bare.append(timed(lambda tty=tty: subprocess.run(
            ["unshare", "--map-root-user", "--map-auto", "--mount", "--pid", "--fork",
             "/usr/sbin/chroot", str(sandbox), "/bin/true"], stdin=tty, stdout=tty,
            stderr=tty, check=True)))
        os.close(tty)
        os.close(master)
    t = statistics.median(trip)
    print(f"\n4. u2cb connect -n box -- true (median of {rounds})")
    print(f"   round trip {1000 * t:7.1f} ms (client, WebSocket, service, jailed session)")
    j, b = statistics.median(jailed), statistics.median(bare)
    print(f"   session in its jail {1000 * j:7.1f} ms   unshare + chroot {1000 * b:7.1f} ms"
          f"   the jail adds {1000 * (j - b):.1f} ms")


if __name__ == "__main__":
    main()
