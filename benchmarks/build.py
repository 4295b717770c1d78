"""The unprivileged builder against a reference, measured side by side in one run.

    /opt/hpcstack/bin/python benchmarks/build.py [--rounds N] [--json FILE]

Run it as root (every build then runs as the ordinary user ``hpcbench``, made
with ``useradd -m`` if missing) or as an ordinary user with subordinate ID
ranges.  Figures, each interleaved over the rounds (A B, B A, ...):

1. cold ``hpcstack build`` of examples/hello.def (empty cache) against the same
   steps by hand with the same tools (benchmarks/reference_build.sh), and split
   at the end of the bootstrap: mmdebstrap (hpcstack's writes the tree in place,
   the reference's a tarball to unpack; its time varies by half between runs on
   a shared VM), and everything after it;
2. warm rebuild (bootstrap cached) against the cold build;
3. SquashFS zstd against gzip on one root filesystem: image size, pack time.

It prints medians, min-max, ratios of medians and per-round paired ratios, and
a verdict per figure; it never fails on a timing.  Each command's output, with
elapsed seconds on every line, is kept under the work directory's ``logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpcstack.build.agents import host_mirrors, read_host_sources
from hpcstack.build.pack import mksquashfs_flags
from hpcstack.deffile import parse

HERE = Path(__file__).resolve().parent
DEFFILE = HERE.parent / "examples" / "hello.def"
USER = "hpcbench"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_ON = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class Bench:
    """Where the runs happen and how a command becomes the ordinary user's."""

    def __init__(self, hpcstack: str) -> None:
        self.root = os.geteuid() == 0
        if self.root and subprocess.run(["id", USER], capture_output=True).returncode:
            subprocess.run(["useradd", "-m", USER], check=True)
        self.user = pwd.getpwnam(USER) if self.root else pwd.getpwuid(os.getuid())
        self.hpcstack = hpcstack
        self.work = Path(tempfile.mkdtemp(prefix="hpcstack-bench-", dir=self.user.pw_dir))
        self.work.chmod(0o755)  # mmdebstrap's unshared root (a subordinate ID) must enter it
        (self.work / "tmp").mkdir()
        (self.work / "logs").mkdir()
        for src in (DEFFILE, HERE / "reference_build.sh"):
            shutil.copy(src, self.work / src.name)
        if self.root:
            for path in (self.work, *self.work.iterdir()):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def argv(self, argv: list[str], **env: str) -> list[str]:
        """``argv`` as the ordinary user, in a clean environment plus ``env``."""
        base = {"PATH": PATH, "HOME": self.user.pw_dir, "USER": self.user.pw_name,
                "LOGNAME": self.user.pw_name, "LANG": "C.UTF-8",
                "TMPDIR": str(self.work / "tmp")}
        base |= {k: os.environ[k] for k in PASSED_ON if k in os.environ} | env
        prefix = ["runuser", "-u", self.user.pw_name, "--"] if self.root else []
        return [*prefix, "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]

    def timed(self, name: str, argv: list[str], **env: str) -> tuple[float, float]:
        """Wall and CPU (user + system, all descendants) seconds of ``argv`` as the user.

        Its output goes to ``logs/NAME.log``, each line prefixed with elapsed seconds.
        """
        log = self.work / "logs" / f"{name}.log"
        cpu_before = cpu_of_children()
        start = time.perf_counter()
        with log.open("w") as fh, subprocess.Popen(
                self.argv(argv, **env), cwd=self.work, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace") as proc:
            for line in proc.stdout:
                fh.write(f"{time.perf_counter() - start:8.2f}  {line}")
        seconds, cpu = time.perf_counter() - start, cpu_of_children() - cpu_before
        if proc.returncode:
            sys.exit(f"{name}: {' '.join(argv)} failed with exit status "
                     f"{proc.returncode}; see {log}")
        print(f"  {name:<22} {seconds:7.1f} s  (cpu {cpu:5.1f} s)", flush=True)
        return seconds, cpu

    def remove(self, path: Path) -> None:
        """Remove a tree that may hold files owned by subordinate IDs."""
        if self.root:
            shutil.rmtree(path, ignore_errors=True)
        else:
            subprocess.run(self.argv(["unshare", "--map-root-user", "--map-auto",
                                      "rm", "-rf", str(path)]), check=False)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- one function per measurement ----------------------------------------------------------


def hpcstack_build(bench: Bench, name: str, cache: str, *extra: str) -> tuple[float, float]:
    out = "hello.sandbox" if "--sandbox" in extra else "hello.sif"
    return bench.timed(name, [bench.hpcstack, "build", "--force", *extra, out, "hello.def"],
                       HPCSTACK_CACHEDIR=str(bench.work / cache))


def reference_build(bench: Bench, name: str) -> tuple[float, float]:
    text = DEFFILE.read_text()
    suite = parse(text, str(DEFFILE)).stages[0].get("OSVersion")
    mirrors = host_mirrors(read_host_sources(), suite)  # exactly what hpcstack passes
    return bench.timed(name, ["sh", "reference_build.sh", "hello.def", "reference.sif",
                              *mirrors], MKSQUASHFS_COMP=" ".join(mksquashfs_flags("zstd")))


def pack(bench: Bench, name: str, comp: str) -> tuple[float, float, int]:
    """Wall and CPU seconds and bytes of a SquashFS of the sandbox, packed as fake root."""
    image = bench.work / f"{comp}.sqfs"
    argv = ["unshare", "--map-root-user", "--map-auto", "mksquashfs", "hello.sandbox",
            image.name, "-noappend", *mksquashfs_flags(comp), "-no-progress", "-quiet"]
    seconds, cpu = bench.timed(name, argv)
    return seconds, cpu, image.stat().st_size


# --- rounds ----------------------------------------------------------------------------


def cold_build(bench: Bench, mode: str, r: int) -> tuple[float, float]:
    if mode == "hpcstack_cold":
        return hpcstack_build(bench, f"r{r + 1}-hpcstack-cold", f"cache-{r}")
    return reference_build(bench, f"r{r + 1}-reference")


def bootstrap_seconds(log: Path) -> float:
    """When mmdebstrap finished (its ``I: success`` line), from the log's elapsed times."""
    for line in log.read_text().splitlines():
        if "I: success in" in line:
            return float(line.split()[0])
    raise SystemExit(f"{log}: no 'I: success' line from mmdebstrap")


def figures_1_2(bench: Bench, rounds: int) -> dict[str, list[float]]:
    """Cold hpcstack and reference interleaved; then a warm rebuild on that round's cache."""
    modes = ("hpcstack_cold", "reference", "hpcstack_warm")
    times: dict[str, list[float]] = {k: [] for m in modes for k in (m, f"{m}_cpu")}
    times |= {f"{m}_{part}": [] for m in modes[:2] for part in ("bootstrap", "rest")}

    def record(mode: str, run: tuple[float, float]) -> None:
        times[mode].append(run[0])
        times[f"{mode}_cpu"].append(run[1])

    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        order = ["hpcstack_cold", "reference"] if r % 2 == 0 else ["reference", "hpcstack_cold"]
        for mode in order:
            record(mode, cold_build(bench, mode, r))
            name = f"r{r + 1}-hpcstack-cold" if mode == "hpcstack_cold" else f"r{r + 1}-reference"
            boot = bootstrap_seconds(bench.work / "logs" / f"{name}.log")
            times[f"{mode}_bootstrap"].append(boot)
            times[f"{mode}_rest"].append(times[mode][-1] - boot)
        record("hpcstack_warm", hpcstack_build(bench, f"r{r + 1}-hpcstack-warm", f"cache-{r}"))
        if r:  # round 1's cache is reused for figure 3
            bench.remove(bench.work / f"cache-{r}")
    return times


def figure_3(bench: Bench, rounds: int) -> dict[str, list[float]]:
    print("SquashFS: sandbox of hello.def (cache of round 1)", flush=True)
    hpcstack_build(bench, "sandbox", "cache-0", "--sandbox")
    out: dict[str, list[float]] = {f"{c}_{k}": [] for c in ("zstd", "gzip")
                                   for k in ("s", "cpu", "bytes")}
    for r in range(rounds):
        for comp in ("zstd", "gzip") if r % 2 == 0 else ("gzip", "zstd"):
            seconds, cpu, size = pack(bench, f"r{r + 1}-pack-{comp}", comp)
            out[f"{comp}_s"].append(seconds)
            out[f"{comp}_cpu"].append(cpu)
            out[f"{comp}_bytes"].append(size)
    return out


# --- report ----------------------------------------------------------------------------


def spread(values: list[float], unit: str) -> str:
    if unit == "MiB":
        values = [v / 2**20 for v in values]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) {unit}"


def row(label: str, a: list[float], b: list[float], unit: str, target: float | None
        ) -> tuple[list[str], float]:
    ratio = statistics.median(a) / statistics.median(b)
    paired = " ".join(f"{x / y:.2f}" for x, y in zip(a, b, strict=True))
    goal = f"<= {target:.2f}" if target is not None else "-"
    return [label, spread(a, unit), spread(b, unit), f"{ratio:.2f}", paired, goal], ratio


def report(t: dict[str, list[float]]) -> list[str]:
    rows = [
        row("1 cold: hpcstack / reference", t["hpcstack_cold"], t["reference"], "s", 1.10),
        row("1' same, CPU time", t["hpcstack_cold_cpu"], t["reference_cpu"], "s", None),
        row("1a  of which mmdebstrap", t["hpcstack_cold_bootstrap"], t["reference_bootstrap"],
            "s", None),
        row("1b  of which the rest", t["hpcstack_cold_rest"], t["reference_rest"], "s", None),
        row("2 warm / cold hpcstack", t["hpcstack_warm"], t["hpcstack_cold"], "s", 0.25),
        row("2' same, CPU time", t["hpcstack_warm_cpu"], t["hpcstack_cold_cpu"], "s", None),
        row("3a SquashFS size zstd / gzip", t["zstd_bytes"], t["gzip_bytes"], "MiB", None),
        row("3b pack time zstd / gzip", t["zstd_s"], t["gzip_s"], "s", None),
        row("3b' same, CPU time", t["zstd_cpu"], t["gzip_cpu"], "s", None),
    ]
    head = ["figure", "A median (min-max)", "B median (min-max)", "A/B", "paired A/B", "target"]
    cells = [head, *(r for r, _ in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells_row, widths, strict=True)).rstrip()
             for cells_row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ((_, cold), (_, cold_cpu), (_, boot), (_, rest), (_, warm), (_, warm_cpu), (_, size),
     (_, speed), (_, cpu)) = rows
    lines += [
        "",
        f"1 cold build:   {cold:.2f} x the reference; target <= 1.10: "
        f"{'met' if cold <= 1.10 else 'NOT met'} (CPU time: {cold_cpu:.2f} x; "
        f"mmdebstrap {boot:.2f} x, everything after it {rest:.2f} x)",
        f"2 warm rebuild: {warm:.2f} x a cold build; target <= 0.25: "
        f"{'met' if warm <= 0.25 else 'NOT met'} (CPU time: {warm_cpu:.2f} x)",
        f"3 SquashFS:     zstd image {(1 - size) * 100:.0f}% smaller than gzip, packed in "
        f"{speed:.2f} x gzip's time, {cpu:.2f} x its CPU time (no target; zstd is the default)",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", type=Path, help="write every raw time and size here")
    parser.add_argument("--hpcstack", default="/opt/hpcstack/bin/hpcstack",
                        help="the hpcstack command, readable by the user")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    bench = Bench(args.hpcstack)
    print(f"work directory {bench.work}, builds as user {bench.user.pw_name}", flush=True)
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    try:
        times = figures_1_2(bench, args.rounds) | figure_3(bench, args.rounds)
        sizes = {name: (bench.work / name).stat().st_size
                 for name in ("hello.sif", "reference.sif")}
    finally:
        if not args.keep:
            for path in bench.work.iterdir():
                if path.name != "logs":
                    bench.remove(path)
    loads.append(os.getloadavg()[0])
    print(f"\nbuild benchmark: {args.rounds} rounds, interleaved, "
          f"{time.perf_counter() - started:.0f} s in all; logs in {bench.work / 'logs'}")
    print(f"load average (1 min) {loads[0]:.1f} at the start, {loads[1]:.1f} at the end, "
          f"on {os.cpu_count()} CPUs: other work on the machine widens the spreads")
    print(f"images: hpcstack {sizes['hello.sif'] / 2**20:.1f} MiB, "
          f"reference {sizes['reference.sif'] / 2**20:.1f} MiB\n")
    print("\n".join(report(times)))
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "user": bench.user.pw_name,
                                         "load_average_1min": loads,
                                         "seconds_and_bytes": times, "sif_bytes": sizes},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
