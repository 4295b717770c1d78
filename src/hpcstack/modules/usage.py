"""``hpcstack modules usage``: who ran which container app, from the wrappers' records.

With ``usage_log:`` in the site file every wrapper appends one tab-separated line per
call (``usage.sh.j2``, shell builtins only)::

    TIME  USER  MODULE  COMMAND  SLURM_JOB_ID  NODE

:func:`summarise` is pure; :func:`read_records` reads the log and what logrotate left
of it (``usage.log.1``, ``usage.log.2.gz`` …).  Lines that are not records (cut short by
a full disk, or written by hand) are counted and skipped.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from hpcstack.errors import UserError

By = Literal["module", "user"]
SPAN = re.compile(r"^(\d+)([smhdw])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Record(NamedTuple):
    time: int
    user: str
    module: str
    command: str
    job: str
    node: str


@dataclass
class Row:
    """One module's (or one user's) runs."""

    key: str
    runs: int
    users: int  # distinct users (by module) or modules (by user)
    jobs: int
    first: int
    last: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def parse_line(line: str) -> Record | None:
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 6 or not parts[0].isdigit() or not parts[2]:
        return None
    return Record(int(parts[0]), *parts[1:])


def parse_since(text: str, now: int) -> int:
    """``30d``, ``12h``, ``2w`` … before ``now``, as a UNIX time (pure)."""
    m = SPAN.match(text.strip())
    if not m:
        raise UserError(f"--since {text}: expected a number and s, m, h, d or w (e.g. 30d)")
    return now - int(m.group(1)) * SECONDS[m.group(2)]


def summarise(records: Iterable[Record], by: By = "module", since: int | None = None
              ) -> list[Row]:
    """Runs per module (or user), the most run first (pure)."""
    stats: dict[str, tuple[list[int], set[str], set[str]]] = {}
    by_module = by == "module"
    for r in records:
        if since is not None and r.time < since:
            continue
        key, other = (r.module, r.user) if by_module else (r.user, r.module)
        entry = stats.get(key)
        if entry is None:
            entry = stats[key] = ([0, r.time, r.time], set(), set())
        counts, others, jobs = entry
        counts[0] += 1
        if r.time < counts[1]:
            counts[1] = r.time
        elif r.time > counts[2]:
            counts[2] = r.time
        others.add(other)
        if r.job:
            jobs.add(r.job)
    rows = [Row(k, c[0], len(o), len(j), c[1], c[2]) for k, (c, o, j) in stats.items()]
    return sorted(rows, key=lambda row: (-row.runs, row.key))


def days(seconds: float) -> int:
    return max(1, round(seconds / 86400))


def sentence(row: Row, by: By, window: int) -> str:
    """``gromacs/2022-cpu: 1,204 runs by 37 users in 30 days``."""
    plural = "s" if row.runs != 1 else ""
    if by == "module":
        who = f"by {row.users:,} user{'s' if row.users != 1 else ''}"
    else:
        who = f"of {row.users:,} module{'s' if row.users != 1 else ''}"
    return f"{row.key}: {row.runs:,} run{plural} {who} in {days(window)} " \
           f"day{'s' if days(window) != 1 else ''}"


def log_files(log: Path) -> list[Path]:
    """The log and its rotated copies, oldest first (``.N`` and ``.N.gz``, by N)."""
    rotated = []
    for path in log.parent.glob(log.name + ".*"):
        suffix = path.name[len(log.name) + 1:].removesuffix(".gz")
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    return [p for _n, p in sorted(rotated, reverse=True)] + ([log] if log.exists() else [])


def read_records(log: Path, skipped: list[int] | None = None) -> Iterator[Record]:
    """Every record in the log and its rotations; ``skipped[0]`` counts bad lines."""
    files = log_files(log)
    if not files:
        raise UserError(f"{log}: no usage log (is usage_log set in the site file, and has "
                        "a wrapper run since?)")
    bad = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", errors="replace") as fh:
                for line in fh:
                    record = parse_line(line)
                    if record is None:
                        bad += 1
                    else:
                        yield record
        except OSError as err:
            raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    if skipped is not None:
        skipped.append(bad)
