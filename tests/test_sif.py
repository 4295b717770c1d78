"""The SIF reader against files made by Sylabs' own ``siftool``, and against junk.

``siftool new`` + ``siftool add`` write real SIF files; ``siftool list``,
``info`` and ``header`` are the reference for what our reader must see.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import need
from hpcstack.errors import UserError
from hpcstack.runtime.sif import (
    LAUNCH_SCRIPT,
    DataType,
    FsType,
    PartType,
    is_sif,
    read_sif,
)

DEFFILE = "Bootstrap: debootstrap\nOSVersion: bookworm\n\n%runscript\n    echo hi\n"
LABELS = {"org.label-schema.name": "test", "MAINTAINER": "hpc@example.org"}
AT_HEADER_OR_TABLE = st.one_of(st.integers(0, 127), st.integers(4096, 4096 + 5 * 585 - 1))
TYPES = {
    "Def.FILE": DataType.DEFFILE,
    "JSON.Generic": DataType.GENERIC_JSON,
    "FS": DataType.PARTITION,
    "Generic/Raw": DataType.GENERIC,
}


def siftool(*args: str | Path) -> str:
    proc = subprocess.run(["siftool", *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout


def squashfs(tmp: Path, name: str, content: str) -> Path:
    tree = tmp / f"{name}-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text(content)
    out = tmp / f"{name}.sqfs"
    subprocess.run(["mksquashfs", tree, out, "-quiet", "-noappend", "-no-progress"], check=True)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SIF laid out as Apptainer builds one, plus a decoy system partition and a group."""
    need("siftool", "mksquashfs")
    tmp = tmp_path_factory.mktemp("sif")
    (tmp / "test.def").write_text(DEFFILE)
    (tmp / "labels.json").write_text(json.dumps(LABELS))
    (tmp / "blob").write_bytes(b"\x00\x01generic")
    other = squashfs(tmp, "other", "decoy\n")
    primary = squashfs(tmp, "primary", "primary\n")
    sif = tmp / "image.sif"
    siftool("new", sif)
    siftool("add", sif, tmp / "test.def", "--datatype", "1")
    siftool("add", sif, tmp / "labels.json", "--datatype", "6", "--filename", "labels.json")
    siftool(
        "add", sif, other, "--datatype", "4", "--parttype", "1", "--partfs", "1", "--partarch", "4"
    )
    siftool(
        "add",
        sif,
        primary,
        "--datatype",
        "4",
        "--parttype",
        "2",
        "--partfs",
        "1",
        "--partarch",
        "2",
    )
    siftool("add", sif, tmp / "blob", "--datatype", "7", "--groupid", "1", "--link", "3")
    return {"sif": sif, "primary": primary, "other": other, "dir": tmp}


def listing(sif: Path) -> list[dict[str, str]]:
    """``siftool list`` rows: id, group, link, start, end, type."""
    rows = []
    for line in siftool("list", sif).splitlines():
        m = re.match(r"(\d+)\s*\|(\S+)\s*\|(\S+)\s*\|(\d+)-(\d+)\s*\|(.+)$", line)
        if m:
            rows.append(
                dict(zip(("id", "group", "link", "start", "end", "type"), m.groups(), strict=True))
            )
    return rows


def fields(text: str) -> dict[str, str]:
    """``Key: value`` lines, as ``siftool info`` and ``siftool header`` print them."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def info(sif: Path, oid: int) -> dict[str, str]:
    return fields(siftool("info", str(oid), sif))


def test_header_matches_siftool(made: dict[str, Path]) -> None:
    image = read_sif(made["sif"])
    header = fields(siftool("header", made["sif"]))
    assert image.id == header["ID"]
    assert image.version == header["Version"] == "01"
    assert image.arch == header["Primary Architecture"] == "amd64"
    created = datetime.strptime(header["Created At"], "%Y-%m-%d %H:%M:%S +0000 UTC")
    assert image.created == created.replace(tzinfo=UTC)
    assert image.launch_script == ""  # siftool new writes none; Apptainer's build does


def test_descriptors_match_siftool_list_and_info(made: dict[str, Path]) -> None:
    image = read_sif(made["sif"])
    rows = listing(made["sif"])
    assert [d.id for d in image.descriptors] == [int(r["id"]) for r in rows] == [1, 2, 3, 4, 5]
    for d, row in zip(image.descriptors, rows, strict=True):
        assert (d.offset, d.offset + d.size) == (int(row["start"]), int(row["end"]))
        assert d.datatype == TYPES[row["type"].split(" ")[0]]
        assert str(d.group or "NONE") == row["group"]
        assert str(d.link or "NONE") == row["link"]
        details = info(made["sif"], d.id)
        assert d.name == details.get("Name", "")
        if d.partition:
            fs, ptype, arch = re.match(r"FS \((\w+)/(\*?\w+)/(\w+)\)", row["type"]).groups()
            assert (d.partition.fs.name, d.partition.arch) == (fs.upper(), arch)
            assert d.partition.type == (
                PartType.PRIMARY_SYSTEM if ptype == "*System" else PartType.SYSTEM
            )
            assert details["Architecture"] == d.partition.arch


def test_primary_partition_is_the_primary_not_the_first(made: dict[str, Path]) -> None:
    image = read_sif(made["sif"])
    primary = image.primary_partition()
    assert primary.partition is not None
    assert primary.partition.fs is FsType.SQUASHFS
    assert primary.partition.type is PartType.PRIMARY_SYSTEM
    assert primary.id == 4
    assert image.read(primary) == made["primary"].read_bytes()
    assert int(info(made["sif"], 4)["Offset"]) == primary.offset


def test_deffile_labels_and_data(made: dict[str, Path]) -> None:
    image = read_sif(made["sif"])
    assert image.deffile() == DEFFILE
    assert image.labels() == LABELS
    blob = image.find(DataType.GENERIC)
    assert blob is not None and image.read(blob) == b"\x00\x01generic"
    assert siftool("dump", "1", made["sif"]) == DEFFILE


def test_labels_from_apptainers_inspect_metadata(tmp_path: Path) -> None:
    """Apptainer 1.2+ (and hpcstack) keep labels in inspect-metadata.json, no labels.json."""
    need("siftool", "mksquashfs")
    meta = {"data": {"attributes": {"labels": LABELS, "runscript": "#!/bin/sh"}},
            "type": "container"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    sif = tmp_path / "new.sif"
    siftool("new", sif)
    siftool("add", sif, tmp_path / "meta.json", "--datatype", "6", "--filename",
            "inspect-metadata.json")
    assert read_sif(sif).labels() == LABELS
    (tmp_path / "bad.json").write_text("[1]")
    siftool("new", bad := tmp_path / "bad.sif")
    siftool("add", bad, tmp_path / "bad.json", "--datatype", "6", "--filename",
            "inspect-metadata.json")
    with pytest.raises(UserError, match=r"inspect-metadata\.json in SIF image is not a JSON obj"):
        read_sif(bad).labels()


def test_image_without_extras(tmp_path: Path) -> None:
    need("siftool", "mksquashfs")
    sif = tmp_path / "bare.sif"
    siftool("new", sif)
    siftool(
        "add",
        sif,
        squashfs(tmp_path, "p", "x"),
        "--datatype",
        "4",
        "--parttype",
        "1",
        "--partfs",
        "1",
        "--partarch",
        "2",
    )
    image = read_sif(sif)
    assert image.deffile() is None
    assert image.labels() == {}
    with pytest.raises(UserError, match=r"bare\.sif: SIF image has no primary system partition"):
        image.primary_partition()


def test_launch_script_is_read(made: dict[str, Path], tmp_path: Path) -> None:
    """Apptainer writes ``#!/usr/bin/env run-singularity`` in the first 32 bytes."""
    copy = tmp_path / "launch.sif"
    data = bytearray(made["sif"].read_bytes())
    data[: len(LAUNCH_SCRIPT)] = LAUNCH_SCRIPT.encode()
    copy.write_bytes(bytes(data))
    assert read_sif(copy).launch_script == LAUNCH_SCRIPT
    assert read_sif(copy).id == read_sif(made["sif"]).id


@pytest.mark.parametrize(
    "content",
    [b"", b"hello", b"#!/bin/sh\necho not an image\n" * 20, b"hsqs" + bytes(200), bytes(4096)],
    ids=["empty", "short", "script", "squashfs", "zeros"],
)
def test_not_a_sif(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.sif"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_sif(path)
    assert str(err.value) == f"{path}: not a SIF image (bad magic)"
    assert not is_sif(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothere\.sif: cannot read \(No such file"):
        read_sif(tmp_path / "nothere.sif")
    with pytest.raises(UserError, match="not a SIF image"):
        read_sif(tmp_path)


@pytest.mark.parametrize("keep", [200, 6000, 33000], ids=["header", "table", "data"])
def test_truncated(made: dict[str, Path], tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.sif"
    path.write_bytes(made["sif"].read_bytes()[:keep])
    with pytest.raises(UserError) as err:
        read_sif(path)
    assert str(err.value).startswith(f"{path}: truncated SIF image")
    assert "\n" not in str(err.value)


def test_bad_version(made: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(made["sif"].read_bytes())
    data[42:45] = b"99\0"
    path = tmp_path / "v99.sif"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="unsupported SIF version '99'"):
        read_sif(path)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(AT_HEADER_OR_TABLE, st.integers(0, 255)), max_size=8))
def test_corrupted_header_or_table_is_a_user_error(made: dict[str, Path], edits, tmp_path: Path):
    """Any damage to header or table gives a SifImage or a one-line UserError, nothing else."""
    data = bytearray(made["sif"].read_bytes())
    for pos, byte in edits:
        data[pos] = byte
    path = tmp_path / "mangled.sif"
    path.write_bytes(bytes(data))
    try:
        image = read_sif(path)
    except UserError as err:
        assert "\n" not in str(err)
        return
    for d in image.descriptors:
        assert d.offset >= 0 and d.offset + d.size <= len(data)
