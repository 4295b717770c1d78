"""The catalog's OCI route end to end, as the unprivileged user: buildah, a TLS registry, SIFs.

``examples/catalog/debian.yaml`` (with ``test_catalog_debian``'s probe app) is
built with ``--format both`` into the same directory ``test_catalog_debian``
uses, so the definition route finds its SIFs there; the Dockerfiles are built
by rootless buildah (its layer cache under the user's home makes a later
session quick), pushed to the local ``docker-registry`` of ``test_build``, and
made into SIFs again from the registry.  A small catalog of its own (one base,
two tiny apps) shows what is rebuilt when one app or the base changes, and the
bad inputs: a registry that refuses pushes (a second ``docker-registry`` in
read-only mode), a ``FROM`` the registry does not have, labels with quotes and
line breaks.  Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import User, need
from hpcstack.catalog import expand, parse_catalog
from hpcstack.catalog.render import app_labels
from hpcstack.modules.image import inspect
from test_build import registry  # noqa: F401  (the fixture)
from test_catalog_debian import APPS, BASE, EXAMPLE, PROBE, put

pytestmark = pytest.mark.integration

PROVENANCE = ("hpcstack.catalog", "hpcstack.recipe", "hpcstack.build_date")
TINY = """
registry: localhost/unused
bases:
  - {name: tiny, flavour: debian, os: debian12, arch: [x86_64], compiler: null}
apps:
  - name: hello-a
    version: "1"
    base: tiny
    multistage: false
    description: DESCRIPTION
    build:
      - mkdir -p {{ prefix }}/bin
      - printf '#!/bin/sh\\necho A\\n' > {{ prefix }}/bin/hello-a
      - chmod 755 {{ prefix }}/bin/hello-a
    tests: [hello-a | grep -qx A]
  - name: hello-b
    version: "1"
    base: tiny
    multistage: false
    build:
      - mkdir -p {{ prefix }}/bin
      - printf '#!/bin/sh\\necho B-NONCE\\n' > {{ prefix }}/bin/hello-b
      - chmod 755 {{ prefix }}/bin/hello-b
    tests: [hello-b | grep -q B]
"""
DESCRIPTION = 'He said "hi", then \'bye\' to $HOME and C:\\path\\\nsecond line'
TINY_BASE = "debian12.x86_64"
TINY_APPS = ["hello-a-1-x86_64", "hello-b-1-x86_64"]


def tiny(nonce: str = "1", base_packages: str = "") -> str:
    text = TINY.replace("DESCRIPTION", json.dumps(DESCRIPTION)).replace("NONCE", nonce)
    if base_packages:
        text = text.replace("compiler: null}", f"compiler: null, runtime_packages: "
                            f"[{base_packages}]}}")
    return text


def oci_build(user: User, work: Path, catalog: str, reg: dict, out: str = "images",
              fmt: str = "oci", host: str | None = None, check: bool = True,
              ) -> subprocess.CompletedProcess[str]:
    proc = user.hpcstack("catalog", "build", "-c", catalog, "-o", out, "--format", fmt,
                         "--registry", f"{host or reg['host']}/hpcstack",
                         "--cert-dir", str(reg["certs"]), "--json", cwd=work,
                         timeout=3600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def remote(user: User, reg: dict, ref: str) -> dict:
    """``skopeo inspect`` of a pushed image, as the user."""
    proc = user.run(["skopeo", "inspect", f"--cert-dir={reg['certs']}",
                     f"docker://{ref}"], check=True)
    return json.loads(proc.stdout)


def listing(user: User, work: Path, catalog: str, reg: dict) -> dict[str, dict]:
    proc = user.hpcstack("catalog", "list", "-c", catalog, "-o", "images", "--registry",
                         f"{reg['host']}/hpcstack", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return {row["tag"]: row for row in json.loads(proc.stdout)}


@pytest.fixture(scope="module")
def debian(user: User, registry: dict) -> tuple[Path, dict]:  # noqa: F811
    """debian.yaml through ``--format both``: (work dir, the build's report)."""
    need("buildah", "skopeo", "mmdebstrap", "mksquashfs", "siftool")
    work = user.home / "work" / "catalog-debian"
    user.run(["mkdir", "-p", str(work)], check=True)
    put(user, work / "oci.yaml", EXAMPLE.read_text() + PROBE.format(nonce="fixed"))
    return work, json.loads(oci_build(user, work, "oci.yaml", registry, fmt="both").stdout)


# --- acceptance: --format both, the registry, FROM by digest, SIFs from both routes ---------


def test_both_routes_push_and_build_everything(user: User, registry: dict,  # noqa: F811
                                               debian: tuple[Path, dict]) -> None:
    work, report = debian
    tags = {BASE, *APPS}
    assert set(report["pushed"]) | set(report["unchanged"]) == tags
    assert set(report["built"]) | set(report["skipped"]) == tags
    assert set(report["from_registry"]) == set(APPS)
    for tag in tags:
        pinned = report["digests"][tag]
        assert pinned.startswith(f"{registry['host']}/hpcstack/")
        assert remote(user, registry, pinned)["Labels"]["hpcstack.tag"] == tag
        assert (work / "images" / f"{tag}.sif").is_file()
    for app in APPS:
        assert (work / "images" / f"{app}.oci.sif").is_file()
    sizes = {t: report["registry_sizes"][t] / 2**20 for t in sorted(tags)}
    print("\nregistry sizes (MiB): " + ", ".join(f"{t} {s:.1f}" for t, s in sizes.items()))


def test_apps_are_from_the_pushed_base_by_digest(user: User, registry: dict,  # noqa: F811
                                                 debian: tuple[Path, dict]) -> None:
    work, report = debian
    base = report["digests"][BASE]
    base_labels = remote(user, registry, base)["Labels"]
    root = f"{registry['host']}/hpcstack/debian@{base_labels['hpcstack.base_digest']}"
    assert (work / "images" / "recipes" / f"{BASE}.Dockerfile").read_text().splitlines()[1] \
        == f"FROM {root}"
    for app in APPS:
        dockerfile = (work / "images" / "recipes" / f"{app}.Dockerfile").read_text()
        froms = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
        assert froms and set(froms) == {base}, froms
        labels = remote(user, registry, report["digests"][app])["Labels"]
        assert labels["hpcstack.base_digest"] == base.rsplit("@", 1)[1]
        assert all(key in labels for key in PROVENANCE)


def test_sifs_of_both_routes_pass_the_tests_and_carry_the_same_labels(
        user: User, debian: tuple[Path, dict]) -> None:
    """The catalog tests ran as %test in both builds; here they run again through the runtime."""
    need("ch-run")
    work, _ = debian
    catalog = parse_catalog((work / "oci.yaml").read_text())
    apps = {a.tag: a for a in expand(catalog).apps}
    for tag in ("mpi-hello-1.0-x86_64", "gromacs-2022.5-x86_64"):
        own = app_labels(apps[tag])
        for sif in (work / "images" / f"{tag}.sif", work / "images" / f"{tag}.oci.sif"):
            for test in apps[tag].spec.tests:
                proc = user.hpcstack("exec", str(sif), "sh", "-c", test, cwd=work)
                assert proc.returncode == 0, f"{sif.name}: {test}: {proc.stderr[-2000:]}"
            labels = inspect(sif, listing=False).labels
            assert {k: labels.get(k) for k in own} == own, sif.name
            assert all(key in labels for key in PROVENANCE), sif.name
    proc = user.hpcstack("exec", str(work / "images" / "mpi-hello-1.0-x86_64.oci.sif"),
                         "mpi-hello")
    assert proc.stdout.strip() == "hello from rank 0 of 1"


def test_list_shows_built_and_pushed(user: User, registry: dict,  # noqa: F811
                                     debian: tuple[Path, dict]) -> None:
    work, _ = debian
    rows = listing(user, work, "oci.yaml", registry)
    assert {t: (r["sif"], r["oci"]) for t, r in rows.items()} == {
        t: ("built", "pushed") for t in [BASE, *APPS]}


def test_second_oci_build_does_no_work(user: User, registry: dict,  # noqa: F811
                                       debian: tuple[Path, dict]) -> None:
    work, _ = debian
    again = json.loads(oci_build(user, work, "oci.yaml", registry, fmt="both").stdout)
    assert again["pushed"] == [] and again["built"] == []
    assert sorted(again["unchanged"]) == sorted([BASE, *APPS])


# --- incremental: one app, then the base ------------------------------------------------


@pytest.fixture(scope="module")
def small(user: User, registry: dict) -> tuple[Path, dict]:  # noqa: F811
    need("buildah", "skopeo")
    work = user.workdir("catalog-oci-small")
    put(user, work / "small.yaml", tiny())
    return work, json.loads(oci_build(user, work, "small.yaml", registry).stdout)


def test_labels_with_quotes_and_line_breaks_survive(user: User, registry: dict,  # noqa: F811
                                                    small: tuple[Path, dict]) -> None:
    """Quotes, ``$``, backslashes through buildah: the image's labels are the catalog's."""
    work, report = small
    app = next(a for a in expand(parse_catalog(tiny())).apps if a.tag == TINY_APPS[0])
    own = app_labels(app)
    assert own["Description"] == DESCRIPTION.replace("\n", " ")
    labels = remote(user, registry, report["digests"][app.tag])["Labels"]
    assert {k: labels.get(k) for k in own} == own
    sif = inspect(work / "images" / f"{app.tag}.oci.sif", listing=False).labels
    assert {k: sif.get(k) for k in own} == own


def test_changing_one_app_rebuilds_and_pushes_only_it(user: User, registry: dict,  # noqa: F811
                                                      small: tuple[Path, dict]) -> None:
    work, first = small
    put(user, work / "small.yaml", tiny(nonce="2"))
    rows = listing(user, work, "small.yaml", registry)
    assert rows[TINY_APPS[1]]["oci"] == "stale: recipe changed"
    assert rows[TINY_APPS[0]]["oci"] == rows[TINY_BASE]["oci"] == "pushed"
    report = json.loads(oci_build(user, work, "small.yaml", registry).stdout)
    assert report["pushed"] == [TINY_APPS[1]]
    assert sorted(report["unchanged"]) == sorted([TINY_BASE, TINY_APPS[0]])
    assert report["digests"][TINY_APPS[1]] != first["digests"][TINY_APPS[1]]


def test_changing_the_base_rebuilds_and_pushes_it_and_its_apps(
        user: User, registry: dict, small: tuple[Path, dict]) -> None:  # noqa: F811
    work, _ = small
    put(user, work / "small.yaml", tiny(nonce="2", base_packages="hello"))
    rows = listing(user, work, "small.yaml", registry)
    assert rows[TINY_BASE]["oci"] == "stale: recipe changed"
    assert {rows[t]["oci"] for t in TINY_APPS} == {"stale: base changed"}
    report = json.loads(oci_build(user, work, "small.yaml", registry).stdout)
    assert report["pushed"] == [TINY_BASE, *TINY_APPS]
    base = report["digests"][TINY_BASE]
    for app in TINY_APPS:
        labels = remote(user, registry, report["digests"][app])["Labels"]
        assert labels["hpcstack.base_digest"] == base.rsplit("@", 1)[1]


# --- bad input ------------------------------------------------------------------------


def test_from_missing_from_the_registry(user: User, registry: dict) -> None:  # noqa: F811
    need("buildah", "skopeo")
    work = user.workdir("catalog-oci-nofrom")
    put(user, work / "c.yaml", tiny().replace("compiler: null}",
                                              "compiler: null, image: 'nosuch/debian:1'}"))
    proc = oci_build(user, work, "c.yaml", registry, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert (f"c.yaml: bases[0].image: FROM {registry['host']}/hpcstack/nosuch/debian:1: "
            "not in the registry") in proc.stderr
    assert not (work / "images" / "oci-state.json").exists()


@pytest.fixture
def readonly(user: User, registry: dict, tmp_path: Path):  # noqa: F811
    """A second docker-registry holding the Debian root, in read-only mode: pushes refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    certs = Path(registry["certs"])

    def serve(readonly: bool) -> subprocess.Popen:
        mode = "maintenance: {readonly: {enabled: true}}, " if readonly else ""
        (tmp_path / "config.yml").write_text(f"""version: 0.1
log: {{level: error}}
storage: {{{mode}filesystem: {{rootdirectory: {tmp_path / "data"}}}}}
http:
  addr: 127.0.0.1:{port}
  tls: {{certificate: {certs / "ca.crt"}, key: {certs / "key.pem"}}}
""")
        server = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return server
            subprocess.run(["sleep", "0.1"])
        raise AssertionError("docker-registry did not start")

    writable = serve(False)
    try:
        user.run(["skopeo", "copy", "--quiet", f"--src-cert-dir={certs}",
                  f"--dest-cert-dir={certs}",
                  f"docker://{registry['host']}/hpcstack/debian:bookworm-slim",
                  f"docker://127.0.0.1:{port}/hpcstack/debian:bookworm-slim"], check=True)
    finally:
        writable.terminate()
        writable.wait()
    server = serve(True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def test_registry_refusing_the_push(user: User, registry: dict, readonly: str,  # noqa: F811
                                    small: tuple[Path, dict]) -> None:
    """The build fails with the registry's own words; nothing is recorded as pushed."""
    work = user.workdir("catalog-oci-refused")
    put(user, work / "small.yaml", tiny(nonce=uuid.uuid4().hex[:8]))
    proc = oci_build(user, work, "small.yaml", registry, host=readonly, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"push to {readonly}/hpcstack/hpc-base:{TINY_BASE} failed: " in last, last
    assert "405" in last and "method not allowed" in last.lower(), last  # its read-only answer
    state = work / "images" / "oci-state.json"
    assert not state.exists() or json.loads(state.read_text()) == {}
    assert os.path.exists(work / "images" / "recipes" / f"{TINY_BASE}.Dockerfile")
