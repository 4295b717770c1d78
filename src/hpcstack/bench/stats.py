"""Ratios between modes, with the noise stated: pure, deterministic, tested on numbers.

On a shared node the spread between rounds is larger than what a container costs,
so a ratio is never given alone: each round pairs a container run with the bare
run of the same round (same minute, same neighbours), and the median of those
paired ratios comes with a 95% bootstrap interval over rounds and the min-max.
The bootstrap has a fixed seed, so the same rounds always give the same interval.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20240607

SLOWER = "measurably slower"
FASTER = "measurably faster"
SAME = "indistinguishable at this noise level"
FEW = "too few rounds for a verdict"
#: Below this many paired rounds a bootstrap interval says nothing: no verdict then.
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Ratio:
    """Container/bare for one metric: median of paired rounds, its interval, the range."""

    median: float
    low: float
    high: float
    min: float
    max: float
    rounds: int
    verdict: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def paired(container: list[float | None], bare: list[float | None]) -> list[float]:
    """Per-round container/bare ratios; rounds where either is missing are skipped."""
    return [c / b for c, b in zip(container, bare, strict=True)
            if c is not None and b is not None and b > 0]


def bootstrap(values: list[float], resamples: int = RESAMPLES, seed: int = SEED,
              confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (resampling rounds with replacement)."""
    if len(values) == 1:
        return values[0], values[0]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values)))
                  for _ in range(resamples))
    tail = (1 - confidence) / 2
    return meds[int(tail * resamples)], meds[min(resamples - 1, int((1 - tail) * resamples))]


def verdict(low: float, high: float, rounds: int = MIN_ROUNDS) -> str:
    """Words for an interval: only a whole interval on one side of 1 is a finding."""
    if rounds < MIN_ROUNDS:
        return FEW
    if high < 1.0:
        return SLOWER
    if low > 1.0:
        return FASTER
    return SAME


def ratio(container: list[float | None], bare: list[float | None]) -> Ratio | None:
    """The :class:`Ratio` of two modes' per-round values (None without a complete pair)."""
    values = paired(container, bare)
    if not values:
        return None
    low, high = bootstrap(values)
    return Ratio(statistics.median(values), low, high, min(values), max(values), len(values),
                 verdict(low, high, len(values)))


def median(values: list[float | None]) -> float | None:
    """The median of the measured values (None when nothing was measured)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rotation(modes: list[str], rounds: int) -> list[list[str]]:
    """The order of modes in each round: A B C, B C A, C A B, … so none is always first."""
    k = len(modes)
    return [modes[r % k:] + modes[:r % k] for r in range(rounds)]
