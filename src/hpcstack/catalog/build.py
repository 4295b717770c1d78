"""Building the catalog's images (I/O): by two routes, ``sif`` and ``oci``.

``sif``: each image's definition through the builder (or as Slurm jobs).  Its
key is the SHA-256 of its rendered definition and its base's key, so a change
to a base rebuilds everything on it, and a change to one app rebuilds only
that app.  ``OUT/state.json`` records the key each image was built from; an
image whose key and file are unchanged is skipped.  Recipes go to
``OUT/recipes/TAG.def``, images to ``OUT/TAG.sif``.

``oci``: each Dockerfile through ``buildah`` (:mod:`.oci`), pushed to the
catalog's registry, bases first; an image's ``FROM`` is what was pushed for its
base, by digest.  Its key is its Dockerfile (by tag) and its base's digest;
``OUT/oci-state.json`` records key and pushed digest, and an image whose key is
unchanged and whose tag still names that digest in the registry is neither
built nor pushed again.  Then each app becomes ``OUT/TAG.oci.sif`` from the
pushed image (``Bootstrap: docker``, its labels kept, the catalog tests as
``%test``).  The Dockerfiles built go to ``OUT/recipes/TAG.Dockerfile``.

Both routes label what they make with its provenance (:func:`provenance`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hpcstack.catalog import oci
from hpcstack.catalog.expand import AppImage, BaseImage, Expanded
from hpcstack.catalog.render import ref, render_image
from hpcstack.errors import UserError
from hpcstack.files import write_atomic

Image = BaseImage | AppImage
FORMATS = ("sif", "oci", "both")
OCI_STATE = "oci-state.json"


@dataclass(frozen=True)
class Step:
    """One image to have: its recipe, its key, where it goes."""

    image: Image
    recipe: str
    key: str
    output: Path
    needs: str | None  # the tag of the base it is built on
    base_key: str = ""

    @property
    def tag(self) -> str:
        return self.image.tag


@dataclass
class Report:
    """What a build did, per route (``sif``: built/skipped; ``oci``: pushed/unchanged)."""

    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    pushed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    registry_sizes: dict[str, int] = field(default_factory=dict)
    from_registry: dict[str, int] = field(default_factory=dict)  # TAG.oci.sif sizes
    seconds: float = 0.0
    route_seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"built": self.built, "skipped": self.skipped, "sizes": self.sizes,
                "pushed": self.pushed, "unchanged": self.unchanged, "digests": self.digests,
                "registry_sizes": self.registry_sizes, "from_registry": self.from_registry,
                "seconds": round(self.seconds, 2),
                "route_seconds": {k: round(v, 2) for k, v in self.route_seconds.items()}}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def provenance(image: Image, recipe: str, base: tuple[str, str] | None) -> dict[str, str]:
    """Labels saying where an image came from: catalog entry, recipe, base, build date.

    ``base`` is (label, value): ``hpcstack.base_digest`` (oci: the pushed base's
    manifest digest) or ``hpcstack.base_key`` (sif: the key its base SIF was built from).
    """
    labels = {"hpcstack.catalog": image.where, "hpcstack.recipe": f"sha256:{sha256(recipe)}"}
    if base is not None:
        labels[base[0]] = base[1]
    labels["hpcstack.build_date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return labels


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
        key = sha256(f"{recipe}\0{base_key}")
        keys[image.tag] = key
        steps.append(Step(image, recipe, key, out / f"{image.tag}.sif",
                          below.tag if below else None, base_key))
    return steps


def read_state(out: Path, name: str = "state.json") -> dict[str, dict]:
    try:
        return json.loads((out / name).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{out / name}: unreadable ({exc})") from None


def up_to_date(step: Step, state: dict[str, dict]) -> bool:
    entry = state.get(step.tag)
    return bool(entry) and entry.get("key") == step.key and step.output.exists()


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@dataclass(frozen=True)
class OciOptions:
    """The ``oci`` route's settings: the catalog's registry, how to reach it, buildah's store."""

    registry: str
    access: oci.Registry = field(default_factory=oci.Registry)
    store: oci.Store | None = None


def build_catalog(expanded: Expanded, out: Path, *, only: list[str] | None = None,
                  arch: str | None = None, force: bool = False, run_test: bool = True,
                  slurm: bool = False, fmt: str = "sif", registry: OciOptions | None = None,
                  say: Callable[[str], None] = print) -> Report:
    """Build what changed, in order, by the routes ``fmt`` names; record each success at once."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    out = out.resolve()  # Slurm jobs run elsewhere: every path they get is absolute
    out.mkdir(parents=True, exist_ok=True)
    images = select(expanded, only, arch)
    report = Report()
    if fmt in ("oci", "both"):
        if registry is None:
            raise UserError("--format oci needs the catalog's registry")
        if slurm:
            raise UserError("--slurm builds the sif route only (--format sif)")
        from hpcstack.catalog.ocibuild import build_oci

        mark = time.perf_counter()
        build_oci(images, out, registry, force=force, run_test=run_test, report=report,
                  say=say)
        report.route_seconds["oci"] = time.perf_counter() - mark
    if fmt in ("sif", "both"):
        mark = time.perf_counter()
        _build_sif(images, out, force, run_test, slurm, report, say)
        report.route_seconds["sif"] = time.perf_counter() - mark
    report.seconds = time.perf_counter() - started
    return report


def _build_sif(images: list[Image], out: Path, force: bool, run_test: bool, slurm: bool,
               report: Report, say: Callable[[str], None]) -> None:
    steps = plan(images, out)
    state = read_state(out)
    todo = [s for s in steps if force or not up_to_date(s, state)]
    report.skipped += [s.tag for s in steps if s not in todo]
    for s in todo:  # what is built, with its provenance (the key is of the recipe alone)
        base = ("hpcstack.base_key", s.base_key) if s.needs else None
        labelled = render_image(s.image, "def", str(out),
                                labels=provenance(s.image, s.recipe, base)).text
        write_atomic(out / "recipes" / f"{s.tag}.def", labelled)
    if slurm:
        _slurm(todo, out, run_test, state, report, say)
    for step in [] if slurm else todo:
        say(f"building {step.tag}")
        size = _local(step, out, run_test)
        _record(out, state, step, size, report)


def _record(out: Path, state: dict[str, dict], step: Step, size: int, report: Report) -> None:
    state[step.tag] = {"key": step.key, "image": str(step.output), "size": size,
                       "built_at": time.time(), "base": step.needs,
                       "recipe": sha256(step.recipe), "base_key": step.base_key}
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


# --- what is built, pushed, stale (catalog list) ----------------------------------------


def sif_status(images: list[Image], out: Path) -> dict[str, str]:
    """Per tag: ``built``, ``not built`` or ``stale: recipe changed`` / ``base changed``."""
    state, status = read_state(out), {}
    for step in plan(images, out.resolve()):
        entry = state.get(step.tag)
        if not entry or not Path(entry.get("image", step.output)).exists():
            status[step.tag] = "not built"
        elif entry.get("key") == step.key:
            status[step.tag] = "built"
        elif entry.get("recipe") not in (None, sha256(step.recipe)):
            status[step.tag] = "stale: recipe changed"
        else:
            status[step.tag] = ("stale: base changed" if entry.get("recipe") else
                                "stale: recipe or base changed")
    return status


def oci_status(images: list[Image], out: Path, registry: str) -> dict[str, str]:
    """Per tag, from ``oci-state.json`` (no registry is asked): ``pushed`` or why not."""
    state, status = read_state(out, OCI_STATE), {}
    for image in images:
        entry, below = state.get(image.tag), _under(image)
        recipe = sha256(render_image(image, "docker", str(out), registry).text)
        if not entry or entry.get("ref") != ref(image, registry):
            status[image.tag] = "not pushed"
        elif entry.get("recipe") != recipe:
            status[image.tag] = "stale: recipe changed"
        elif below is not None and (status.get(below.tag) != "pushed" or entry.get(
                "base_digest") != state.get(below.tag, {}).get("digest")):
            status[image.tag] = "stale: base changed"
        else:
            status[image.tag] = "pushed"
    return status
