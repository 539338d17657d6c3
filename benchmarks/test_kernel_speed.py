"""pytest-benchmark suite for the λ kernel: obce and its main peers on a few representative cases.

Run with ``pytest benchmarks/ --benchmark-only``; ``pytest tests/`` (the test suite) never
collects it. Without ``--benchmark-only`` the checks of the benchmark code itself run too.
Peers that loop over clouds in Python run on the first clouds of a case, and so does obce, in a
group of their own. Every tool's result is checked against obce's λ before it is benchmarked. obce
runs on all cores and on one thread (most peers compute on one).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

obce = pytest.importorskip("obce")

import bench_kernel  # noqa: E402 (after the skip: needs obce)
import cases  # noqa: E402
import peers  # noqa: E402

CASES = ("1d-bert-layer", "1d-768x3000", "d64-144x150", "d64-144x1500")
TOOLS = ("numpy-sort-diff", "numpy-sort-rows", "numba-prim", "fastcluster", "scipy-linkage", "ripser")
# Clouds given to a peer too slow for a whole case per round (a Python loop over clouds, or numba's
# Prim, O(n²) on 1-D clouds too), so a round stays well under a second. obce runs on the whole case
# and on this subset, and each pytest-benchmark group holds runs on the same clouds only.
SUBSET = {"1d-bert-layer": 64, "1d-768x3000": 2, "d64-144x150": 16, "d64-144x1500": 2}
SLOW_VECTORIZED = {("1d-768x3000", "numba-prim")}


def _runs():
    """(case, tool, clouds timed) of every benchmark: obce on each case and its subset, each peer once."""
    for name in CASES:
        case = cases.by_name(name)
        yield name, "obce", case.n_clouds
        yield name, bench_kernel.OBCE_ONE_THREAD.name, case.n_clouds
        yield name, "obce", SUBSET[name]
        for tool in TOOLS:
            peer = peers.ALL[tool]
            if case.kind in peer.kinds:
                slow = peer.per_cloud or (name, tool) in SLOW_VECTORIZED
                yield name, tool, SUBSET[name] if slow else case.n_clouds


@functools.cache
def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The case's array and obce's λ for it (the reference), made once per session."""
    acts = cases.by_name(name).generate()
    return acts, np.asarray(obce.fast_death_radii(acts), dtype=np.float64)


def _peer(tool: str):
    if tool == "obce":
        return bench_kernel.OBCE
    if tool == bench_kernel.OBCE_ONE_THREAD.name:
        return bench_kernel.OBCE_ONE_THREAD
    if tool not in peers.PEERS:
        pytest.skip(f"{tool} not installed: {peers.MISSING.get(tool)}")
    return peers.PEERS[tool]


@pytest.mark.parametrize(("name", "tool", "k"), list(_runs()))
def test_cpu(benchmark, name, tool, k):
    case = cases.by_name(name)
    peer = _peer(tool)
    acts, lam = data(name)
    benchmark.group = f"{name}: {case.describe}; {k:,} of {case.n_clouds:,} clouds"
    benchmark.extra_info.update(
        clouds_timed=k, tool=tool, threads=peer.threads, build_info=json.dumps(obce.build_info())
    )
    clouds = peers.subset(acts, k)
    np.testing.assert_allclose(peer.fn(clouds), lam[:k], rtol=bench_kernel.RTOL)  # a wrong tool is not timed
    benchmark(peer.fn, clouds)


@pytest.mark.cuda
@pytest.mark.parametrize("tool", ("obce", "torch-sort-diff", "torch-prim"))
@pytest.mark.parametrize("name", CASES)
def test_cuda(benchmark, name, tool):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    case = cases.by_name(name)
    peer = bench_kernel.OBCE_CUDA if tool == "obce" else _peer(tool)
    if case.kind not in peer.kinds:
        pytest.skip(f"{tool} does not take {case.kind} clouds")
    acts, lam = data(name)
    x = torch.from_numpy(acts).cuda()

    def run(t):
        out = peer.tensor_fn(t)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"cuda {name}: {case.describe}"
    benchmark.extra_info.update(gpu=torch.cuda.get_device_name(), tool=tool)
    np.testing.assert_allclose(run(x).double().cpu().numpy(), lam, rtol=bench_kernel.RTOL)
    benchmark(run, x)


# --- the benchmark code itself (skipped by --benchmark-only) ------------------------------------


def test_cases_are_seeded():
    case = cases.by_name("d64-144x150")
    a, b = case.generate(), case.generate()
    assert a.dtype == np.float32 and a.shape == case.shape
    np.testing.assert_array_equal(a, b)
    bert = cases.by_name("1d-bert-layer").generate()
    assert bert.shape == (150, 3072)


@pytest.mark.parametrize("tool", sorted(peers.PEERS))
def test_peer_agrees_with_scipy(tool):
    """Every peer (the torch ones on CPU tensors) on clouds with ties and a known λ."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform

    peer = peers.PEERS[tool]
    rng = np.random.default_rng(3)
    one_d = np.round(rng.normal(size=(40, 5)), 1).astype(np.float32)  # duplicates on purpose
    n_d = rng.normal(size=(3, 40, 4)).astype(np.float32)
    for acts in (one_d, n_d):
        if ("1d" if acts.ndim == 2 else "nd") not in peer.kinds:
            continue
        want = [minimum_spanning_tree(squareform(pdist(c.astype(np.float64)))).data.max() for c in peers.clouds(acts)]
        np.testing.assert_allclose(peer.fn(acts), want, rtol=1e-5)


def test_subset_choice():
    loop = peers.PEERS.get("ripser") or peers.Peer("loop", None, "numpy", "numpy", per_cloud=True)
    assert bench_kernel.choose_subset(loop, 3072, 0.005, 1.0) == 128
    assert bench_kernel.choose_subset(loop, 100, 0.005, 1.0) == 100
    assert bench_kernel.choose_subset(loop, 768, 3.0, 1.0) == 1
    vectorized = peers.Peer("vec", None, "numpy", "numpy")
    assert bench_kernel.choose_subset(vectorized, 768, 0.01, 1.0) == 768


def test_cuda_path_setup():
    """What --device cuda runs: obce on the CPU plus the torch peers, and a clear error without a GPU."""
    pytest.importorskip("torch")
    import torch

    names = [p.name for p, _ in bench_kernel.tools_for(cases.by_name("d64-144x150"), "cuda")]
    assert names == ["obce-cpu", "torch-prim"]
    names = [p.name for p, _ in bench_kernel.tools_for(cases.by_name("1d-bert-layer"), "cuda")]
    assert names == ["obce-cpu", "torch-sort-diff"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="cuda"):
            bench_kernel.main(["--device", "cuda", "--cases", "d64-144x150"])


def test_script_end_to_end(tmp_path):
    code = bench_kernel.main(
        [
            "--cases",
            "d64-144x150",
            "scale-clouds-d64-1",
            "scale-clouds-d64-12",
            "--tools",
            "numba-prim",
            "ripser",
            "--no-memory",
            "--out",
            str(tmp_path),
            "--name",
            "t",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    by = {(r["case"], r["tool"]): r for r in records}
    assert by[("d64-144x150", "obce")]["status"] == "ok"
    assert by[("d64-144x150", "numba-prim")]["status"] == "ok"
    one = by[("d64-144x150", "obce-1-thread")]  # beside every case, whatever --tools names
    assert one["status"] == "ok" and one["threads"] == 1 and len(one["times_s"]) >= 3
    with pytest.raises(SystemExit, match="name its files with --name"):  # a part never replaces the full run's files
        bench_kernel.main(["--cases", "d64-144x150", "--out", str(tmp_path)])
    assert "floor_fraction" in by[("d64-144x150", "obce")]
    assert by[("d64-144x150", "ripser")]["verdict"] in ("PASS", "MISS")
    md = (tmp_path / "t.md").read_text()
    assert "obce speedup" in md and "growth order" in md
    assert (tmp_path / "t.png").stat().st_size > 0
