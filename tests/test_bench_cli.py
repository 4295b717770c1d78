"""``hpcstack bench`` end to end, as the ordinary test user: the image built by hpcstack's
builder (reused when cached), the module deployed, hpcc run bare, through the wrapper and
through ch-run, two ranks each under the host's mpirun (the hybrid model).

Nothing is asserted about speed: the test checks the JSON's structure, the chart, and
that every ratio is the one its recorded rounds give.
"""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import User, need
from hpcstack.bench import stats
from test_build import hello  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

MODES = ["bare", "module", "runtime"]


@pytest.fixture(scope="module")
def result(user: User) -> tuple[dict, bytes, str]:
    need("hpcc", "mpirun", "ch-run", "mmdebstrap", "unshare", "mksquashfs", "siftool")
    work = user.workdir("bench")
    proc = user.hpcstack("bench", "--quick", "--rounds", "2", "--ranks", "2",
                         "--json", "bench.json", "--plot", "bench.png", cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return (json.loads((work / "bench.json").read_text()), (work / "bench.png").read_bytes(),
            proc.stdout)


def test_json_structure(result: tuple[dict, bytes, str]) -> None:
    doc, _, _ = result
    assert doc["schema"] == 1 and doc["modes"] == MODES and doc["ranks"] == 2
    assert doc["problem"] == {"n": 3000, "nb": 192, "p": 1, "q": 2}
    assert {"hpcc", "libblas.so.3", "libopenblas.so.0"} <= set(doc["checksums"])
    assert doc["runtime"] == "charliecloud" and doc["module"].startswith("hpcc-bench/")
    assert doc["commands"]["bare"][:3] == ["mpirun", "-np", "2"]
    assert [r["order"] for r in doc["rounds"]] == stats.rotation(MODES, 2)
    for rnd in doc["rounds"]:
        assert set(rnd["results"]) == set(MODES)
        for run in rnd["results"].values():
            assert run["seconds"] > 0 and run["figures"]["HPL_Tflops"] > 0
            assert run["figures"]["RandomlyOrderedRingBandwidth_GBytes"] > 0  # 2 ranks talked
    assert {"HPL_Tflops", "StarSTREAM_Triad", "StarDGEMM_Gflops"} <= set(doc["metrics"])


def test_every_ratio_comes_from_the_recorded_rounds(result: tuple[dict, bytes, str]) -> None:
    doc, _, _ = result
    for key, row in doc["metrics"].items():
        bare = [r["results"]["bare"]["figures"][key] for r in doc["rounds"]]
        assert row["median"]["bare"] == statistics.median(bare)
        for mode in ("module", "runtime"):
            got = [r["results"][mode]["figures"][key] for r in doc["rounds"]]
            paired = [g / b for g, b in zip(got, bare, strict=True)]
            ratio = row["ratio"][mode]
            assert ratio["median"] == pytest.approx(statistics.median(paired), rel=1e-12)
            assert (ratio["min"], ratio["max"]) == (min(paired), max(paired))
            assert (ratio["low"], ratio["high"]) == stats.bootstrap(paired)
            assert ratio["verdict"] == stats.FEW  # two rounds say nothing


def test_table_and_chart(result: tuple[dict, bytes, str]) -> None:
    _, png, stdout = result
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    for words in ("HPL Gflop/s", "STREAM Triad GB/s", "ch-run/bare", "module/bare",
                  stats.FEW):
        assert words in stdout


def test_partition_runs_the_benchmark_as_a_slurm_job(user: User, result: tuple[dict, bytes, str],
                                                     cluster) -> None:  # type: ignore[no-untyped-def]
    """``--partition``: a batch job on the real single-node Slurm runs the same benchmark
    (the image built for ``result`` is reused from the cache) and its JSON comes back."""
    work = user.workdir("bench-slurm")
    proc = user.hpcstack("bench", "--quick", "--rounds", "1", "--partition", "debug",
                         "--json", "bench.json", cwd=work, env=cluster.env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + cluster.logs()
    doc = json.loads((work / "bench.json").read_text())
    assert doc["partition"] == "debug" and doc["job"] > 0
    assert set(doc) - {"partition", "job"} == set(result[0])
    assert doc["modes"] == MODES and len(doc["rounds"]) == 1 and doc["ranks"] == 1
    info = cluster.client("scontrol", "show", "job", "-o", str(doc["job"])).stdout
    assert "JobState=COMPLETED" in info and "Partition=debug" in info, info


def test_image_without_the_hosts_hpcc_is_refused(user: User, hello) -> None:  # noqa: F811
    """``--image`` holding another build (here: no hpcc at all) is refused in one line,
    before anything is deployed or run."""
    work = user.workdir("bench-refuse")
    proc = user.hpcstack("bench", "--quick", "--rounds", "1", "--image", str(hello),
                         "--json", "bench.json", cwd=work, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hpcstack: error: {hello}: not the host's hpcc build, "
                                  "refusing to compare: "), proc.stderr
    assert "hpcc: only on the host" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (work / "bench.json").exists()


def test_apptainer_runtime(user: User, apptainer) -> None:  # type: ignore[no-untyped-def]
    """``--runtime apptainer`` with the real Apptainer: the module's wrapper and the
    runtime's own command line run the very same hpcc (checksummed inside), two ranks
    each under the host's mpirun (the image is hpcstack's own build, cached per user)."""
    need("hpcc", "mpirun", "mmdebstrap", "unshare", "mksquashfs", "siftool")
    work = user.workdir("bench-apptainer")
    proc = user.hpcstack("bench", "--quick", "--rounds", "1", "--ranks", "2", "--runtime",
                         "apptainer", "--json", "bench.json", cwd=work,
                         env={"PATH": apptainer.path}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((work / "bench.json").read_text())
    assert doc["runtime"] == "apptainer" and doc["module"].startswith("hpcc-bench/")
    assert {"hpcc", "libblas.so.3", "libopenblas.so.0"} <= set(doc["checksums"])
    runtime_cmd = doc["commands"]["runtime"]
    assert runtime_cmd[runtime_cmd.index("apptainer") + 1] == "exec"
    for run in doc["rounds"][0]["results"].values():
        assert run["figures"]["HPL_Tflops"] > 0
        assert run["figures"]["RandomlyOrderedRingBandwidth_GBytes"] > 0  # 2 ranks talked
    assert "apptainer/bare" in proc.stdout and "module/bare" in proc.stdout
