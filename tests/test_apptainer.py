"""hpcstack's Apptainer engine and runtime, run for real as the ordinary test user.

Apptainer is Debian sid's 1.4 behind the ``apptainer`` fixture's shim (tests/conftest.py):
with the shim's folder on ``PATH``, hpcstack finds ``apptainer`` as it would on a site
that installed it.  ``apptainer build --fakeroot`` maps the user's subordinate ID
ranges from ``/etc/subuid`` and ``/etc/subgid``, as on any site.  The command-line unit
tests (tests/test_runtime.py, tests/test_build_units.py) say what is spelled; these
say that Apptainer does what was meant.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apptainer_defs import host_mirror, owner_of, with_mirror
from conftest import Apptainer, User, need
from test_build import HELLO_DEF, hello, put, registry  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

BUILT_BY_APPTAINER = "INFO:    Build complete:"


def subids(user: User, path: str) -> list[str]:
    return [ln for ln in Path(path).read_text().splitlines() if ln.startswith(f"{user.name}:")]


@pytest.fixture(scope="module")
def engine_hello(user: User, apptainer: Apptainer) -> tuple[Path, str]:
    """examples/hello.def with a MirrorURL, built by ``hpcstack build --engine apptainer``."""
    need("unsquashfs")
    work = user.workdir("appt-engine")
    put(user, work / "hello.def", with_mirror(HELLO_DEF.read_text()))
    proc = user.hpcstack("build", "--engine", "apptainer", "hello.sif", "hello.def", cwd=work,
                         env={"PATH": apptainer.path}, check=True)
    return work / "hello.sif", proc.stderr


def test_engine_apptainer_builds_with_the_users_subordinate_ids(
        user: User, apptainer: Apptainer, engine_hello: tuple[Path, str]) -> None:
    sif, log = engine_hello
    assert BUILT_BY_APPTAINER in log and "Running testscript" in log, log[-2000:]
    assert subids(user, "/etc/subuid") and subids(user, "/etc/subgid")
    # apt's sandbox user: only the subordinate range gives fake root a uid 42 to chown to.
    assert owner_of(sif, "var/cache/apt/archives/partial") == "42/0"
    assert owner_of(sif, "usr/bin/hello") == "0/0"
    labels = json.loads(apptainer.run(user, ["inspect", "--json", str(sif)], check=True)
                        .stdout)["data"]["attributes"]["labels"]
    assert labels["org.label-schema.usage.singularity.deffile.mirrorurl"] == host_mirror()
    assert labels["Author"] == "hpcstack"
    # And our runtime (Charliecloud, no Apptainer on PATH) runs Apptainer's image.
    assert user.hpcstack("run", str(sif), check=True).stdout.strip() == "Hello, world!"


def test_engine_auto_picks_apptainer_on_path(user: User, apptainer: Apptainer,
                                             engine_hello: tuple[Path, str]) -> None:
    work = user.workdir("appt-auto")
    put(user, work / "local.def", f"Bootstrap: localimage\nFrom: {engine_hello[0]}\n\n"
        "%post\n    echo auto > /engine\n")
    proc = user.hpcstack("build", "local.sif", "local.def", cwd=work,
                         env={"PATH": apptainer.path}, check=True)
    assert BUILT_BY_APPTAINER in proc.stderr, proc.stderr[-2000:]
    out = apptainer.run(user, ["exec", str(work / "local.sif"), "cat", "/engine"], check=True)
    assert out.stdout == "auto\n"
    # The same command without Apptainer on PATH: hpcstack's own builder.
    plain = user.hpcstack("build", "plain.sif", "local.def", cwd=work, check=True)
    assert BUILT_BY_APPTAINER not in plain.stderr


def test_engine_apptainer_existing_output_is_refused_before_apptainer(
        user: User, apptainer: Apptainer, engine_hello: tuple[Path, str]) -> None:
    sif = engine_hello[0]
    proc = user.hpcstack("build", "--engine", "apptainer", str(sif), str(sif.parent / "hello.def"),
                         env={"PATH": apptainer.path})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"hpcstack: error: {sif}: already exists; use --force to " \
        "overwrite it"


def test_engine_apptainer_failure_is_one_line(user: User, apptainer: Apptainer) -> None:
    work = user.workdir("appt-engine-fail")
    put(user, work / "bad.def", "Bootstrap: scratch\n\n%post\n    exit 3\n")
    proc = user.hpcstack("build", "--engine", "apptainer", "bad.sif", "bad.def", cwd=work,
                         env={"PATH": apptainer.path})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "hpcstack: error: apptainer build failed with exit status 255")
    assert "Traceback" not in proc.stderr and not (work / "bad.sif").exists()


def test_engine_apptainer_docker_cert_dir(user: User, apptainer: Apptainer, registry) -> None:  # noqa: F811
    """``--docker-cert-dir`` reaches Apptainer (as ``SSL_CERT_DIR``): the self-signed
    registry is trusted, and without it the pull is refused."""
    work = user.workdir("appt-engine-docker")
    put(user, work / "d.def", f"Bootstrap: docker\nFrom: {registry['host']}/debian:bookworm\n\n"
        "%post\n    echo pulled > /pulled\n")
    refused = user.hpcstack("build", "--engine", "apptainer", "d.sif", "d.def", cwd=work,
                            env={"PATH": apptainer.path})
    assert refused.returncode == 1 and "certificate" in refused.stderr, refused.stderr[-2000:]
    assert not (work / "d.sif").exists()
    user.hpcstack("build", "--engine", "apptainer", "--docker-cert-dir", str(registry["certs"]),
                  "d.sif", "d.def", cwd=work, env={"PATH": apptainer.path}, check=True)
    out = apptainer.run(user, ["exec", str(work / "d.sif"), "sh", "-c",
                               "cat /pulled; echo $FROM_IMAGE"], check=True)
    assert out.stdout.splitlines() == ["pulled", "debian-bookworm"]


# --- the apptainer runtime: hpcstack run/exec --runtime apptainer --------------------------


def test_runtime_apptainer_run_and_exec(user: User, apptainer: Apptainer, hello: Path) -> None:  # noqa: F811
    """hpcstack's own image (builtin engine) through ``--runtime apptainer``."""
    env = {"PATH": apptainer.path}
    run = user.hpcstack("run", "--runtime", "apptainer", str(hello), env=env, check=True)
    assert run.stdout.strip() == "Hello, world!"
    args = user.hpcstack("run", "--runtime", "apptainer", str(hello), "--greeting=Bonjour",
                         env=env, check=True)
    assert args.stdout.strip() == "Bonjour"
    work = user.workdir("appt-runtime")
    proc = user.hpcstack("exec", "--runtime", "apptainer", str(hello), "sh", "-c",
                         "echo $VAR; echo $BUILT_BY; echo $APPTAINER_COMMAND; pwd",
                         cwd=work, env=env, check=True)
    assert proc.stdout.splitlines() == ["hello from the container environment", "hpcstack",
                                        "exec", str(work)]
    status = user.hpcstack("exec", "--runtime", "apptainer", str(hello), "sh", "-c", "exit 7",
                           env=env)
    assert status.returncode == 7


def test_runtime_apptainer_binds(user: User, apptainer: Apptainer, hello: Path) -> None:  # noqa: F811
    data = user.workdir("appt-runtime-data")
    put(user, data / "f", "bound\n")
    env = {"PATH": apptainer.path}
    proc = user.hpcstack("exec", "--runtime", "apptainer", "-B", f"{data}:/mnt:ro", str(hello),
                         "sh", "-c", "cat /mnt/f; touch /mnt/g", env=env)
    assert proc.stdout == "bound\n" and proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert not (data / "g").exists()


def test_runtime_detected_is_apptainer_when_on_path(user: User, apptainer: Apptainer,
                                                    hello: Path) -> None:  # noqa: F811
    """No ``--runtime``: the first installed of apptainer, singularity, charliecloud."""
    # Apptainer's root is an overlay over its session directory; Charliecloud's is not.
    probe = ["sh", "-c", "grep -c /var/lib/apptainer/mnt/session /proc/self/mountinfo || true"]
    proc = user.hpcstack("exec", str(hello), *probe, env={"PATH": apptainer.path}, check=True)
    assert int(proc.stdout) >= 1
    plain = user.hpcstack("exec", str(hello), *probe, check=True)
    assert plain.stdout == "0\n"
