"""The Debian flavour of the catalog by its two routes, side by side in one run.

    /opt/hpcstack/bin/python benchmarks/catalog.py [--json FILE] [--keep]

``sif``: ``hpcstack catalog build --format sif`` (definitions -> SIFs).
``oci``: ``--format oci`` (Dockerfiles -> rootless buildah -> a local TLS
``docker-registry`` started here -> SIFs made from the pushed images).

Both start cold (a fresh cache directory: no bootstrap, no buildah layer, an
empty registry), then run once more with nothing changed.  It prints wall and
CPU seconds per route, their ratio, and per image the sizes: the SIF of each
route and the pushed image (compressed layers).  Run it as root (the builds run
as the ordinary user ``hpcbench``, made with ``useradd -m`` if missing) or as
an ordinary user with subordinate ID ranges.  It never fails on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CATALOG = HERE.parent / "examples" / "catalog" / "debian.yaml"
USER = "hpcbench"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    if subprocess.run(["id", USER], capture_output=True).returncode:
        subprocess.run(["useradd", "-m", USER], check=True)
    return pwd.getpwnam(USER)


def as_user(user: pwd.struct_passwd, argv: list[str], **env: str) -> list[str]:
    base = {"PATH": PATH, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
            "LANG": "C.UTF-8", **env}
    prefix = ["runuser", "-u", user.pw_name, "--"] if os.geteuid() == 0 else []
    return [*prefix, "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]


def timed(argv: list[str], log: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds (all descendants) of ``argv``; its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[-12:])} failed ({log}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def start_registry(work: Path) -> tuple[subprocess.Popen, str, Path]:
    """A TLS docker-registry on 127.0.0.1 with a self-signed certificate."""
    certs = work / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(work / "key.pem"), "-out", str(certs / "ca.crt")],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (work / "registry.yml").write_text(f"""version: 0.1
log: {{level: error}}
storage: {{filesystem: {{rootdirectory: {work / "registry"}}}}}
http:
  addr: 127.0.0.1:{port}
  tls: {{certificate: {certs / "ca.crt"}, key: {work / "key.pem"}}}
""")
    server = subprocess.Popen(["docker-registry", "serve", str(work / "registry.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"127.0.0.1:{port}", certs
        time.sleep(0.1)
    server.kill()
    sys.exit("docker-registry did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hpcstack", default=str(Path(sys.executable).parent / "hpcstack"))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    user = account()
    work = Path(tempfile.mkdtemp(prefix="hpcstack-bench-catalog-", dir=user.pw_dir))
    server, host, certs = start_registry(work)
    for sub in ("tmp", "logs", "cache-sif", "cache-oci"):
        (work / sub).mkdir()
    shutil.copy(CATALOG, work / "debian.yaml")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(work)], check=True)
    os.chmod(work, 0o755)
    routes = {
        "sif": ["--format", "sif"],
        "oci": ["--format", "oci", "--registry", f"{host}/hpcstack", "--cert-dir", str(certs)],
    }
    figures: dict[str, dict] = {}
    try:
        for when in ("cold", "unchanged"):
            for route, extra in routes.items():
                argv = as_user(user, [args.hpcstack, "catalog", "build", "-c",
                                      str(work / "debian.yaml"), "-o", str(work / route),
                                      "--json", *extra],
                               TMPDIR=str(work / "tmp"),
                               HPCSTACK_CACHEDIR=str(work / f"cache-{route}"))
                print(f"{when} {route} ...", flush=True)
                wall, cpu, out = timed(argv, work / "logs" / f"{when}-{route}.log")
                figures[f"{when} {route}"] = {"wall": wall, "cpu": cpu, "report": json.loads(out)}
    finally:
        server.terminate()
        server.wait()
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)])
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def report(figures: dict[str, dict]) -> None:
    print("\n| run | sif route | oci route | oci / sif |\n| --- | --- | --- | --- |")
    for when in ("cold", "unchanged"):
        sif, oci = figures[f"{when} sif"], figures[f"{when} oci"]
        for kind in ("wall", "cpu"):
            print(f"| {when}, {kind} s | {sif[kind]:.1f} | {oci[kind]:.1f} | "
                  f"{oci[kind] / max(sif[kind], 1e-9):.2f} |")
    sif, oci = figures["cold sif"]["report"], figures["cold oci"]["report"]
    print("\n| image | SIF (definition) MiB | SIF (from registry) MiB | in the registry MiB |"
          "\n| --- | --- | --- | --- |")
    mib = 2**20
    for tag in sif["sizes"]:
        from_registry = oci["from_registry"].get(tag)
        cells = [f"{sif['sizes'][tag] / mib:.1f}",
                 f"{from_registry / mib:.1f}" if from_registry else "-",
                 f"{oci['registry_sizes'].get(tag, 0) / mib:.1f}"]
        print(f"| {tag} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
