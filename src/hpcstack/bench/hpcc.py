"""HPC Challenge's input and output, pure: what to ask ``hpcc`` and what it answered.

``hpcc`` reads ``hpccinf.txt`` from its working directory and appends its results
to ``hpccoutf.txt``; the part scripts can rely on is the ``key=value`` block
between ``Begin of Summary section.`` and ``End of Summary section.``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import jinja2

from hpcstack.errors import UserError

BEGIN = "Begin of Summary section."
END = "End of Summary section."


@dataclass(frozen=True)
class Metric:
    """One row of the table: a summary key, scaled; ``per_rank`` values are summed
    over ranks so the figure is the node's, as the original center's table is."""

    key: str
    label: str
    unit: str
    scale: float = 1.0
    per_rank: bool = False

    def value(self, summary: dict[str, float]) -> float | None:
        """The figure for this metric, or None when hpcc did not measure it (-1, absent)."""
        raw = summary.get(self.key)
        if raw is None or raw < 0 or math.isnan(raw):
            return None
        ranks = summary.get("CommWorldProcs", 1.0) if self.per_rank else 1.0
        return raw * self.scale * ranks


#: Higher is better for every one of these, so container/bare < 1 means slower.
METRICS: tuple[Metric, ...] = (
    Metric("HPL_Tflops", "HPL", "Gflop/s", scale=1000.0),
    Metric("StarSTREAM_Triad", "STREAM Triad", "GB/s", per_rank=True),
    Metric("StarSTREAM_Copy", "STREAM Copy", "GB/s", per_rank=True),
    Metric("StarDGEMM_Gflops", "DGEMM", "Gflop/s", per_rank=True),
    Metric("PTRANS_GBs", "PTRANS", "GB/s"),
    Metric("MPIRandomAccess_GUPs", "RandomAccess", "GUP/s"),
    Metric("MPIFFT_Gflops", "FFT", "Gflop/s"),
    Metric("RandomlyOrderedRingBandwidth_GBytes", "Ring bandwidth", "GB/s"),
)


@dataclass(frozen=True)
class Problem:
    """What hpcc is asked to solve: HPL's order N, block NB, process grid P x Q."""

    n: int
    nb: int
    p: int
    q: int


#: HPL order per size; hpcc sizes STREAM, RandomAccess and FFT from HPL's memory.
SIZES = {"quick": 3000, "full": 10000}
BLOCK = 192


def grid(ranks: int) -> tuple[int, int]:
    """The squarest P x Q with P <= Q for ``ranks`` processes (HPL prefers that)."""
    p = max(d for d in range(1, math.isqrt(ranks) + 1) if ranks % d == 0)
    return p, ranks // p


def problem(ranks: int, quick: bool, n: int | None = None) -> Problem:
    """The problem for ``ranks`` processes: quick fits in minutes on two cores."""
    if ranks < 1:
        raise UserError(f"--ranks {ranks}: at least 1")
    if n is not None and n < BLOCK:
        raise UserError(f"--size {n}: at least {BLOCK}")
    p, q = grid(ranks)
    return Problem(n or SIZES["quick" if quick else "full"], BLOCK, p, q)


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpcstack.bench", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def render(template: str, **values: object) -> str:
    """One of this package's templates, filled in."""
    return _templates().get_template(template).render(**values)


def input_file(prob: Problem) -> str:
    """``hpccinf.txt`` for ``prob`` (Debian's example input, with N, NB, P, Q set)."""
    return render("hpccinf.txt.j2", n=prob.n, nb=prob.nb, p=prob.p, q=prob.q)


def parse_summary(text: str, where: str = "hpccoutf.txt") -> dict[str, float]:
    """The numeric ``key=value`` pairs of the last summary section in ``text``."""
    end = text.rfind(END)
    begin = text.rfind(BEGIN, 0, end if end >= 0 else None)
    if begin < 0 or end < 0:
        raise UserError(f"{where}: no complete summary section (did hpcc finish?)")
    values: dict[str, float] = {}
    for line in text[begin + len(BEGIN):end].splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep:
            continue
        try:
            values[key] = float(raw)
        except ValueError:
            continue  # text entries such as HPL_cpfact=R
    if values.get("Success") != 1.0:
        raise UserError(f"{where}: hpcc reports Success={values.get('Success')}")
    return values


def figures(summary: dict[str, float]) -> dict[str, float]:
    """The table's metrics from one summary, keyed by summary key; unmeasured ones left out."""
    found = {m.key: m.value(summary) for m in METRICS}
    return {k: v for k, v in found.items() if v is not None}
