"""The build job's outside half: what it trusts of a build, and the limits it holds.

The build itself runs jailed (``test_jail.py``, ``test_isolation.py``); here the
job's own checks run against real files and a real child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcstack.build.job import BuildRequest, BuildResult, Limits, Watch, publish, staged_output
from hpcstack.deffile import parse
from hpcstack.errors import UserError

TEXT = "Bootstrap: scratch\n%post\n    true\n"


def request(tmp_path: Path, **kw) -> BuildRequest:
    return BuildRequest(name="t.def", definition=parse(TEXT), text=TEXT,
                        output=str(tmp_path / "image.sif"), cwd=str(tmp_path),
                        workdir=str(tmp_path / "tmp"), cache_dir=str(tmp_path / "cache"),
                        result=str(tmp_path / "result.json"), **kw)


def test_a_link_the_build_left_is_never_followed(tmp_path: Path) -> None:
    """A build may name its output after anything the service can read: refused."""
    secret = tmp_path / "u2cb.db"
    secret.write_text("the service's database")
    staged = tmp_path / "out" / "image.sif"
    staged.parent.mkdir()
    staged.symlink_to(secret)
    with pytest.raises(UserError, match=r"image\.sif: the build left no image"):
        publish(staged, tmp_path / "image.sif", sandbox=False)
    assert not (tmp_path / "image.sif").exists()


def test_outputs_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="left no image"):
        publish(tmp_path / "a", tmp_path / "image.sif", sandbox=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="left no sandbox"):
        publish(tmp_path / "f", tmp_path / "sandbox", sandbox=True)
    with pytest.raises(UserError, match="left no output"):
        publish(tmp_path / "missing", tmp_path / "image.sif", sandbox=False)
    publish(tmp_path / "f", tmp_path / "image.sif", sandbox=False)  # the control
    assert (tmp_path / "image.sif").read_text() == "x"


def test_a_sandbox_replaces_the_old_one_whole(tmp_path: Path) -> None:
    old, new = tmp_path / "sandbox", tmp_path / "out" / "sandbox"
    old.mkdir()
    (old / "old").write_text("1")
    new.mkdir(parents=True)
    (new / "new").write_text("2")
    publish(new, old, sandbox=True)
    assert sorted(os.listdir(old)) == ["new"]


def test_the_staged_output_is_inside_the_jobs_scratch(tmp_path: Path) -> None:
    req = request(tmp_path)
    assert staged_output(req).parent.parent == Path(req.workdir)


def test_the_log_is_cut_at_the_limit_with_a_marker(tmp_path: Path) -> None:
    req = request(tmp_path, limits=Limits(log_bytes=10_000))
    proc = subprocess.Popen([sys.executable, "-c", "import sys\nfor i in range(5000):\n"
                             "    sys.stdout.write(f'line {i:06d}\\n')\n"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log_path = tmp_path / "build.log"
    with log_path.open("ab") as log:
        status = Watch(req, proc, log).wait()
    assert status == 0  # the build went on to its end
    text = log_path.read_text()
    body, marker = text.rsplit("\n[u2cb: ", 1)
    assert len(body.encode()) == 10_000 and body.startswith("line 000000")
    assert marker == "the log was cut at 10000 bytes (the site's limit); the build goes on]\n"


def test_a_build_over_its_disk_limit_is_killed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("hpcstack.build.job.DISK_CHECK_S", 0.1)
    req = request(tmp_path, limits=Limits(disk_bytes=1_000_000))
    Path(req.workdir).mkdir()
    big = Path(req.workdir) / "big"
    proc = subprocess.Popen(["sh", "-c", f"head -c 3000000 /dev/zero > {big}; exec sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with (tmp_path / "build.log").open("ab") as log:
        watch = Watch(req, proc, log)
        status = watch.wait()
    assert status != 0 and watch.over_disk is not None and watch.over_disk >= 3_000_000


def test_results_round_trip_with_their_error() -> None:
    from hpcstack.build.plan import PlanError

    result = BuildResult(error=PlanError(message="%post failed with exit status 3",
                                         file="t.def", line=4))
    again = BuildResult.model_validate_json(result.model_dump_json())
    assert not again.ok and str(again.error.exception()) == \
        "t.def:4: %post failed with exit status 3"
