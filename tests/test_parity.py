"""Parity with Apptainer: the same definitions built by ``hpcstack build`` and by
``apptainer build --fakeroot`` (the real Apptainer 1.4, as the same ordinary user),
then compared.  What Apptainer does is right.

The set (tests/data/parity/, plus the example definitions that build offline):
examples/hello.def (debootstrap, with the host's mirror as ``MirrorURL``), two stages
with ``%files from``, ``Bootstrap: docker`` from the local TLS registry, ``localimage``,
``#!/bin/bash`` scripts, ``%startscript``, tricky ``%environment`` quoting and
``$APPTAINER_ENVIRONMENT``.  Every localimage definition starts from Apptainer's own
hello image (``@BASE@``), so both builders start from the very same root and only the
sections under comparison differ.  The heavier examples (examples/modules/*.def,
examples/studio/*.def: minutes each with Apptainer) join the set with
``HPCSTACK_PARITY_EXAMPLES=all``.  ``HPCSTACK_PARITY_REUSE=1`` reuses the images of an
earlier run whose definitions are unchanged (only while working on the comparisons: a
builder change needs fresh images).

Compared, per definition: the ``/.singularity.d`` listing; the contents of the files made
from the definition (:data:`DERIVED`, comment lines aside: the rest is each tool's own
code, compared by behaviour); the
``apptainer inspect --all --json`` attributes; ``apptainer run|exec|test|run-help`` and
``env`` inside, for both images under Apptainer; and ``hpcstack run|exec`` (Charliecloud)
of Apptainer's image against Apptainer running it.  Normalised, and only that: dates,
versions, the image's own path and name, and the variables a runtime sets about itself
(:data:`RUNTIME_VARS`); the labels that name the build tool are listed in
:data:`TOOL_LABELS`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apptainer_defs import with_mirror
from conftest import REPO, Apptainer, User, need
from hpcstack.runtime.sif import read_sif
from test_build import put, registry  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data" / "parity"
EXAMPLES = ["examples/hello.def"]
HEAVY_EXAMPLES = ["examples/modules/mpi-hello-mpich.def", "examples/modules/gromacs.def",
                  "examples/modules/lammps.def", "examples/studio/jupyter.def",
                  "examples/studio/tensorboard.def"]
if os.environ.get("HPCSTACK_PARITY_EXAMPLES") == "all":
    EXAMPLES += HEAVY_EXAMPLES
LOCAL = ["multistage", "docker", "localimage", "shebang", "environment"]
NAMES = [Path(e).stem for e in EXAMPLES] + LOCAL

#: Labels whose value names the build tool or the moment; their presence is still compared.
TOOL_LABELS = ("org.label-schema.build-date", "org.label-schema.usage.singularity.version")
#: The builder's own version label: Apptainer's and hpcstack's name, one key for both.
VERSION_LABELS = ("org.label-schema.usage.apptainer.version",
                  "org.label-schema.usage.hpcstack.version")
#: What a runtime says about itself or the image file, not about the image's contents.
RUNTIME_VARS = ("APPTAINER_CONTAINER", "APPTAINER_NAME", "SINGULARITY_CONTAINER",
                "SINGULARITY_NAME", "OLDPWD", "_")
#: Files made from the definition, compared as text.  The others under /.singularity.d
#: (actions/*, env/01-base.sh, 9x-*.sh) are each tool's own code, compared by what they
#: do: the run/exec/test/env comparisons below.
DERIVED = ("Singularity", "runscript", "test", "startscript", "runscript.help",
           "env/90-environment.sh", "env/91-environment.sh")
#: Made by each tool's own code from an OCI image's config, not from the definition's text:
#: compared by behaviour (run, env) only.
GENERATED = {"docker": ("runscript",)}
DATES = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "<DATE>"),
    (re.compile(r"[A-Z][a-z]+day_\d+_[A-Z][a-z]+_\d{4}_\d+:\d\d:\d\d_[A-Z]+"), "<DATE>"),
]


@dataclass(frozen=True)
class Pair:
    """One definition built by both: ``ours`` (hpcstack) and ``theirs`` (Apptainer)."""

    name: str
    ours: Path
    theirs: Path

    def images(self) -> dict[str, Path]:
        return {"hpcstack": self.ours, "apptainer": self.theirs}


def normalise(text: str, images: list[Path] = ()) -> str:
    """Dates, the image's path and file name, the builders' versions, out of ``text``."""
    for sif in images:
        text = text.replace(str(sif), "<IMAGE>").replace(sif.name, "<NAME>")
    for pattern, repl in DATES:
        text = pattern.sub(repl, text)
    return text


def definition(name: str, base: Path | None, reg: str) -> str:
    if name in LOCAL:
        text = (DATA / f"{name}.def").read_text()
    else:
        text = with_mirror((REPO / next(e for e in EXAMPLES if Path(e).stem == name))
                           .read_text())
    return text.replace("@BASE@", str(base)).replace("@REGISTRY@", reg)


@pytest.fixture(scope="module")
def builds(user: User, apptainer: Apptainer, registry) -> Iterator[dict]:  # noqa: F811
    """Where each definition is built (lazily, once per session) and the shared base."""
    need("unsquashfs", "mmdebstrap", "ch-run")
    work = user.home / "work" / "parity"  # each definition's folder is emptied before its build
    user.run(["mkdir", "-p", str(work)], check=True)
    cert_env = {"SSL_CERT_DIR": f"{registry['certs']}:/etc/ssl/certs"}
    state: dict = {"work": work, "pairs": {}, "failed": {}, "base": None}

    def build(name: str) -> Pair:
        if name in state["failed"]:
            pytest.fail(state["failed"][name], pytrace=False)
        if name in state["pairs"]:
            return state["pairs"][name]
        base = state["base"]
        if base is None and name != "hello":
            base = build("hello").theirs
        d = work / name
        text = definition(name, base, registry["host"])
        pair = Pair(name, d / "hpcstack.sif", d / "apptainer.sif")
        reuse = (os.environ.get("HPCSTACK_PARITY_REUSE") == "1" and pair.ours.exists()
                 and pair.theirs.exists() and (d / f"{name}.def").read_text() == text)
        if not reuse:
            user.run(["rm", "-rf", str(d)], check=True)
            user.run(["mkdir", "-p", str(d)], check=True)
            put(user, d / f"{name}.def", text)
            ours = user.hpcstack("build", "--engine", "builtin", "--docker-cert-dir",
                                 str(registry["certs"]), "hpcstack.sif", f"{name}.def", cwd=d)
            theirs = apptainer.run(user, ["build", "--fakeroot", "apptainer.sif", f"{name}.def"],
                                   cwd=d, env=cert_env)
            for tool, proc in (("apptainer", theirs), ("hpcstack", ours)):
                if proc.returncode != 0:
                    state["failed"][name] = f"{tool} build {name}: {proc.stderr[-3000:]}"
                    pytest.fail(state["failed"][name], pytrace=False)
        state["pairs"][name] = pair
        if name == "hello":
            state["base"] = pair.theirs
        return pair

    state["build"] = build
    yield state


@pytest.fixture(scope="module", params=NAMES)
def pair(request, builds: dict) -> Pair:  # type: ignore[no-untyped-def]
    return builds["build"](request.param)


# --- /.singularity.d: listing and contents -----------------------------------------------


def extract_meta(sif: Path, into: Path) -> Path:
    """The image's /.singularity.d, unpacked (as the test's own user: reading is enough)."""
    offset = read_sif(sif).primary_partition().offset
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(into), "-o", str(offset), str(sif),
                    ".singularity.d"], check=True, capture_output=True)
    return into / ".singularity.d"


def meta_entries(root: Path) -> dict[str, str]:
    """relative path -> kind and mode ('d 755', 'f 755', 'l -> TARGET')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"l -> {os.readlink(path)}"
        else:
            out[rel] = f"{'d' if path.is_dir() else 'f'} {path.stat().st_mode & 0o7777:o}"
    return out


@pytest.fixture(scope="module")
def metas(pair: Pair) -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="parity-meta-") as tmp:
        yield {tool: extract_meta(sif, Path(tmp) / tool) for tool, sif in pair.images().items()}


def test_singularity_d_listing(metas: dict[str, Path]) -> None:
    assert meta_entries(metas["hpcstack"]) == meta_entries(metas["apptainer"])


def script_text(text: str) -> str:
    """A file's text without comment-only lines (the first line's ``#!`` stays), blank
    lines and trailing blanks: what the file does, not how each tool annotates it."""
    lines = text.splitlines()
    keep = [ln.rstrip() for i, ln in enumerate(lines)
            if ln.strip() and (not ln.lstrip().startswith("#") or (i == 0 and ln.startswith("#!")))]
    return "\n".join(keep)


def test_singularity_d_contents(pair: Pair, metas: dict[str, Path]) -> None:
    """The files made from the definition, in both images: same text, comments aside."""
    ours, theirs = metas["hpcstack"], metas["apptainer"]
    differ = {}
    for rel in (r for r in DERIVED if r not in GENERATED.get(pair.name, ())):
        a, b = ours / rel, theirs / rel
        if not (a.is_file() and b.is_file()):
            continue  # a missing file is test_singularity_d_listing's finding
        ta, tb = (script_text(normalise(f.read_text(errors="replace"))) for f in (a, b))
        if ta != tb:
            differ[rel] = {"hpcstack": ta, "apptainer": tb}
    assert differ == {}


# --- apptainer inspect ---------------------------------------------------------------


def attributes(apptainer: Apptainer, user: User, sif: Path) -> dict:
    out = apptainer.run(user, ["inspect", "--all", "--json", str(sif)], check=True).stdout
    attrs = json.loads(out)["data"]["attributes"]
    labels = attrs.get("labels", {})
    for key in TOOL_LABELS:
        if key in labels:
            labels[key] = "<TOOL>"
    for key in VERSION_LABELS:
        if labels.pop(key, None) is not None:
            labels["<builder>.version"] = "<TOOL>"
    # Scripts as test_singularity_d_contents reads them: comment lines are each tool's own.
    for key in ("runscript", "test", "startscript"):
        if key in attrs:
            attrs[key] = script_text(attrs[key])
    attrs["environment"] = {k: script_text(v) for k, v in attrs.get("environment", {}).items()}
    return json.loads(normalise(json.dumps(attrs, sort_keys=True)))


def test_inspect_attributes(pair: Pair, user: User, apptainer: Apptainer) -> None:
    """Every attribute equal; a GENERATED script's text is each tool's own code (its
    presence is compared here, its behaviour by the run/exec comparisons below)."""
    ours, theirs = (attributes(apptainer, user, s) for s in (pair.ours, pair.theirs))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        if key in GENERATED.get(pair.name, ()):
            assert bool(ours[key].strip()) == bool(theirs[key].strip()), key
            continue
        assert ours[key] == theirs[key], key


def test_inspect_metadata_type(pair: Pair, user: User, apptainer: Apptainer) -> None:
    docs = [json.loads(apptainer.run(user, ["inspect", "--json", str(s)], check=True).stdout)
            for s in (pair.ours, pair.theirs)]
    assert docs[0]["type"] == docs[1]["type"] == "container"


# --- under Apptainer: run, exec, test, run-help, env ------------------------------------

#: What a login gives every command (the Apptainer shim's ``runuser`` sets SHELL too).
LOGIN = {"SHELL": "/bin/bash"}
#: ``run`` arguments; an image without %runscript runs them as its command (docker CMD).
RUN_ARGS = {"docker": ["/bin/echo", "xa", "b c"]}
ACTIONS = {
    "run": ["run", "{sif}", "{args}"],
    "exec": ["exec", "{sif}", "sh", "-c", 'echo "$# [$*] $0"', "zero", "one", "two words"],
    "test": ["test", "{sif}"],
    "run-help": ["run-help", "{sif}"],
    "env": ["exec", "{sif}", "env"],
    "startscript": ["exec", "{sif}", "/.singularity.d/startscript"],
}


def outcome(proc: subprocess.CompletedProcess[str], sif: Path, env: bool = False) -> dict:
    """Exit status, stdout, stderr without Apptainer's own INFO/WARNING lines; normalised."""
    err = "\n".join(ln for ln in proc.stderr.splitlines()
                    if not ln.startswith(("INFO:", "WARNING:")))
    out = normalise(proc.stdout, [sif])
    if env:
        out = "\n".join(sorted(ln for ln in out.splitlines()
                               if ln.split("=", 1)[0] not in RUNTIME_VARS))
    return {"status": proc.returncode, "stdout": out, "stderr": normalise(err, [sif])}


def expand(argv: list[str], sif: Path, name: str) -> list[str]:
    out: list[str] = []
    for a in argv:
        out += RUN_ARGS.get(name, ["xa", "b c"]) if a == "{args}" else [a.format(sif=sif)]
    return out


@pytest.mark.parametrize("action", list(ACTIONS))
def test_under_apptainer(pair: Pair, user: User, apptainer: Apptainer, action: str) -> None:
    work = user.workdir(f"parity-run-{pair.name}")
    got = {}
    for tool, sif in pair.images().items():
        argv = expand(ACTIONS[action], sif, pair.name)
        got[tool] = outcome(apptainer.run(user, argv, cwd=work, env=LOGIN), sif,
                            env=action == "env")
    assert got["hpcstack"] == got["apptainer"]


# --- the other direction: hpcstack (Charliecloud) runs Apptainer's image -------------------

DIRECT = {
    "run": ["run", "{sif}", "{args}"],
    "exec": ["exec", "{sif}", "sh", "-c", 'echo "$# [$*]"', "x", "one", "two words"],
}
#: Variables of the image's own making, read back through both runtimes: what Apptainer
#: and Charliecloud (CH_RUNNING) set about themselves, and the caller's own, left out.
PROBE = ("env | grep -v -E '^(APPTAINER|SINGULARITY)_|^(OLDPWD|_|SHLVL|PWD|HOME|USER|"
         "LOGNAME|TERM|USER_PATH|LANG|TMPDIR|PS1|PROMPT_COMMAND|CH_RUNNING)=' | sort")


@pytest.mark.parametrize("action", [*DIRECT, "env"])
def test_hpcstack_runs_apptainers_image(pair: Pair, user: User, apptainer: Apptainer,
                                        action: str) -> None:
    """``hpcstack run|exec`` (Charliecloud, no Apptainer on PATH) of Apptainer's SIF
    prints what ``apptainer run|exec`` of it prints.  For ``env``, the variables both
    runtimes set about themselves and the caller's own (HOME, USER…) are left out."""
    sif = pair.theirs
    work = user.workdir(f"parity-direct-{pair.name}")
    argv = (["exec", str(sif), "sh", "-c", PROBE] if action == "env"
            else expand(DIRECT[action], sif, pair.name))
    ours = outcome(user.hpcstack(*argv, cwd=work, env=LOGIN), sif)
    theirs = outcome(apptainer.run(user, argv, cwd=work, env=LOGIN), sif)
    assert ours == theirs
