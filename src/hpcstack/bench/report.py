"""From recorded rounds to the JSON, the table and the verdicts: pure.

Everything printed is derived from ``rounds`` in the JSON, so a script (or a test)
can recompute every ratio from the raw figures with :func:`summarize`.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from hpcstack.bench import stats
from hpcstack.bench.hpcc import METRICS

LABELS = {"bare": "bare", "module": "module", "runtime": "runtime"}
#: Column titles for the runtime mode: the command users would type.
RUNTIME_TITLES = {"charliecloud": "ch-run", "apptainer": "apptainer", "singularity": "singularity"}
SCHEMA = 1


def series(rounds: list[dict[str, Any]], mode: str, key: str) -> list[float | None]:
    """One mode's figure for ``key`` in each round (None where not measured)."""
    return [r["results"].get(mode, {}).get("figures", {}).get(key) for r in rounds]


def summarize(rounds: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per metric: each mode's median, and each container mode's ratio to bare."""
    out: dict[str, Any] = {}
    for m in METRICS:
        if all(v is None for v in series(rounds, "bare", m.key)):
            continue
        bare = series(rounds, "bare", m.key)
        ratios = {}
        for mode in modes:
            if mode != "bare":
                found = stats.ratio(series(rounds, mode, m.key), bare)
                ratios[mode] = found.as_dict() if found else None
        out[m.key] = {
            "label": m.label, "unit": m.unit,
            "median": {mode: stats.median(series(rounds, mode, m.key)) for mode in modes},
            "ratio": ratios,
        }
    return out


def document(meta: dict[str, Any], modes: list[str], rounds: list[dict[str, Any]]) -> dict:
    """The whole JSON document: what ran, every round's figures, and the summary."""
    return {"schema": SCHEMA, **meta, "modes": modes, "rounds": rounds,
            "metrics": summarize(rounds, modes)}


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if value < 100 else f"{value:.1f}"


def _ratio_cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    return f"{r['median']:.3f} ({r['low']:.3f}-{r['high']:.3f})"


def mode_title(mode: str, runtime: str) -> str:
    return RUNTIME_TITLES.get(runtime, runtime) if mode == "runtime" else LABELS[mode]


def table(doc: dict[str, Any]) -> Table:
    """The original center's shape: a row per metric, a column per mode, then ratios."""
    modes, rt = doc["modes"], doc.get("runtime", "runtime")
    containers = [m for m in modes if m != "bare"]
    title = (f"hpcc {doc.get('hpcc_version', '')} on {doc.get('host', '?')}, "
             f"{doc['ranks']} rank(s), N={doc['problem']['n']}: medians of "
             f"{len(doc['rounds'])} rounds")
    t = Table(title=title, caption="container/bare: median of paired rounds (95% bootstrap CI)")
    t.add_column("metric")
    for mode in modes:
        t.add_column(mode_title(mode, rt), justify="right")
    for mode in containers:
        t.add_column(f"{mode_title(mode, rt)}/bare", justify="right")
    for row in doc["metrics"].values():
        cells = [_num(row["median"][mode]) for mode in modes]
        cells += [_ratio_cell(row["ratio"].get(mode)) for mode in containers]
        t.add_row(f"{row['label']} {row['unit']}", *cells)
    return t


def verdicts(doc: dict[str, Any]) -> Table:
    """Each ratio in words, with its interval and the range over rounds."""
    rt = doc.get("runtime", "runtime")
    t = Table(title="container vs bare metal, round by round")
    for col in ("metric", "mode", "median", "95% CI", "min-max", "verdict"):
        t.add_column(col, justify="left" if col in ("metric", "mode", "verdict") else "right")
    for row in doc["metrics"].values():
        for mode, r in row["ratio"].items():
            if r:
                t.add_row(row["label"], mode_title(mode, rt), f"{r['median']:.3f}",
                          f"{r['low']:.3f}-{r['high']:.3f}", f"{r['min']:.3f}-{r['max']:.3f}",
                          r["verdict"])
    return t
