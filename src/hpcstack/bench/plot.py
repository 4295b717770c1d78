"""The bar chart: every mode relative to bare metal, per metric, with error bars.

Bare metal is 1.0 with its own spread over rounds (min-max / median); each
container mode is its paired container/bare median with the 95% interval.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hpcstack.bench.report import mode_title
from hpcstack.bench.stats import median

TOP = 1.6
COLORS = {"bare": "#4c72b0", "module": "#dd8452", "runtime": "#55a868"}


def _bars(doc: dict[str, Any], mode: str) -> tuple[list[float], list[list[float]]]:
    """Heights and (below, above) error lengths for ``mode`` over the metrics."""
    heights, below, above = [], [], []
    for key, row in doc["metrics"].items():
        if mode == "bare":
            values = [r["results"]["bare"]["figures"].get(key) for r in doc["rounds"]]
            present = [v for v in values if v is not None]
            mid = median(present) or 1.0
            low, high = min(present) / mid, max(present) / mid
            heights.append(1.0)
        else:
            r = row["ratio"].get(mode) or {"median": 0.0, "low": 0.0, "high": 0.0}
            heights.append(r["median"])
            low, high = r["low"], r["high"]
        below.append(max(0.0, heights[-1] - low))
        above.append(max(0.0, high - heights[-1]))
    return heights, [below, above]


def chart(doc: dict[str, Any], path: Path) -> None:
    """Write the PNG (Agg backend, no display needed), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["label"] for row in doc["metrics"].values()]
    modes = doc["modes"]
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels)), 3.4), dpi=90)
    for i, mode in enumerate(modes):
        heights, err = _bars(doc, mode)
        xs = [x + (i - (len(modes) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, heights, width, yerr=err, capsize=3, color=COLORS.get(mode),
               label=mode_title(mode, doc.get("runtime", "runtime")))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("relative to bare metal")
    ax.set_ylim(0, TOP)  # a wild round would flatten every bar; its error bar runs off
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    ax.set_title(f"hpcc, {doc['ranks']} rank(s), {len(doc['rounds'])} rounds: "
                 "container/bare (95% CI), bare (min-max)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right", ncols=len(modes))
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
