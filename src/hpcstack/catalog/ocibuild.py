"""The ``oci`` route of ``catalog build``: Dockerfiles -> buildah -> the site registry -> SIF.

Bases first, each app ``FROM`` its base as pushed (by digest), so an app is
always built on exactly the base the registry holds.  A root image (Debian's
``debian:SUITE-slim``) is taken from the registry; where the registry has none,
it is made with mmdebstrap from the host's apt sources and pushed there (a
site without Docker Hub).  A state entry is written only after its push
succeeded, so a refused push leaves nothing recorded as done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hpcstack.catalog import hpccm_recipes, oci
from hpcstack.catalog.build import (
    OCI_STATE,
    Image,
    OciOptions,
    Report,
    _under,
    provenance,
    read_state,
    sha256,
)
from hpcstack.catalog.expand import AppImage, BaseImage
from hpcstack.catalog.model import DEBIAN_SUITES
from hpcstack.catalog.render import one_line, ref, render_image, root_image
from hpcstack.errors import UserError
from hpcstack.files import write_atomic

Say = Callable[[str], None]


def has_host(name: str) -> bool:
    """Does an image name start with a registry (``host:port/...``, ``a.b/...``)?"""
    first, slash, _ = name.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def root_name(base: BaseImage) -> str:
    return root_image(base) if base.flavour == "debian" else hpccm_recipes.build_image(base)


def _root(base: BaseImage, opts: OciOptions, store: oci.Store, work: Path,
          say: Say) -> tuple[str, str, str]:
    """(name in the Dockerfile, pinned reference, digest) of what a root base starts from."""
    from hpcstack.build.agents import host_mirrors, read_host_sources

    name = root_name(base)
    mirror = name if has_host(name) else f"{opts.registry}/{name}"
    digest = oci.remote_digest(mirror, opts.access)
    if digest is None:
        if base.flavour != "debian" or hpccm_recipes.pick(base.spec.image, base.arch):
            raise UserError(f"{base.where}.image: FROM {mirror}: not in the registry "
                            f"(push it there first)")
        suite = DEBIAN_SUITES[base.spec.os]
        say(f"{mirror}: not in the registry; making it with mmdebstrap ({suite})")
        local = oci.debian_root(store, suite, host_mirrors(read_host_sources(), suite), work)
        digest = oci.push(store, local, mirror, opts.access, work)
    return name, oci.pinned(mirror, digest), digest


def build_oci(images: list[Image], out: Path, opts: OciOptions, *, force: bool,
              run_test: bool, report: Report, say: Say) -> None:
    """Build and push what changed, bases first; then a SIF from each pushed app."""
    store = opts.store or oci.Store.default()
    work = out / "oci-work"
    work.mkdir(parents=True, exist_ok=True)
    state = read_state(out, OCI_STATE)
    digests: dict[str, str] = {}
    for image in images:
        below = _under(image)
        if below is not None:
            from_key, base_digest = below.tag, digests[below.tag]
            from_ref = oci.pinned(ref(below, opts.registry), base_digest)
        else:
            from_key, from_ref, base_digest = _root(image, opts, store, work, say)
        digests[image.tag] = _image(image, out, opts, store, state, (from_key, from_ref),
                                    base_digest, force, report, say)
    for image in images:
        if isinstance(image, AppImage):
            _sif_from_registry(image, out, opts, state, run_test, force, report, say)


def _image(image: Image, out: Path, opts: OciOptions, store: oci.Store, state: dict,
           base: tuple[str, str], base_digest: str, force: bool, report: Report,
           say: Say) -> str:
    """One image built and pushed unless unchanged; its digest in the registry."""
    plain = render_image(image, "docker", str(out), opts.registry).text
    key = sha256(f"{plain}\0{base_digest}")
    target = ref(image, opts.registry)
    entry = state.get(image.tag, {})
    if (not force and entry.get("key") == key and entry.get("ref") == target
            and oci.remote_digest(target, opts.access) == entry.get("digest")):
        report.unchanged.append(image.tag)
    else:
        labels = provenance(image, plain, ("hpcstack.base_digest", base_digest))
        text = render_image(image, "docker", str(out), opts.registry,
                            refs={base[0]: base[1]}, labels=labels).text
        dockerfile = out / "recipes" / f"{image.tag}.Dockerfile"
        write_atomic(dockerfile, text)
        say(f"building {image.tag} (oci, FROM {base[1]})")
        local = (f"{oci.LOCAL}/{oci.repository(target).rsplit('/', 1)[1]}:"
                 f"{image.tag.replace('+', '_')}")
        oci.build(store, dockerfile, local, opts.access)
        say(f"pushing {target}")
        digest = oci.push(store, local, target, opts.access, out / "oci-work")
        entry = {"key": key, "recipe": sha256(plain), "ref": target, "digest": digest,
                 "base": _under(image).tag if _under(image) else None,
                 "base_digest": base_digest, "pushed_at": time.time(),
                 "size": oci.remote_size(oci.pinned(target, digest), opts.access)}
        state[image.tag] = entry
        _save(out, state)
        report.pushed.append(image.tag)
    report.digests[image.tag] = oci.pinned(target, entry["digest"])
    report.registry_sizes[image.tag] = entry.get("size", 0)
    return entry["digest"]


def _save(out: Path, state: dict) -> None:
    write_atomic(out / OCI_STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def registry_definition(pinned: str, labels: dict[str, str], tests: list[str]) -> str:
    """The seed's route: a definition that bootstraps from the pushed image.

    The image's labels are written out as ``%labels`` too: Apptainer copies an
    OCI image's labels into the SIF by itself, hpcstack's builder does not.
    """
    lines = [f"Bootstrap: docker\nFrom: {pinned}\n\n%labels"]
    lines += [f"    {key} {one_line(value)}" for key, value in sorted(labels.items())]
    if tests:
        lines += ["", "%test", *(f"    {t}" for t in tests)]
    return "\n".join(lines) + "\n"


def _sif_from_registry(app: AppImage, out: Path, opts: OciOptions, state: dict,
                       run_test: bool, force: bool, report: Report, say: Say) -> None:
    from hpcstack.build.builder import BuildOptions, build
    from hpcstack.build.cache import BuildCache

    entry = state[app.tag]
    pinned = oci.pinned(entry["ref"], entry["digest"])
    text = registry_definition(pinned, oci.remote_labels(pinned, opts.access), app.spec.tests)
    sif, key = out / f"{app.tag}.oci.sif", sha256(text)
    done = entry.get("sif", {})
    if force or done.get("key") != key or not sif.exists():
        deffile = out / "recipes" / f"{app.tag}.oci.def"
        write_atomic(deffile, text)
        say(f"building {sif.name} from {pinned}")
        # The pulled image is used once (the SIF is kept, keyed): a cache of its own,
        # removed again, so that the user's build cache does not fill with every digest.
        pulls = out / "oci-work" / "pulls"
        try:
            result = build(str(deffile), sif, BuildOptions(
                force=True, run_test=run_test, quiet=True, cache=BuildCache(pulls),
                docker_cert_dir=opts.access.cert_dir,
                docker_insecure=not opts.access.tls_verify))
        finally:
            subprocess.run(["chmod", "-R", "u+rwX", str(pulls)], capture_output=True)
            shutil.rmtree(pulls, ignore_errors=True)
        entry["sif"] = done = {"key": key, "image": str(sif), "size": result.size}
        _save(out, state)
    report.from_registry[app.tag] = done["size"]
