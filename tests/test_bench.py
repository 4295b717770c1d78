"""hpcstack bench's pure core: hpcc's input and output, the statistics, the table.

The hpcc outputs under tests/data/ were captured on the project machine from Debian's
hpcc 1.5.0-3 with OpenBLAS (1 rank, N=4000; 2 ranks under mpirun, N=2000).
Nothing here measures time: ratios are checked against the numbers they come from.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcstack.bench import hpcc, image, report, stats
from hpcstack.errors import UserError

DATA = Path(__file__).parent / "data"


def one_rank() -> str:
    return (DATA / "hpccoutf-1rank.txt").read_text()


# --- hpcc input and output --------------------------------------------------------------


def test_parse_summary_of_a_real_run() -> None:
    summary = hpcc.parse_summary(one_rank())
    assert summary["HPL_Tflops"] == pytest.approx(0.0578949)
    assert summary["StarSTREAM_Triad"] == pytest.approx(17.056)
    assert summary["HPL_N"] == 4000 and summary["CommWorldProcs"] == 1
    assert "HPL_cpfact" not in summary  # text values are not figures


def test_figures_scale_and_skip_unmeasured() -> None:
    figs = hpcc.figures(hpcc.parse_summary(one_rank()))
    assert figs["HPL_Tflops"] == pytest.approx(57.8949)  # shown in Gflop/s
    assert figs["StarDGEMM_Gflops"] == pytest.approx(29.3202)
    assert "RandomlyOrderedRingBandwidth_GBytes" not in figs  # -1 with one rank


def test_figures_sum_per_rank_metrics_over_ranks() -> None:
    text = (DATA / "hpccoutf-2ranks.txt").read_text()
    summary = hpcc.parse_summary(text)
    figs = hpcc.figures(summary)
    assert figs["StarSTREAM_Triad"] == pytest.approx(2 * summary["StarSTREAM_Triad"])
    assert figs["PTRANS_GBs"] == pytest.approx(summary["PTRANS_GBs"])
    assert figs["RandomlyOrderedRingBandwidth_GBytes"] > 0


def test_parse_takes_the_last_summary_of_an_appended_file() -> None:
    text = one_rank() + one_rank().replace("HPL_Tflops=0.0578949", "HPL_Tflops=0.07")
    assert hpcc.parse_summary(text)["HPL_Tflops"] == 0.07


@pytest.mark.parametrize("text", ["", "Begin of Summary section.\nHPL_Tflops=1\n",
                                  "Begin of Summary section.\nSuccess=0\nEnd of Summary section."])
def test_parse_refuses_incomplete_or_failed_runs(text: str) -> None:
    with pytest.raises(UserError):
        hpcc.parse_summary(text, "x/hpccoutf.txt")


def test_input_file_sets_n_nb_and_grid() -> None:
    text = hpcc.input_file(hpcc.problem(2, quick=True))
    lines = text.splitlines()
    assert lines[5].split()[0] == "3000" and lines[7].split()[0] == "192"
    assert (lines[10].split()[0], lines[11].split()[0]) == ("1", "2")
    assert len(lines) == 36  # Debian's example, line for line


@pytest.mark.parametrize(("ranks", "grid"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)),
                                             (6, (2, 3)), (7, (1, 7))])
def test_grid_is_squarest(ranks: int, grid: tuple[int, int]) -> None:
    assert hpcc.grid(ranks) == grid


def test_definition_pins_the_host_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "suite", lambda: "bookworm")
    text = image.definition({"hpcc": "1.5.0-3", "libopenblas0-serial": "0.3.21+ds-4",
                             "openmpi-bin": "4.1.4-3+b1", "libopenmpi3": "4.1.4-3+b1"})
    assert "OSVersion: bookworm" in text
    assert "hpcc=1.5.0-3 libopenblas0-serial=0.3.21+ds-4 openmpi-bin=4.1.4-3+b1" in text
    assert "hpcstack.commands hpcc" in text


@pytest.mark.parametrize("mpi_package", ["libopenmpi3", "libopenmpi40"])  # Debian 12, 13
def test_host_packages_follow_the_libraries_hpcc_loads(monkeypatch: pytest.MonkeyPatch,
                                                       mpi_package: str) -> None:
    """The MPI library's package is found from the file hpcc loads, not named in the code:
    Debian 13 ships Open MPI 5 as libopenmpi40."""
    owners = {"/usr/lib/x86_64-linux-gnu/openblas-serial/libblas.so.3": "libopenblas0-serial",
              "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.5": mpi_package}
    monkeypatch.setattr(image, "owner_package", owners.__getitem__)
    seen = []
    monkeypatch.setattr(image, "_run", lambda argv, what: seen.append(argv) or
                        "".join(f"{n}=1.0\n" for n in argv[3:]))
    checksums = {"hpcc": ("a", "/usr/bin/hpcc"),
                 "libblas.so.3": ("b", "/usr/lib/x86_64-linux-gnu/openblas-serial/libblas.so.3"),
                 "libmpi.so.40": ("c", "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.5")}
    packages = image.host_packages(checksums)
    assert list(packages) == ["hpcc", "libopenblas0-serial", "openmpi-bin", mpi_package]
    monkeypatch.setattr(image, "suite", lambda: "trixie")
    assert "with libopenblas0-serial" in image.definition(packages)


def test_differences_name_what_differs() -> None:
    host = {"hpcc": ("a", "/usr/bin/hpcc"), "libblas.so.3": ("b", "/x/openblas/libblas.so.3")}
    same = dict(host)
    other = host | {"libblas.so.3": ("c", "/x/blas/libblas.so.3")}
    assert image.differences(host, same) == []
    (problem,) = image.differences(host, other)
    assert problem.startswith("libblas.so.3: host /x/openblas") and "/x/blas" in problem
    with pytest.raises(UserError, match="refusing to compare"):
        image.refuse_if_different("img.sif", host, other)


# --- statistics -------------------------------------------------------------------------


def test_ratio_is_median_of_paired_rounds() -> None:
    bare = [100.0, 80.0, 120.0, 100.0, 90.0]
    container = [99.0, 82.0, 114.0, 97.0, 90.0]
    r = stats.ratio(container, bare)
    assert r is not None
    paired = [c / b for c, b in zip(container, bare, strict=True)]
    assert r.median == statistics.median(paired)
    assert (r.min, r.max) == (min(paired), max(paired))
    assert r.min <= r.low <= r.median <= r.high <= r.max
    assert r.rounds == 5


def test_ratio_skips_rounds_missing_a_side() -> None:
    r = stats.ratio([1.0, None, 3.0], [1.0, 2.0, None])
    assert r is not None and r.rounds == 1 and r.median == 1.0
    assert stats.ratio([None], [1.0]) is None


def test_bootstrap_is_deterministic() -> None:
    values = [0.97, 1.01, 0.99, 1.03, 0.95, 1.0, 0.98]
    assert stats.bootstrap(values) == stats.bootstrap(list(values))


@given(st.lists(st.floats(0.5, 1.5), min_size=1, max_size=25))
def test_interval_holds_the_median_within_the_range(values: list[float]) -> None:
    low, high = stats.bootstrap(values, resamples=200)
    assert min(values) <= low <= high <= max(values)


@pytest.mark.parametrize(("low", "high", "rounds", "words"), [
    (0.95, 0.99, 10, stats.SLOWER), (1.01, 1.05, 10, stats.FASTER),
    (0.98, 1.02, 10, stats.SAME), (0.90, 0.95, 3, stats.FEW)])
def test_verdict_in_words(low: float, high: float, rounds: int, words: str) -> None:
    assert stats.verdict(low, high, rounds) == words


def test_rotation_puts_each_mode_first_in_turn() -> None:
    assert stats.rotation(["A", "B", "C"], 4) == [["A", "B", "C"], ["B", "C", "A"],
                                                  ["C", "A", "B"], ["A", "B", "C"]]


# --- the document and the table ---------------------------------------------------------


def rounds_from(values: dict[str, list[float]]) -> list[dict]:
    """Rounds where every metric equals ``values[mode][round]``."""
    n = len(values["bare"])
    return [{"round": i + 1, "order": list(values),
             "results": {mode: {"seconds": 1.0, "figures": {"HPL_Tflops": v[i],
                                                            "StarSTREAM_Triad": 2 * v[i]}}
                         for mode, v in values.items()}} for i in range(n)]


def test_document_summarizes_every_metric_from_its_rounds() -> None:
    values = {"bare": [10.0, 11.0, 9.0, 10.0, 12.0], "module": [9.9, 11.0, 9.1, 9.5, 12.0],
              "runtime": [10.1, 10.0, 9.0, 10.2, 11.0]}
    doc = report.document({"ranks": 1, "problem": {"n": 3000}, "runtime": "charliecloud"},
                          list(values), rounds_from(values))
    assert set(doc["metrics"]) == {"HPL_Tflops", "StarSTREAM_Triad"}
    hpl = doc["metrics"]["HPL_Tflops"]
    assert hpl["median"]["bare"] == 10.0
    expected = statistics.median(m / b for m, b in zip(values["module"], values["bare"],
                                                        strict=True))
    assert hpl["ratio"]["module"]["median"] == expected
    assert "bare" not in hpl["ratio"]


def test_table_has_a_row_per_metric_and_a_column_per_mode() -> None:
    values = {"bare": [10.0] * 5, "module": [9.0] * 5, "runtime": [10.0] * 5}
    doc = report.document({"ranks": 1, "problem": {"n": 3000}, "runtime": "charliecloud"},
                          list(values), rounds_from(values))
    t = report.table(doc)
    assert [c.header for c in t.columns] == ["metric", "bare", "module", "ch-run",
                                             "module/bare", "ch-run/bare"]
    assert t.row_count == 2
    v = report.verdicts(doc)
    words = list(v.columns[-1].cells)
    assert words.count(stats.SLOWER) == 2 and words.count(stats.SAME) == 2
