"""``hpcstack bench``: what containers cost on this site's own nodes, with the noise stated.

Runs HPC Challenge (Debian's ``hpcc``) bare, through the deployed module's wrapper
and through the runtime directly, interleaved in rotating order, and reports each
container/bare ratio as a median with a 95% bootstrap interval over rounds.

Pure parts: :mod:`~hpcstack.bench.hpcc` (input, parsing), :mod:`~hpcstack.bench.stats`,
:mod:`~hpcstack.bench.report`.  I/O: :mod:`~hpcstack.bench.image` (build, checksums,
deploy), :mod:`~hpcstack.bench.runner` (running), :mod:`~hpcstack.bench.slurm`,
:mod:`~hpcstack.bench.plot`.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcstack.bench import image, runner
from hpcstack.bench.hpcc import input_file, problem
from hpcstack.bench.report import document
from hpcstack.runtime import detect, select

__all__ = ["Options", "bench"]


@dataclass
class Options:
    """What ``hpcstack bench`` was asked for."""

    quick: bool = False
    rounds: int | None = None
    ranks: int = 1
    size: int | None = None
    runtime: str | None = None
    image: Path | None = None
    timeout: float = 3600.0
    partitions: list[str] = field(default_factory=list)

    def round_count(self) -> int:
        """10 rounds by default, 5 with --quick (the fewest that give a verdict)."""
        return self.rounds or (5 if self.quick else 10)


Say = Callable[[str], None]
Step = Callable[[str, int], None]


def prepare(opts: Options, say: Say, workdir: Path) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Image, checksums, module: everything before the first round; (meta, image, extra).

    Refuses, before deploying anything, unless the image and then the module's copy
    hold the host's very hpcc and BLAS.
    """
    host = image.host_checksums()
    packages = image.host_packages(host)
    sif = opts.image
    if sif is None:
        text = image.definition(packages)
        if not image.image_path(text).exists():
            say("Building the hpcc image with the host's packages (once; later runs reuse it)")
        sif, built = image.build_image(text)
        say(f"{'Built' if built else 'Reusing'} {sif}")
    rt = select(opts.runtime) if opts.runtime else detect()
    image.refuse_if_different(str(sif), host, image.image_checksums(rt, sif, workdir))
    deployed = image.deploy_module(sif, packages["hpcc"], rt.name)
    image.refuse_if_different(f"module {deployed.module}", host,
                              image.image_checksums(rt, deployed.image, workdir))
    meta = {"host": platform.node(), "hpcc_version": packages["hpcc"], "packages": packages,
            "image": str(sif), "runtime": rt.name, "module": deployed.module,
            "checksums": {k: v[0] for k, v in host.items()}}
    return meta, sif, {"runtime": rt, "deployed": deployed}


def bench(opts: Options, say: Say, step: Step) -> dict[str, Any]:
    """Run the benchmark here; the JSON document (see :func:`report.document`)."""
    prob = problem(opts.ranks, opts.quick, opts.size)
    workdir = Path(tempfile.mkdtemp(prefix="hpcstack-bench-"))
    try:
        meta, sif, extra = prepare(opts, say, workdir)
        (workdir / "hpccinf.txt").write_text(input_file(prob))
        cmds = runner.commands(image.host_hpcc(), extra["deployed"].wrapper, extra["runtime"],
                               sif, workdir, opts.ranks)
        started = time.time()
        done = runner.rounds(cmds, workdir, opts.round_count(), opts.timeout, step)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta |= {"ranks": opts.ranks, "quick": opts.quick, "problem": asdict(prob),
             "started": started, "seconds": time.time() - started,
             "commands": {mode: c.argv for mode, c in cmds.items()}}
    rounds = [{"round": runs[0].round, "order": [r.mode for r in runs],
               "results": {r.mode: {"seconds": r.seconds, "figures": r.figures}
                           for r in runs}} for runs in done]
    return document(meta, list(runner.MODES), rounds)
