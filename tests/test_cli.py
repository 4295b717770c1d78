"""The ``hpcstack`` command's own behaviour: def check/show, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert proc.returncode == 1
    assert proc.stderr.startswith("hpcstack: error: exec:")


def test_unknown_option_is_a_usage_error() -> None:
    proc = hpcstack("build", "--bogus", "x.sif", "x.def")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
