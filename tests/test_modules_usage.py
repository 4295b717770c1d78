"""Usage records of container apps: the wrapper's record, and ``hpcstack modules usage``.

The wrapper is rendered from the real template for a site with ``usage_log`` set and
the ``apptainer`` runtime, whose binary is ``/bin/echo`` here (the record is written
before the exec, so what is exec'd does not matter), and run as the ordinary test user
under ``strace -f``: no process may be started before the exec.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HPCSTACK_PREFIX, REPO, User, need
from hpcstack.errors import UserError
from hpcstack.modules import parse_site
from hpcstack.modules.render import module_for, wrapper
from hpcstack.modules.usage import Record, parse_line, parse_since, sentence, summarise
from test_modules_units import FACTS, SITE

HPCSTACK = str(HPCSTACK_PREFIX / "bin" / "hpcstack")


def test_the_issue_sentence() -> None:
    now = 1_800_000_000
    records = [Record(now - i * 2000, f"u{i % 37}", "gromacs/2022-cpu", "gmx_mpi", str(i), "n1")
               for i in range(1204)]
    records += [Record(now, "u1", "lammps/2023", "lmp", "", "n2")]
    rows = summarise(records, "module", parse_since("30d", now))
    assert [sentence(r, "module", 30 * 86400) for r in rows] == [
        "gromacs/2022-cpu: 1,204 runs by 37 users in 30 days",
        "lammps/2023: 1 run by 1 user in 30 days"]
    by_user = summarise(records, "user")
    assert sentence(by_user[0], "user", 86400) == "u1: 34 runs of 2 modules in 1 day"
    assert by_user[0].jobs == 33  # the lammps run had no Slurm job


@pytest.mark.parametrize("line", ["", "x\tu\tm\tc\tj\tn", "1\tu\tm\tc\tj", "1\tu\t\tc\tj\tn"])
def test_lines_that_are_not_records(line: str) -> None:
    assert parse_line(line) is None


def test_since_is_checked() -> None:
    assert parse_since("2w", 10**7) == 10**7 - 14 * 86400
    with pytest.raises(UserError, match=r"--since 3x: expected a number and s, m, h, d or w"):
        parse_since("3x", 0)


def test_usage_log_must_be_a_plain_absolute_path() -> None:
    with pytest.raises(UserError, match="usage_log"):
        parse_site(SITE + "usage_log: 'relative/usage.log'\n", "site.yaml")


def render_wrapper(tmp_path: Path, log: Path) -> Path:
    site = parse_site(SITE.replace("root:", f"runtime: apptainer\nusage_log: {log}\nroot:"),
                      "site.yaml")
    m = module_for(site.apps[0], site, FACTS, ["gmx_mpi"])
    path = tmp_path / "gmx_mpi"
    path.write_text(wrapper(m, site.apps[0], site, "gmx_mpi", "/bin/echo"))
    path.chmod(0o755)
    return path


def test_the_wrapper_appends_a_record_without_starting_a_process(user: User) -> None:
    need("strace")
    tmp_path = user.workdir("usage-wrapper")
    log = tmp_path / "usage.log"
    log.touch()
    log.chmod(0o622)  # as deploy makes it: anyone appends, only its owner reads
    script = render_wrapper(tmp_path, log)
    trace = tmp_path / "trace"
    before = int(time.time())
    for _ in range(2):  # the first call per boot reads /proc/stat, the next the cache
        proc = user.run(["strace", "-f", "-qq", "-e", "trace=process", "-o", str(trace),
                         str(script), "-deffnm", "run 1"], env={"SLURM_JOB_ID": "4242"},
                        check=True)
        calls = [line for line in trace.read_text().splitlines() if "(" in line]
        assert [c.split("(")[0].split()[-1] for c in calls][:1] == ["execve"]
        started = [c for c in calls if c.split("(")[0].split()[-1] in
                   ("clone", "clone3", "fork", "vfork")]
        assert started == [], started  # the record came from shell builtins alone
        assert sum("execve(" in c for c in calls) == 2  # the script, then its exec
    after = int(time.time())
    assert proc.stdout.rstrip("\n").endswith(" gmx_mpi -deffnm run 1")  # "$@" unchanged
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    stamp, who, module, command, job, node = lines[-1].split("\t")
    assert (who, module, command, job) == (user.name, "gromacs/2022-cpu", "gmx_mpi", "4242")
    assert node == Path("/proc/sys/kernel/hostname").read_text().strip()
    assert before - 2 <= int(stamp) <= after + 1  # boot time + uptime, whole seconds


def test_an_unwritable_log_never_stops_the_app(user: User) -> None:
    tmp_path = user.workdir("usage-unwritable")
    log = tmp_path / "usage.log"
    log.touch()
    log.chmod(0o600)  # root's alone
    proc = user.run([str(render_wrapper(tmp_path, log)), "ok"], check=True)
    assert proc.stdout.split()[-1] == "ok" and proc.stderr == ""


def write_log(path: Path, n: int, now: int, seed: int = 1) -> list[Record]:
    rng = random.Random(seed)
    records = [Record(now - rng.randrange(90 * 86400), f"user{rng.randrange(300):03d}",
                      f"app{rng.randrange(40):02d}/1.0", "cmd", str(rng.randrange(9000)),
                      f"node{rng.randrange(50)}") for _ in range(n)]
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in records))
    return records


def test_cli_on_a_100000_record_log_with_rotations(user: User) -> None:
    """100,000 records in the log; older ones rotated (``.1``, ``.2.gz``) and read too.
    (The time it takes is measured in benchmarks/modules.py, not asserted.)"""
    tmp_path = user.workdir("usage-cli")
    now = int(time.time())
    log = tmp_path / "usage.log"
    records = write_log(log, 100_000, now)
    old = write_log(tmp_path / "plain", 10, now - 200 * 86400, seed=2)
    (tmp_path / "plain").rename(tmp_path / "usage.log.1")
    with gzip.open(tmp_path / "usage.log.2.gz", "wt") as fh:
        fh.write("\t".join(map(str, old[0])) + "\nnot a record\n")
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    out = user.run([HPCSTACK, "modules", "usage", "--log", str(log), "--since", "30d",
                    "--json"], check=True)
    got = json.loads(out.stdout)
    recent = [r for r in records if r.time >= now - 30 * 86400]
    assert sum(r["runs"] for r in got["rows"]) == len(recent)
    top = max({r.module for r in recent}, key=lambda mod: (
        sum(r.module == mod for r in recent), [-ord(c) for c in mod]))
    assert got["rows"][0]["key"] == top
    assert got["rows"][0]["users"] == len({r.user for r in recent if r.module == top})
    assert got["skipped_lines"] == 1 and got["days"] == 30
    every = json.loads(user.run([HPCSTACK, "modules", "usage", "--log", str(log), "--by",
                                 "user", "--json"], check=True).stdout)
    assert sum(r["runs"] for r in every["rows"]) == 100_000 + 11  # rotations included
    text = user.run([HPCSTACK, "modules", "usage", "--log", str(log), "--since", "30d"],
                    check=True).stdout.splitlines()
    assert text[0].startswith(f"{top}: ") and text[0].endswith(" in 30 days")
    assert len(text) == len({r.module for r in recent})


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    proc = subprocess.run([HPCSTACK, "modules", "usage", "--site", str(site)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (f"hpcstack: error: {site}: usage_log is not set, so "
                                   "wrappers keep no usage records")
    proc = subprocess.run([HPCSTACK, "modules", "usage", "--log", str(tmp_path / "none.log")],
                          capture_output=True, text=True)
    assert proc.stderr.strip().startswith(f"hpcstack: error: {tmp_path}/none.log: no usage log")


def test_deploy_makes_the_log_appendable_by_all_readable_by_its_owner(tmp_path: Path) -> None:
    from hpcstack.modules.deploy import Report, _usage_log

    log = tmp_path / "hpcstack" / "usage.log"
    said: list[str] = []
    _usage_log(log, Report(), said.append)
    assert (log.stat().st_mode & 0o777, said) == (0o622, [])
    log.write_text("kept\n")
    _usage_log(log, Report(), said.append)  # an existing log is left as it is
    assert log.read_text() == "kept\n"


def test_the_shipped_logrotate_config_rotates_and_usage_still_counts(tmp_path: Path) -> None:
    """logrotate itself, forced, on a copy of the shipped config aimed at a temporary log."""
    need("logrotate")  # install.sh installs it
    log = tmp_path / "usage.log"
    now = int(time.time())
    write_log(log, 50, now)
    conf = tmp_path / "hpcstack-usage"
    conf.write_text((REPO / "logrotate" / "hpcstack-usage").read_text().replace(
        "/var/log/hpcstack/usage.log", str(log)))
    state = tmp_path / "state"
    for more in (30, 20):  # rotate twice: usage.log.1, then usage.log.2.gz (delaycompress)
        subprocess.run(["logrotate", "--force", "--state", str(state), str(conf)], check=True)
        assert log.stat().st_mode & 0o777 == 0o622  # made again for every user to append
        write_log(log, more, now, seed=more)
    assert sorted(p.name for p in tmp_path.glob("usage.log*")) == [
        "usage.log", "usage.log.1", "usage.log.2.gz"]
    out = subprocess.run([HPCSTACK, "modules", "usage", "--log", str(log), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert sum(r["runs"] for r in json.loads(out)["rows"]) == 50 + 30 + 20
