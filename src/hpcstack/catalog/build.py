"""Building the catalog's images (I/O): through the builder, or as Slurm jobs.

Each image's key is the SHA-256 of its rendered definition file and its
base's key, so a change to a base rebuilds everything on it, and a change to
one app rebuilds only that app.  ``OUT/state.json`` records the key each
image was built from; an image whose key and file are unchanged is skipped.
Recipes go to ``OUT/recipes/TAG.def``, images to ``OUT/TAG.sif``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcstack.catalog.expand import AppImage, BaseImage, Expanded
from hpcstack.catalog.render import render_image
from hpcstack.errors import UserError
from hpcstack.files import write_atomic

Image = BaseImage | AppImage


@dataclass(frozen=True)
class Step:
    """One image to have: its recipe, its key, where it goes."""

    image: Image
    recipe: str
    key: str
    output: Path
    needs: str | None  # the tag of the base it is built on

    @property
    def tag(self) -> str:
        return self.image.tag


@dataclass
class Report:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _under(image: Image) -> BaseImage | None:
    return image.base if isinstance(image, AppImage) else image.parent


def select(expanded: Expanded, only: list[str] | None, arch: str | None) -> list[Image]:
    """Images named in ``only`` (name or tag; all when empty) for ``arch``, with their bases."""
    images = [i for i in expanded.images() if arch is None or i.arch == arch]
    if only:
        names = {getattr(i.spec, "name", ""): 0 for i in images} | {i.tag: 0 for i in images}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"--only {unknown[0]}: no such base, app or tag"
                            + (f" for {arch}" if arch else ""))
        images = [i for i in images if i.tag in only or i.spec.name in only]
    wanted: dict[str, Image] = {}
    for image in images:
        below = _under(image)
        while below is not None:  # a base before what is built on it
            wanted.setdefault(below.tag, below)
            below = below.parent
        wanted.setdefault(image.tag, image)
    order = [i.tag for i in expanded.images()]
    return sorted(wanted.values(), key=lambda i: order.index(i.tag))


def plan(images: list[Image], out: Path) -> list[Step]:
    """Recipes and keys, bases first (their keys go into what is built on them)."""
    keys: dict[str, str] = {}
    steps = []
    for image in images:
        recipe = render_image(image, "def", str(out)).text
        below = _under(image)
        base_key = keys.get(below.tag, "") if below else ""
        key = hashlib.sha256(f"{recipe}\0{base_key}".encode()).hexdigest()
        keys[image.tag] = key
        steps.append(Step(image, recipe, key, out / f"{image.tag}.sif",
                          below.tag if below else None))
    return steps


def read_state(out: Path) -> dict[str, dict]:
    try:
        return json.loads((out / "state.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{out / 'state.json'}: unreadable ({exc})") from None


def up_to_date(step: Step, state: dict[str, dict]) -> bool:
    entry = state.get(step.tag)
    return bool(entry) and entry.get("key") == step.key and step.output.exists()


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def build_catalog(expanded: Expanded, out: Path, *, only: list[str] | None = None,
                  arch: str | None = None, force: bool = False, run_test: bool = True,
                  slurm: bool = False, say: Callable[[str], None] = print) -> Report:
    """Build what changed, in order; record each success at once (an abort keeps them)."""
    started = time.perf_counter()
    out = out.resolve()  # Slurm jobs run elsewhere: every path they get is absolute
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(select(expanded, only, arch), out)
    state = read_state(out)
    todo = [s for s in steps if force or not up_to_date(s, state)]
    report = Report(skipped=[s.tag for s in steps if s not in todo])
    for s in steps:
        write_atomic(out / "recipes" / f"{s.tag}.def", s.recipe)
    if slurm:
        _slurm(todo, out, run_test, state, report, say)
    for step in [] if slurm else todo:
        say(f"building {step.tag}")
        size = _local(step, out, run_test)
        _record(out, state, step, size, report)
    report.seconds = time.perf_counter() - started
    return report


def _record(out: Path, state: dict[str, dict], step: Step, size: int, report: Report) -> None:
    state[step.tag] = {"key": step.key, "image": str(step.output), "size": size,
                       "built_at": time.time(), "base": step.needs}
    write_atomic(out / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")
    report.built.append(step.tag)
    report.sizes[step.tag] = size


def _local(step: Step, out: Path, run_test: bool) -> int:
    from hpcstack.build.builder import BuildOptions, build

    result = build(str(out / "recipes" / f"{step.tag}.def"), step.output,
                   BuildOptions(force=True, run_test=run_test, quiet=True))
    return result.size


def _slurm(todo: list[Step], out: Path, run_test: bool, state: dict[str, dict],
           report: Report, say: Callable[[str], None]) -> None:
    """One Slurm job per image, each depending on its base's job; then wait for all.

    Each job is the build job (:mod:`hpcstack.build.job`) on a typed request: the
    recipe parsed here, once, and a typed result read back.
    """
    from hpcstack.build.builder import load_definition
    from hpcstack.build.cache import cache_root
    from hpcstack.build.job import BuildRequest, job_argv, read_result, write_request
    from hpcstack.scheduler import submit, wait

    jobs: dict[str, int] = {}
    requests: dict[str, BuildRequest] = {}
    for step in todo:
        deffile = out / "recipes" / f"{step.tag}.def"
        text = deffile.read_text()
        base = out / "jobs" / step.tag
        request = BuildRequest(name=deffile.name, definition=load_definition(str(deffile), text),
                               text=text, output=str(step.output), run_test=run_test,
                               cwd=str(deffile.parent), workdir=f"{base}.work",
                               cache_dir=str(cache_root()), result=f"{base}.result.json")
        path = write_request(request, Path(f"{base}.json"))
        script = out / "jobs" / f"{step.tag}.sh"
        write_atomic(script, "#!/bin/sh\n#SBATCH --job-name=catalog\nexec "
                     + shlex.join(job_argv(path)) + "\n")
        args = [f"--output={base}.log"]
        if step.needs in jobs:
            args.append(f"--dependency=afterok:{jobs[step.needs]}")
        jobs[step.tag], requests[step.tag] = submit(script, cwd=out, args=args), request
        say(f"submitted {step.tag} as job {jobs[step.tag]}")
    for step in todo:
        wait(jobs[step.tag], timeout=24 * 3600)
        result = read_result(requests[step.tag].result)
        if result is None or result.error is not None:
            why = result.error.exception() if result and result.error else "no result"
            raise UserError(f"{step.tag}: build job {jobs[step.tag]} failed: {why} "
                            f"(see {out / 'jobs' / step.tag}.log)")
        _record(out, state, step, result.size, report)
