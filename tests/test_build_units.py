"""Fast tests of the builder's pure parts: layout, mirrors, SIF assembly, engines, cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcstack.build import agents, engines, fakeroot, layout, pack
from hpcstack.build.builder import BuildOptions, definition_text
from hpcstack.build.cache import BuildCache, key_of
from hpcstack.deffile import parse
from hpcstack.errors import UserError

STAGE = parse(
    """Bootstrap: debootstrap
OSVersion: bookworm

%environment
    export A="1 2"

%runscript -c /bin/bash
    echo run "$@"

%labels
    Author me

%help
    Some help.
""",
    "x.def",
).final


def test_base_environment_has_actions_and_links() -> None:
    items = {i.path: i for i in layout.base_environment()}
    for action in layout.ACTIONS:
        f = items[f".singularity.d/actions/{action}"]
        assert f.mode == 0o755 and f.content.startswith("#!/bin/sh")
    assert items["singularity"].target == ".singularity.d/runscript"
    assert items["environment"].target == ".singularity.d/env/90-environment.sh"
    assert ".singularity.d/env/10-docker2singularity.sh" not in items


def test_docker_env_is_quoted_and_path_is_set() -> None:
    items = {
        i.path: i
        for i in layout.base_environment(
            [("PATH", "/opt/bin:/usr/bin"), ("MSG", 'say "$HOME" `x`')]
        )
    }
    text = items[".singularity.d/env/10-docker2singularity.sh"].content
    assert 'export PATH="/opt/bin:/usr/bin"' in text
    assert 'export MSG="${MSG:-say \\"\\$HOME\\" \\`x\\`}"' in text


def test_final_files() -> None:
    labels = layout.labels(
        STAGE, arch="amd64", build_date="2026-01-01T00:00:00Z", extra={"Extra": "from post"}
    )
    files = {f.path: f for f in layout.final_files(STAGE, deffile_text="DEF", label_map=labels)}
    assert files[".singularity.d/runscript"].content.startswith("#!/bin/bash\n")
    assert 'echo run "$@"' in files[".singularity.d/runscript"].content
    assert 'export A="1 2"' in files[".singularity.d/env/90-environment.sh"].content
    assert files[".singularity.d/runscript.help"].content == "Some help.\n"
    assert files[".singularity.d/Singularity"].content == "DEF"
    data = json.loads(files[".singularity.d/labels.json"].content)
    assert data["Author"] == "me" and data["Extra"] == "from post"
    assert data["org.label-schema.usage"] == "/.singularity.d/runscript.help"


def test_label_lines_from_post() -> None:
    assert layout.parse_label_lines("A b c\n# no\n\nB\n") == {"A": "b c", "B": ""}


def test_docker_runscript() -> None:
    assert layout.docker_runscript(None, None) == ""
    text = layout.docker_runscript(["/entry", "--x"], ["a b"])
    assert "set -- 'a b'" in text and text.rstrip().endswith('exec /entry --x "$@"')


def test_host_mirrors_follow_the_requested_suite() -> None:
    deb822 = """Types: deb
URIs: http://mirror.site/debian
Suites: bookworm bookworm-updates
Components: main contrib

Types: deb-src
URIs: http://mirror.site/debian
Suites: bookworm

Types: deb
URIs: http://mirror.site/debian-security
Suites: bookworm-security
Components: main
"""
    lines = agents.host_mirrors(
        [
            ("debian.sources", deb822),
            ("extra.list", "deb [arch=amd64] http://x/y bookworm main # c\n"),
        ],
        "trixie",
    )
    assert lines == [
        "deb http://mirror.site/debian trixie main contrib",
        "deb http://mirror.site/debian trixie-updates main contrib",
        "deb http://mirror.site/debian-security trixie-security main",
        "deb http://x/y trixie main",
    ]


def test_sif_assembly_commands(tmp_path: Path) -> None:
    argvs = pack.sif_argvs(
        tmp_path / "o.sif", tmp_path / "d", tmp_path / "l.json", tmp_path / "s.sqfs", "arm64"
    )
    assert argvs[0] == ["siftool", "new", str(tmp_path / "o.sif")]
    assert argvs[1][:6] == ["siftool", "add", "--groupid", "1", "--datatype", "1"]
    # Apptainer's sign/verify work group by group: every object joins group 1, as in its SIFs.
    assert all(a[a.index("--groupid") + 1] == "1" for a in argvs[1:])
    assert "--filename" in argvs[2] and "labels.json" in argvs[2]
    assert argvs[3][argvs[3].index("--partarch") + 1] == "4"
    assert argvs[3][argvs[3].index("--parttype") + 1] == "2"


def test_launch_script(tmp_path: Path) -> None:
    sif = tmp_path / "x.sif"
    sif.write_bytes(b"\0" * 64)
    pack.write_launch_script(sif)
    assert sif.read_bytes()[:32] == b"#!/usr/bin/env run-singularity\n\0"
    assert sif.stat().st_mode & 0o111


def test_engine_choice() -> None:
    assert engines.choose("auto", which=lambda _: None) == "builtin"
    assert engines.choose("auto", which=lambda _: "/usr/bin/apptainer") == "apptainer"
    with pytest.raises(UserError, match="not installed"):
        engines.choose("apptainer", which=lambda _: None)
    with pytest.raises(UserError, match="unknown engine"):
        engines.choose("docker")


def test_apptainer_engine_command_line() -> None:
    """Apptainer cannot be installed here: the delegation is tested by its command line."""
    opts = BuildOptions(sandbox=False, force=True, run_test=False, compression="gzip")
    assert engines.apptainer_argv("x.def", Path("o.sif"), opts) == [
        "apptainer",
        "build",
        "--fakeroot",
        "--force",
        "--notest",
        "--mksquashfs-args",
        "-comp gzip",
        "o.sif",
        "x.def",
    ]
    box = BuildOptions(sandbox=True)
    assert engines.apptainer_argv("x.def", Path("box"), box) == [
        "apptainer",
        "build",
        "--fakeroot",
        "--sandbox",
        "box",
        "x.def",
    ]


def test_uri_specs(tmp_path: Path) -> None:
    assert definition_text("docker://debian:12") == (
        "docker://debian:12",
        "Bootstrap: docker\nFrom: debian:12\n",
    )
    with pytest.raises(UserError, match="library:// images are not supported"):
        definition_text("library://alpine")
    with pytest.raises(UserError, match="no such definition file"):
        definition_text(str(tmp_path / "missing.def"))


def test_cache_fill_lookup_prune(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    key = key_of({"a": 1})
    assert key == key_of({"a": 1}) and key != key_of({"a": 2})
    assert cache.lookup("debootstrap", key) is None
    path = cache.fill(
        "debootstrap",
        key,
        "debootstrap bookworm",
        lambda tmp: (tmp / "rootfs.tar").write_bytes(b"x" * 10),
    )
    assert cache.lookup("debootstrap", key) == path
    [entry] = list(cache.entries())
    assert entry.source == "debootstrap bookworm" and entry.size > 10
    assert [e.key for e in cache.prune(older_than_days=1)] == []
    assert [e.key for e in cache.prune()] == [key]
    assert cache.lookup("debootstrap", key) is None


def test_failed_fill_leaves_no_entry(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)

    def boom(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.fill("oci", "k", "src", boom)
    assert cache.lookup("oci", "k") is None
    assert list((tmp_path / "build" / "oci").iterdir()) == []


def test_subid_ranges(tmp_path: Path) -> None:
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\n1001:300000:10\nbob:200000:65536\nbad line\n")
    assert fakeroot._subid_count(f, "alice", 1000) == 65536
    assert fakeroot._subid_count(f, "carol", 1001) == 10
    assert fakeroot._subid_count(f, "dave", 1002) == 0
    assert fakeroot._subid_count(tmp_path / "none", "alice", 1) == 0


def test_namespace_command_line() -> None:
    argv = fakeroot.namespace_argv(["true"])
    assert argv[0] == "unshare" and argv[-2:] == ["--", "true"]
    assert {"--mount", "--pid", "--fork", "--kill-child"} <= set(argv)


def test_mmdebstrap_writes_the_tree_in_place_as_fake_root() -> None:
    argv = agents.mmdebstrap_argv("bookworm", Path("/c/rootfs"), ["deb http://m bookworm main"],
                                  "amd64", ["hello", "gcc"], quiet=True)
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory"]
    assert argv[-3:] == ["bookworm", "/c/rootfs", "deb http://m bookworm main"]
    assert "--include=hello,gcc" in argv and "--quiet" in argv
    # what is set up for the bootstrap only is taken down again before it is cached
    assert '--customize-hook=rm "$1/etc/apt/apt.conf.d/99mmdebstrap"' in argv
    assert '--customize-hook=umount --lazy "$1/sys"' in argv
