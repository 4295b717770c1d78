"""Container modules at scale, against a reference tree, measured side by side.

    /opt/hpcstack/bin/python benchmarks/modules.py --image hello.sif [--modules 1000]

``--image`` is any SIF built by hpcstack (``hpcstack build hello.sif
examples/hello.def``).  The benchmark deploys N modules of 3 commands each
(all sharing that image) and 1 module, and generates, as the reference, the
same N modules in the original center's style: Lua that runs
``capture("which singularity")`` at load time and defines shell functions.
Figures (medians over interleaved rounds; ratios; never fails on a timing):

1. deploy time per module (Python API, N modules and 1 module);
2. ``module avail`` without and with Lmod's spider cache, ours and the reference;
3. ``module load X`` latency with N modules and with 1 (target: load(N)/load(1) <= 1.2),
   once walking the tree (no cache) and once from Lmod's system spider cache with
   ``LMOD_CACHED_LOADS=yes``; each ratio compares two trees set up and measured the same
   way (the 1-module tree gets its own spider cache too); and the same load of our Tcl
   modulefiles with Environment Modules' ``modulecmd.tcl`` (``HPCSTACK_MODULECMD_TCL``, or
   the installed one), which looks the module up by name instead of walking the tree;
4. wrapper overhead per call against calling ``ch-run`` directly (target < 1 ms), and
   whether each style works from ``env``, ``xargs``, ``subprocess`` and ``bash -c``;
5. what usage records (site file ``usage_log``) add to a wrapper call: the same module
   deployed with and without them, calls interleaved and paired (target < 1 ms);
6. ``hpcstack modules usage`` over a generated log of 100,000 records (target < 1 s).

Lmod's per-user cache is kept out of it (HOME points at an empty directory, removed
before every timed run, and ``LMOD_IGNORE_CACHE=1`` where "without cache" is measured).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpcstack.modules import deploy, parse_site, usage
from hpcstack.modules.deploy import lmod_dir, spider_cache, tcl_modulecmd
from hpcstack.modules.render import Layout

CENTER_LUA = """\
-- {name}/{version}: in the style of the original center's modulefiles
local singularity = capture("which singularity 2>/dev/null"):gsub("%s+$", "")
if singularity == "" then singularity = "singularity" end
local image = "{image}"
whatis("Name: {name}")
whatis("Version: {version}")
help([[{name} {version} in a container]])
{functions}
"""
CENTER_FN = ('set_shell_function("{cmd}", singularity .. " exec " .. image .. " {cmd} \\"$@\\"",'
             ' singularity .. " exec " .. image .. " {cmd} $*")')


def site_text(root: Path, image: Path, n: int) -> str:
    lines = [f"root: {root}", "module_system: both", "apps:"]
    lines += [f"  - {{name: app{i:04d}, version: '1.0', image: {image}, "
              f"commands: [app{i:04d}-a, app{i:04d}-b, app{i:04d}-c]}}" for i in range(n)]
    lines += [f"  - {{name: probe, version: '1.0', image: {image}, commands: ['true']}}"]
    return "\n".join(lines) + "\n"


def center_tree(root: Path, image: Path, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        name = f"app{i:04d}"
        fns = "\n".join(CENTER_FN.format(cmd=f"{name}-{x}") for x in "abc")
        path = root / "lmod" / name / "1.0.lua"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CENTER_LUA.format(name=name, version="1.0", image=image, functions=fns))
    probe = root / "lmod" / "probe" / "1.0.lua"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(CENTER_LUA.format(name="probe", version="1.0", image=image,
                                       functions=CENTER_FN.format(cmd="probe-cmd")))
    return time.perf_counter() - started


def usage_records(n: int, now: int) -> str:
    """``n`` usage records over 90 days: 300 users, 40 modules, 50 nodes."""
    rng = random.Random(16)
    return "".join(f"{now - rng.randrange(90 * 86400)}\tuser{rng.randrange(300):03d}\t"
                   f"app{rng.randrange(40):02d}/1.0\tcmd\t{rng.randrange(9000)}\t"
                   f"node{rng.randrange(50)}\n" for _ in range(n))


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr[-500:]!r}")
    return elapsed


def interleaved(cases: dict[str, tuple[list[str], dict[str, str]]], rounds: int,
                before=None) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[float]] = {k: [] for k in cases}
    keys = list(cases)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else reversed(keys):
            if before:
                before()
            argv, env = cases[key]
            out[key].append(timed(argv, env))
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, required=True, help="a SIF built by hpcstack")
    ap.add_argument("--modules", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    lmod = lmod_dir()
    if lmod is None:
        raise SystemExit("Lmod is not installed")
    lmod_cmd = str(lmod / "libexec" / "lmod")
    image = args.image.resolve()
    work = Path(tempfile.mkdtemp(prefix="hpcstack-bench-modules-"))
    home = work / "home"
    home.mkdir()
    n = args.modules
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                "USER": os.environ.get("USER") or "root", "LANG": "C.UTF-8"}
    rows: list[tuple[str, str, str, str]] = []
    try:
        # 1. deploy
        trees = {}
        deploy_s = {}
        for count in (n, 1):
            root = work / f"ours-{count}"
            site = parse_site(site_text(root, image, count), "bench")
            report = deploy(site, warn=lambda _m: None)
            deploy_s[count] = report.seconds / (count + 1)
            trees[("ours", count)] = root
        for count in (n, 1):
            root = work / f"center-{count}"
            center_s = center_tree(root, image, count) / (count + 1)
            trees[("center", count)] = root
        rows.append(("deploy time per module", f"{deploy_s[n] * 1e3:.1f} ms (N={n}), "
                     f"{deploy_s[1] * 1e3:.0f} ms (N=1, incl. image extraction)",
                     f"{center_s * 1e3:.2f} ms (writes files only)",
                     "shpc 0.1.32: 64 ms API, 521 ms CLI"))

        # spider caches for every tree, so that cached loads compare like with like
        for style in ("ours", "center"):
            for count in (n, 1):
                spider_cache(Layout(str(trees[(style, count)])))
        cache_dir = trees[("ours", n)] / "cache" / "lmod"
        compiled = next(iter(sorted(cache_dir.glob("spiderT.luac_*"))), None)
        read = compiled or cache_dir / "spiderT.lua"  # what Lmod loads: the compiled one first
        cache_note = f"reads {read.name}, {read.stat().st_size // 1024} kB"

        def env_for(style: str, count: int, cache: bool) -> dict[str, str]:
            root = trees[(style, count)]
            env = dict(base_env, MODULEPATH=f"{root}/lmod", LMOD_DIR=f"{lmod}/libexec",
                       LMOD_CMD=lmod_cmd)
            if cache:  # the system spider cache, also for loads (Lmod's LMOD_CACHED_LOADS)
                env["LMOD_RC"] = str(root / "lmodrc.lua")
                env["LMOD_CACHED_LOADS"] = "yes"
            else:
                env["LMOD_IGNORE_CACHE"] = "1"
            return env

        def no_user_cache() -> None:
            shutil.rmtree(home / ".lmod.d", ignore_errors=True)

        # 2. avail
        avail = {f"{s}-{c}": ([lmod_cmd, "bash", "--terse", "avail"], env_for(s, n, c == "cache"))
                 for s in ("ours", "center") for c in ("nocache", "cache")}
        av = interleaved(avail, max(3, args.rounds // 4), no_user_cache)
        rows.append(("module avail, no cache / spider cache",
                     f"{med(av['ours-nocache']):.2f} s / {med(av['ours-cache']):.3f} s",
                     f"{med(av['center-nocache']):.2f} s / {med(av['center-cache']):.3f} s",
                     "200 modules: shpc 0.70/0.05 s, center 0.45/0.04 s"))

        # 3. load latency
        loads = {}
        for style in ("ours", "center"):
            for count in (n, 1):
                loads[f"{style}-{count}"] = ([lmod_cmd, "bash", "load", "probe/1.0"],
                                             env_for(style, count, False))
            for count in (n, 1):
                loads[f"{style}-{count}-cache"] = ([lmod_cmd, "bash", "load", "probe/1.0"],
                                                   env_for(style, count, True))
        tcl = tcl_modulecmd()
        if tcl:
            for count in (n, 1):
                loads[f"tcl-{count}"] = ([*tcl, "bash", "load", "probe/1.0"],
                                         dict(base_env, MODULEPATH=f"{trees[('ours', count)]}/tcl"))
        ld = interleaved(loads, args.rounds, no_user_cache)
        m = {k: med(v) * 1e3 for k, v in ld.items()}

        def ratio(style: str, suffix: str) -> str:
            big, one = m[f"{style}-{n}{suffix}"], m[f"{style}-1{suffix}"]
            return f"{big:.0f} / {one:.0f} ms = {big / one:.2f}x"

        rows.append(("module load X (N / 1 module), no cache",
                     ratio("ours", ""), ratio("center", ""),
                     "target <= 1.2x; 200 modules: shpc 350 ms, center 54 ms"))
        rows.append(("module load X (N / 1), spider cache + LMOD_CACHED_LOADS",
                     f"{ratio('ours', '-cache')} ({cache_note})", ratio("center", "-cache"),
                     "target <= 1.2x"))
        rows.append(("module load X (N / 1), Environment Modules (Tcl)",
                     ratio("tcl", "") if tcl else "modulecmd.tcl not found "
                     "(set HPCSTACK_MODULECMD_TCL)", "-", "target <= 1.2x"))

        # 4. wrapper overhead: the wrapper against its own ch-run line run directly
        wrapper = trees[("ours", n)] / "bin" / "probe" / "1.0" / "true"
        line = wrapper.read_text().strip().splitlines()[-1]
        direct = line.removeprefix("exec ").replace('"$d"', str(work)).replace(' "$@"', "")
        direct_argv = shlex.split(direct)
        env = dict(base_env, USER=base_env["USER"])
        calls = {"direct": (direct_argv, env), "wrapper": ([str(wrapper)], env)}
        os.chdir(work)
        wr = interleaved(calls, args.rounds * 10)
        paired = [w - d for w, d in zip(wr["wrapper"], wr["direct"], strict=True)]
        works = []
        for parent in (["env"], ["xargs"], [sys.executable, "-c",
                       "import subprocess,sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"],
                       ["bash", "-c", '"$0"']):
            argv = [*parent, str(wrapper)] if parent[0] != "xargs" else ["xargs", str(wrapper)]
            proc = subprocess.run(argv, env=env, input="", capture_output=True, check=False)
            works.append(proc.returncode == 0)
        center_fn = subprocess.run(
            ["bash", "-c", f"source {lmod}/init/bash; module load probe/1.0; "
             "type -t probe-cmd; env probe-cmd; echo \"env: $?\""],
            env=env_for("center", n, False), capture_output=True, text=True, check=False)
        fn_env = center_fn.stdout.split("env: ")[-1].strip()
        rows.append(("wrapper overhead per call (median paired)",
                     f"{med(paired) * 1e3:+.2f} ms (ch-run direct {med(wr['direct']) * 1e3:.1f} "
                     f"ms); env/xargs/subprocess/bash -c: "
                     + "/".join("ok" if w else "FAIL" for w in works),
                     "+0 ms, but shell functions are not seen by env/xargs/subprocess/"
                     f"mpirun/bash -c (env probe-cmd: exit {fn_env})",
                     "shpc bash wrappers +3.6 ms"))

        # 5. usage records: the same one-module tree deployed with usage_log, against without
        root = work / "usage-1"
        usage_log = work / "usage.log"
        deploy(parse_site(site_text(root, image, 1) + f"usage_log: {usage_log}\n", "bench"),
               warn=lambda _m: None)
        plain = trees[("ours", 1)] / "bin" / "probe" / "1.0" / "true"
        recording = root / "bin" / "probe" / "1.0" / "true"
        us = interleaved({"off": ([str(plain)], env), "on": ([str(recording)], env)},
                         args.rounds * 10)
        added = [on - off for on, off in zip(us["on"], us["off"], strict=True)]
        written = len(usage_log.read_text().splitlines())
        rows.append(("usage records: added per wrapper call (median paired)",
                     f"{med(added) * 1e3:+.2f} ms (wrapper {med(us['off']) * 1e3:.1f} ms; "
                     f"{written} records written)", "-", "target < 1 ms"))

        # 6. modules usage over 100,000 records
        big = work / "usage-100k.log"
        big.write_text(usage_records(100_000, int(time.time())))
        cli = [str(Path(sys.executable).parent / "hpcstack"), "modules", "usage", "--log",
               str(big), "--since", "30d"]
        version = [str(Path(sys.executable).parent / "hpcstack"), "version"]
        cli_env = dict(base_env, PATH=f"{Path(sys.executable).parent}:{base_env['PATH']}")
        took = interleaved({"usage": (cli, cli_env), "version": (version, cli_env)},
                           max(4, args.rounds // 2))
        inside = []
        for _ in range(max(4, args.rounds // 2)):
            started = time.perf_counter()
            usage.summarise(usage.read_records(big), "module", int(time.time()) - 30 * 86400)
            inside.append(time.perf_counter() - started)
        rows.append(("hpcstack modules usage, 100,000 records (median)",
                     f"{med(took['usage']):.2f} s the whole command ({med(inside):.2f} s "
                     f"reading and summing; `hpcstack version` {med(took['version']):.2f} s)",
                     "-", "target < 1 s"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lmod_version = re.sub(r"\s+", " ", subprocess.run([lmod_cmd, "--version"], capture_output=True,
                          text=True, check=False).stderr.strip())[:60]
    print(f"\ncontainer modules, N={n} modules x 3 commands, runtime charliecloud, {lmod_version}")
    widths = [max(len(r[i]) for r in [("figure", "hpcstack", "center style (reference)",
                                       "quoted reference"), *rows]) for i in range(4)]
    header = ("figure", "hpcstack", "center style (reference)", "quoted reference")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
