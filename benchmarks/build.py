"""The unprivileged builder against a reference, measured side by side in one run.

    /opt/hpcstack/bin/python benchmarks/build.py [--rounds N] [--json FILE]
    /opt/hpcstack/bin/python benchmarks/build.py --against apptainer [--rounds N]

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

With ``--against apptainer``, against ``apptainer build --fakeroot`` instead
(Apptainer on ``PATH``, or the test suite's shim from scripts/apptainer-sid.sh),
both building examples/hello.def with the host's mirror as ``MirrorURL``:

4. cold builds, each with an empty cache (``HPCSTACK_CACHEDIR``,
   ``APPTAINER_CACHEDIR``), split at the end of the bootstrap (mmdebstrap's
   ``I: success``, debootstrap's ``I: Base system installed successfully``);
5. warm: hpcstack's rebuild on its cache against Apptainer's rebuild on its own;
6. image size, hpcstack's against Apptainer's, for hello.def and each parity
   definition (tests/data/parity/) that builds without the tests' registry, the
   localimage ones on Apptainer's hello image.

It prints medians, min-max, ratios of medians and per-round paired ratios, and
a verdict per figure; it never fails on a timing.  Each command's output, with
elapsed seconds on every line, is kept under the work directory's ``logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
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
PARITY = HERE.parent / "tests" / "data" / "parity"
#: Parity definitions built for figure 6 (docker.def needs the tests' TLS registry).
PARITY_SIZES = ("multistage", "localimage", "shebang", "environment")
APPTAINER_SHIM = Path("/usr/local/libexec/hpcstack/apptainer-shim/apptainer")
PASSED_ON = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class Failed(Exception):
    """A build that may fail without ending the benchmark (figure 6) did."""


class Bench:
    """Where the runs happen and how a command becomes the ordinary user's."""

    def __init__(self, hpcstack: str, apptainer: str | None = None) -> None:
        self.apptainer = apptainer
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
        (self.work / "hello-mirror.def").write_text(with_mirror(DEFFILE.read_text()))
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

    def timed(self, name: str, argv: list[str], check: bool = True, **env: str
              ) -> tuple[float, float]:
        """Wall and CPU (user + system, all descendants) seconds of ``argv`` as the user.

        Its output goes to ``logs/NAME.log``, each line prefixed with elapsed seconds.
        A failure ends the benchmark, or with ``check=False`` raises :class:`Failed`.
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
            msg = f"{name}: {' '.join(argv)} failed with exit status {proc.returncode}; see {log}"
            if not check:
                print(f"  {msg}", flush=True)
                raise Failed(msg)
            sys.exit(msg)
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


# --- against Apptainer ------------------------------------------------------------------


def host_mirror() -> str:
    """The host's Debian mirror, for ``MirrorURL`` (Apptainer's debootstrap needs one)."""
    for _name, text in read_host_sources():
        for m in re.finditer(r"(?m)^\s*(?:URIs:|deb(?:\s+\[[^]]*])?)\s+(\S+)", text):
            if "debian" in m.group(1) and "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def with_mirror(text: str) -> str:
    return re.sub(r"(?mi)^(OSVersion:.*)$", rf"\1\nMirrorURL: {host_mirror()}", text, count=1)


def find_apptainer() -> str:
    found = shutil.which("apptainer")
    if found:
        return found
    if APPTAINER_SHIM.exists():
        return str(APPTAINER_SHIM)
    sys.exit("apptainer: not installed (or run scripts/apptainer-sid.sh for the tests' one)")


def apptainer_build(bench: Bench, name: str, cache: str, out: str = "apptainer.sif",
                    deffile: str = "hello-mirror.def", check: bool = True) -> tuple[float, float]:
    assert bench.apptainer
    return bench.timed(name, [bench.apptainer, "build", "--fakeroot", "--force", out, deffile],
                       check, APPTAINER_CACHEDIR=str(bench.work / cache))


def hpcstack_mirror_build(bench: Bench, name: str, cache: str, out: str = "hpcstack.sif",
                          deffile: str = "hello-mirror.def", check: bool = True
                          ) -> tuple[float, float]:
    return bench.timed(name, [bench.hpcstack, "build", "--force", "--engine", "builtin", out,
                              deffile], check, HPCSTACK_CACHEDIR=str(bench.work / cache))


def phase_end(log: Path, marker: str) -> float:
    """Elapsed seconds at the first line holding ``marker`` (the bootstrap's last word)."""
    for line in log.read_text().splitlines():
        if marker in line:
            return float(line.split()[0])
    raise SystemExit(f"{log}: no {marker!r} line")


BOOTSTRAP_DONE = {"hpcstack": "I: success in", "apptainer": "I: Base system installed"}


def figures_4_5(bench: Bench, rounds: int) -> dict[str, list[float]]:
    """Cold builds interleaved (fresh caches), then both warm rebuilds interleaved."""
    tools = ("hpcstack", "apptainer")
    build = {"hpcstack": hpcstack_mirror_build, "apptainer": apptainer_build}
    times: dict[str, list[float]] = {
        f"{t}_{k}": [] for t in tools
        for k in ("cold", "cold_cpu", "cold_bootstrap", "cold_rest", "warm", "warm_cpu")}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds} (against Apptainer)", flush=True)
        order = tools if r % 2 == 0 else tools[::-1]
        for phase in ("cold", "warm"):
            for tool in order:
                name = f"r{r + 1}-{tool}-{phase}"
                seconds, cpu = build[tool](bench, name, f"{tool}-cache-{r}")
                times[f"{tool}_{phase}"].append(seconds)
                times[f"{tool}_{phase}_cpu"].append(cpu)
                if phase == "cold":
                    boot = phase_end(bench.work / "logs" / f"{name}.log", BOOTSTRAP_DONE[tool])
                    times[f"{tool}_cold_bootstrap"].append(boot)
                    times[f"{tool}_cold_rest"].append(seconds - boot)
        for tool in tools:
            if r < rounds - 1:
                bench.remove(bench.work / f"{tool}-cache-{r}")
    return times


def figure_6(bench: Bench, rounds: int) -> dict[str, tuple[int, int] | None]:
    """(hpcstack bytes, apptainer bytes) per definition (None: a build failed); the last
    round's hello images."""
    sizes: dict[str, tuple[int, int] | None] = {"hello": (
        (bench.work / "hpcstack.sif").stat().st_size,
                       (bench.work / "apptainer.sif").stat().st_size)}
    base = bench.work / "apptainer.sif"
    cache = f"hpcstack-cache-{rounds - 1}"
    for name in PARITY_SIZES:
        text = (PARITY / f"{name}.def").read_text().replace("@BASE@", str(base))
        deffile = bench.work / f"{name}.def"
        deffile.write_text(text)
        if bench.root:
            os.chown(deffile, bench.user.pw_uid, bench.user.pw_gid)
        try:
            hpcstack_mirror_build(bench, f"size-{name}-hpcstack", cache,
                                  f"{name}-hpcstack.sif", deffile.name, check=False)
            apptainer_build(bench, f"size-{name}-apptainer", "apptainer-cache-size",
                            f"{name}-apptainer.sif", deffile.name, check=False)
        except Failed:
            sizes[name] = None
            continue
        sizes[name] = tuple((bench.work / f"{name}-{t}.sif").stat().st_size
                            for t in ("hpcstack", "apptainer"))
    return sizes


def size_rows(sizes: dict[str, tuple[int, int] | None]) -> list[list[str]]:
    rows = []
    for name, pair in sizes.items():
        if pair is None:
            rows.append([f"6 size {name}", "build failed", "-", "-", "-", "<= 1.00"])
        else:
            rows.append(row(f"6 size {name}", [pair[0]], [pair[1]], "MiB", 1.0)[0])
    return rows


def size_summary(sizes: dict[str, tuple[int, int] | None]) -> str:
    return ("6 image size:   " + ", ".join(
        f"{n} {p[0] / p[1]:.2f}" if p else f"{n} (a build failed)" for n, p in sizes.items())
        + "; target <= 1.00 (hpcstack packs zstd by default, Apptainer gzip)")


def report_apptainer(t: dict[str, list[float]], sizes: dict[str, tuple[int, int] | None]
                     ) -> list[str]:
    rows = [
        row("4 cold: hpcstack / apptainer", t["hpcstack_cold"], t["apptainer_cold"], "s", 0.45),
        row("4' same, CPU time", t["hpcstack_cold_cpu"], t["apptainer_cold_cpu"], "s", None),
        row("4a  of which the bootstrap", t["hpcstack_cold_bootstrap"],
            t["apptainer_cold_bootstrap"], "s", None),
        row("4b  of which the rest", t["hpcstack_cold_rest"], t["apptainer_cold_rest"], "s",
            None),
        row("5 warm: hpcstack / apptainer", t["hpcstack_warm"], t["apptainer_warm"], "s", 0.08),
        row("5' same, CPU time", t["hpcstack_warm_cpu"], t["apptainer_warm_cpu"], "s", None),
    ]
    lines = table([r for r, _ in rows] + size_rows(sizes))
    cold, warm = rows[0][1], rows[4][1]
    boot, rest = rows[2][1], rows[3][1]
    lines += [
        "",
        f"4 cold build:   {cold:.2f} x Apptainer's; target <= 0.45: "
        f"{'met' if cold <= 0.45 else 'NOT met'} (bootstrap {boot:.2f} x, the rest {rest:.2f} x)",
        f"5 warm rebuild: {warm:.2f} x Apptainer's rebuild; target <= 0.08: "
        f"{'met' if warm <= 0.08 else 'NOT met'}",
        size_summary(sizes),
    ]
    return lines


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


def table(rows: list[list[str]]) -> list[str]:
    head = ["figure", "A median (min-max)", "B median (min-max)", "A/B", "paired A/B", "target"]
    cells = [head, *rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells_row, widths, strict=True)).rstrip()
             for cells_row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


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
    lines = table([r for r, _ in rows])
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
    parser.add_argument("--against", choices=("reference", "apptainer"), default="reference",
                        help="what hpcstack is compared with (default: the steps by hand)")
    parser.add_argument("--sizes-only", action="store_true",
                        help="with --against apptainer: figure 6 alone (one build of each)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.against == "apptainer":
        return main_apptainer(args)

    bench = Bench(args.hpcstack)
    print(f"work directory {bench.work}, builds as user {bench.user.pw_name}", flush=True)
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    try:
        times = figures_1_2(bench, args.rounds) | figure_3(bench, args.rounds)
        sizes = {name: (bench.work / name).stat().st_size
                 for name in ("hello.sif", "reference.sif")}
    finally:
        finish(bench, args.keep)
    loads.append(os.getloadavg()[0])
    print_run("build benchmark", args.rounds, started, bench, loads)
    print(f"images: hpcstack {sizes['hello.sif'] / 2**20:.1f} MiB, "
          f"reference {sizes['reference.sif'] / 2**20:.1f} MiB\n")
    print("\n".join(report(times)))
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "user": bench.user.pw_name,
                                         "load_average_1min": loads,
                                         "seconds_and_bytes": times, "sif_bytes": sizes},
                                        indent=2) + "\n")
    return 0


def finish(bench: Bench, keep: bool) -> None:
    """Remove the work directory's builds (logs stay) unless asked to keep them."""
    if not keep:
        for path in bench.work.iterdir():
            if path.name != "logs":
                bench.remove(path)


def print_run(title: str, rounds: int, started: float, bench: Bench, loads: list[float]
              ) -> None:
    print(f"\n{title}: {rounds} rounds, interleaved, "
          f"{time.perf_counter() - started:.0f} s in all; logs in {bench.work / 'logs'}")
    print(f"load average (1 min) {loads[0]:.1f} at the start, {loads[1]:.1f} at the end, "
          f"on {os.cpu_count()} CPUs: other work on the machine widens the spreads")


def main_apptainer(args: argparse.Namespace) -> int:
    bench = Bench(args.hpcstack, find_apptainer())
    print(f"work directory {bench.work}, builds as user {bench.user.pw_name}, "
          f"against {bench.apptainer}", flush=True)
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    try:
        if args.sizes_only:
            hpcstack_mirror_build(bench, "hello-hpcstack", "hpcstack-cache-0")
            apptainer_build(bench, "hello-apptainer", "apptainer-cache-0")
            times, sizes = {}, figure_6(bench, 1)
        else:
            times = figures_4_5(bench, args.rounds)
            sizes = figure_6(bench, args.rounds)
    finally:
        finish(bench, args.keep)
    loads.append(os.getloadavg()[0])
    print_run("build benchmark against Apptainer", args.rounds, started, bench, loads)
    print()
    if times:
        print("\n".join(report_apptainer(times, sizes)))
    else:
        print("\n".join([*table(size_rows(sizes)), "", size_summary(sizes)]))
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "user": bench.user.pw_name,
                                         "against": "apptainer", "load_average_1min": loads,
                                         "seconds": times, "sif_bytes": sizes},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
