"""The ``hpcstack`` command's own behaviour: def check/show, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpcstack.cli import launch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def hpcstack(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcstack", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_def_check_good_file() -> None:
    proc = hpcstack("def", "check", str(EXAMPLES / "hello.def"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_def_check_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.def"
    bad.write_text("Bootstrap: docker\nFlavour: x\n\n%post\n    true\n%appinstall foo\n")
    good = tmp_path / "good.def"
    good.write_text("Bootstrap: scratch\n")
    proc = hpcstack("def", "check", str(good), str(bad))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert all(line.startswith(f"{bad}:") for line in lines), lines
    assert any(":2:" in line and "Flavour" in line for line in lines), lines
    assert any(":6:" in line and "appinstall" in line for line in lines), lines
    assert "Traceback" not in proc.stderr


def test_def_check_missing_file(tmp_path: Path) -> None:
    proc = hpcstack("def", "check", str(tmp_path / "nope.def"))
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{tmp_path / 'nope.def'}:0: cannot read")


def test_def_show_json() -> None:
    proc = hpcstack("def", "show", "--json", str(EXAMPLES / "hello.def"))
    assert proc.returncode == 0, proc.stderr
    model = json.loads(proc.stdout)
    [stage] = model["stages"]
    assert ["Bootstrap", "debootstrap"] in stage["header"]
    assert dict(stage["labels"])["Author"] == "hpcstack"
    assert "apt-get install" in stage["post"]["body"]


def test_def_show_parse_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.def"
    bad.write_text("%post\n  true\n")
    proc = hpcstack("def", "show", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"hpcstack: error: {bad}:1:")


def test_exec_needs_a_command(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.mkdir()
    proc = hpcstack("exec", str(image))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("hpcstack exec: no command given (usage: hpcstack exec ")


@pytest.mark.parametrize("argv, image, args", [
    # Everything after the image is the command's, options and all (issue: -B, -h eaten).
    (["img", "echo", "-B/tmp"], "img", ["echo", "-B/tmp"]),
    (["img", "echo", "-h", "--help", "--nv"], "img", ["echo", "-h", "--help", "--nv"]),
    (["img", "Xvnc", "-nohttpd", "-rfbauth", "f", "-xh"],
     "img", ["Xvnc", "-nohttpd", "-rfbauth", "f", "-xh"]),
    # `--` before the image ends the options; after it, it is an ordinary word (as Apptainer).
    (["--", "img", "cmd"], "img", ["cmd"]),
    (["--", "-odd-name", "cmd"], "-odd-name", ["cmd"]),
    (["img", "--", "cmd"], "img", ["--", "cmd"]),
])
def test_launch_stops_parsing_at_the_image(argv, image, args) -> None:
    parsed = launch.parse("exec", argv)
    assert (str(parsed.image), parsed.args) == (image, args)
    assert parsed.binds == [] and not parsed.nv and not parsed.help


@pytest.mark.parametrize("argv, binds", [
    (["-B", "/a", "img", "x"], ["/a"]),
    (["-B/a", "img", "x"], ["/a"]),
    (["-B=/a", "img", "x"], ["/a"]),
    (["--bind", "/a:/b:ro", "--bind=/c", "img", "x"], ["/a:/b:ro", "/c"]),
    (["-B", "/a,/b:/c", "img", "x"], ["/a", "/b:/c"]),
])
def test_launch_binds(argv, binds) -> None:
    assert launch.parse("exec", argv).binds == binds


def test_launch_flags_and_clusters() -> None:
    parsed = launch.parse("run", ["--nv", "--runtime", "apptainer", "img"])
    assert parsed.nv and parsed.runtime == "apptainer" and parsed.args == []
    assert launch.parse("run", ["--runtime=charliecloud", "--rocm", "img"]).rocm
    assert launch.parse("exec", ["-hB/x"]).help  # help wins, like any -h
    assert launch.parse("exec", ["-Bh", "img", "x"]).binds == ["h"]  # the rest is -B's value
    assert launch.parse("shell", ["-h"]).help


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "img", "x"], "unknown option --bogus"),
    (["-x", "img", "x"], "unknown option -x"),
    (["-hx"], "unknown option -x"),  # checked left to right, as pflag does
    (["--bind"], "--bind needs a value"),
    (["-B"], "-B needs a value"),
    (["--nv=yes", "img", "x"], "--nv takes no value"),
    ([], "no image given"),
    (["--"], "no image given"),
])
def test_launch_usage_errors(argv, message) -> None:
    with pytest.raises(launch.UsageError, match=f"^{re.escape(message)}$"):
        launch.parse("exec", argv)


@pytest.mark.parametrize("verb", ["exec", "run", "shell"])
def test_launch_help_is_its_own(verb: str) -> None:
    proc = hpcstack(verb, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"Usage: hpcstack {verb} [OPTIONS] IMAGE")
    assert "everything after IMAGE goes to the container" in proc.stdout
    listed = hpcstack("--help").stdout
    assert all(v in listed for v in ("exec", "run", "shell"))


def test_launch_unknown_option_is_one_line() -> None:
    proc = hpcstack("exec", "--bogus", "img", "true")
    assert proc.returncode == 2
    assert proc.stderr == ("hpcstack exec: unknown option --bogus (usage: hpcstack exec "
                           "[OPTIONS] IMAGE CMD [ARGS...]; see --help)\n")


def test_launch_missing_image_is_one_line(tmp_path: Path) -> None:
    proc = hpcstack("exec", str(tmp_path / "nope.sif"), "true")
    assert proc.returncode == 1
    assert proc.stderr == f"hpcstack: error: {tmp_path / 'nope.sif'}: no such image\n"


def test_unknown_option_is_a_usage_error() -> None:
    proc = hpcstack("build", "--bogus", "x.sif", "x.def")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
