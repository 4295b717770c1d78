"""Start-up cost of the commands portals and users' shells call all the time, side by side.

    /opt/hpcstack/bin/python benchmarks/cli.py --image hello.sif [--rounds 20] [--service URL]

As root it runs everything as the ordinary user ``hpcbench`` (``useradd -m``);
as an ordinary user, as that user.  ``--image`` is a SIF built by hpcstack.
Each round runs every command once, in turn (interleaved), and the figures are
medians per call:

1. ``hpcstack exec IMG /bin/true`` against ``apptainer exec IMG /bin/true``
   (target: ratio <= 0.5), when Apptainer is reachable: here, Debian sid's, in its
   own tree (``scripts/apptainer-sid.sh``).  Entering that tree (sudo, a mount
   namespace, pivot_root) is not Apptainer's cost, so each round enters it once
   and times ``apptainer exec`` calls inside it with the shell's clock;
2. ``hpcstack version`` (target: <= 60 ms) and ``u2cb --help`` (the full CLI's
   start), against ``python -c pass`` from the same interpreter;
3. ``u2cb list`` into a pipe against a local service (target: <= 60 ms): ``--service
   URL``, or, as root, one started here (the system ``munged`` with its key, and
   ``hpcstack serve`` as the bench user on a scratch data directory);
4. the import-time profile of each entry point (``python -X importtime``): the
   ten modules that cost most, cumulative.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

PREFIX = Path(sys.executable).parent
SID_RUN = Path("/usr/local/libexec/hpcstack/apptainer-sid-run")
BENCH_USER = "hpcbench"


def as_user(argv: list[str], env: dict[str, str]) -> list[str]:
    envargs = [f"{k}={v}" for k, v in env.items()]
    if os.geteuid() != 0:
        return ["env", "-i", *envargs, *argv]
    return ["runuser", "-u", BENCH_USER, "--", "env", "-i", *envargs, *argv]


def user_env() -> dict[str, str]:
    name = BENCH_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0 and subprocess.run(["id", name], capture_output=True).returncode:
        subprocess.run(["useradd", "-m", name], check=True)  # with subordinate ID ranges
    home = pwd.getpwnam(name).pw_dir
    return {"HOME": home, "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
            "PATH": f"{PREFIX}:/usr/local/bin:/usr/bin:/bin"}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[-4:]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return elapsed


def apptainer_in_tree(image: str, calls: int, env: dict[str, str]) -> list[float]:
    """Seconds per ``apptainer exec IMAGE /bin/true``, timed inside the sid tree."""
    loop = (f'for i in $(seq {calls}); do s=$EPOCHREALTIME; '
            f'apptainer -s exec {image} /bin/true; e=$EPOCHREALTIME; echo "$s $e"; done')
    proc = subprocess.run(as_user([str(SID_RUN), "bash", "-c", loop], env),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"apptainer in its tree: {proc.stderr.strip()[-300:]}")
    return [float(e) - float(s) for s, e in (line.split() for line in proc.stdout.splitlines())]


def import_profile(code: str, env: dict[str, str], top: int = 10) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the costliest imports when running ``code``."""
    proc = subprocess.run(as_user([str(PREFIX / "python"), "-X", "importtime", "-c", code],
                                  env), capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(2):  # top-level imports only: their figures include the rest
            rows.append((int(m.group(1)), m.group(3)))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--in-tree", type=int, default=3,
                        help="apptainer exec calls timed per round inside the sid tree")
    parser.add_argument("--service", help="a running U2CB service URL for `u2cb list`")
    args = parser.parse_args()
    env = user_env()
    service = None
    if not args.service and os.geteuid() == 0:
        service, args.service = start_service(env)
    try:
        measure(args, env)
    finally:
        if service:
            service.terminate()
            service.wait(timeout=30)


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """munged (the system's, started if it is not running) and a scratch U2CB service."""
    import socket
    import tempfile
    import urllib.request

    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="u2cb-bench-", dir=env["HOME"]))
    subprocess.run(["chown", env["USER"], str(data)], check=True)
    proc = subprocess.Popen(as_user([str(PREFIX / "hpcstack"), "serve", "--port", str(port),
                                     "--data-dir", str(data / "d"), "--log-level", "warning"],
                                    env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{url}/api/v1/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the U2CB service did not start")


def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    image = str(args.image.resolve())
    python = str(PREFIX / "python")
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "hpcstack version": [str(PREFIX / "hpcstack"), "version"],
        "u2cb --help": [str(PREFIX / "u2cb"), "--help"],
        "hpcstack exec": [str(PREFIX / "hpcstack"), "exec", image, "/bin/true"],
    }
    if args.service:
        commands["u2cb list"] = [str(PREFIX / "u2cb"), "--server", args.service, "list"]
    for argv in commands.values():  # warm the page cache and the extracted copy
        timed(as_user(argv, env))
    samples: dict[str, list[float]] = {name: [] for name in commands}
    apptainer = SID_RUN.exists() and args.in_tree > 0
    if apptainer:
        samples["apptainer exec"] = []
    for _ in range(args.rounds):
        for name, argv in commands.items():
            samples[name].append(timed(as_user(argv, env)))
        if apptainer:
            samples["apptainer exec"] += apptainer_in_tree(image, args.in_tree, env)
    ms = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    print(f"medians over {args.rounds} interleaved rounds, as {env['USER']}:")
    for name, value in ms.items():
        print(f"  {name:28s} {value:7.1f} ms")
    if "apptainer exec" in ms:
        print(f"ratio hpcstack exec / apptainer exec: "
              f"{ms['hpcstack exec'] / ms['apptainer exec']:.2f}   (target <= 0.50)")
    for name in ("hpcstack version", "u2cb list"):
        if name in ms:
            print(f"{name}: {ms[name]:.1f} ms (target <= 60 ms; python itself "
                  f"{ms['python -c pass']:.1f} ms)")
    print("\nimport-time profile (cumulative ms, top-level modules):")
    for label, code in (("hpcstack exec", "import hpcstack.cli.launch, hpcstack.runtime"),
                        ("hpcstack other verbs", "import hpcstack.cli.main"),
                        ("u2cb list", "import hpcstack.client.quick"),
                        ("u2cb other verbs", "import hpcstack.client.main")):
        rows = import_profile(code, env)
        print(f"  {label}: " + ", ".join(f"{mod} {us / 1000:.1f}" for us, mod in rows))


if __name__ == "__main__":
    main()
