"""Time ``obce.fast_death_radii`` against other ways of computing λ, case by case.

Every case (``cases.py``) runs once against every peer (``peers.py``) in this process. Each peer's
λ is first checked against obce's (rtol 1e-5, float32); a mismatch is reported and not timed.
Peers that loop over clouds in Python are timed on the first clouds of a case and scaled up
linearly (the table says "64 of 3072, ×48"). Times are medians of warm runs. Peak extra memory
is measured per tool in a fresh process (peak RSS from /proc after resetting it).

Results go to ``benchmarks/results/kernel_cpu.{jsonl,md,png}`` (``kernel_gpu.*`` with
``--device cuda``: obce on CUDA tensors against the torch peers, timed with CUDA events).

Usage::

    python benchmarks/bench_kernel.py                       # every case on the CPU, ~12 minutes
    python benchmarks/bench_kernel.py --device cuda         # the same cases on a GPU
    python benchmarks/bench_kernel.py --cases 1d-bert-layer d64-144x150 --no-memory --name try
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as case_defs
import machine as machine_defs
import peers as peer_defs
from peers import Peer, n_clouds, subset

RTOL = 1e-5
RESULTS = Path(__file__).resolve().parent / "results"


# --- the machine --------------------------------------------------------------------------------


def gemm_gflops(device: str, repeats: int = 5) -> float:
    """float32 matmul rate in this process, the d > 1 yardstick's rate.

    numpy 2048² on the CPU; torch 8192² on a GPU (TF32 off, torch's default for matmul).
    """
    size = 8192 if device == "cuda" else 2048
    rng = np.random.default_rng(0)
    a = to_device(rng.standard_normal((size, size), dtype=np.float32), device)
    b = to_device(rng.standard_normal((size, size), dtype=np.float32), device)
    a @ b
    times = [timed(lambda x: x @ b, a, device)[0] for _ in range(repeats)]
    return 2.0 * size**3 / float(np.median(times)) / 1e9


# --- the tools ----------------------------------------------------------------------------------


def _obce_numpy(acts, n_threads: int | None = None):
    import obce

    # Every core by count, not -1: a single large cloud's Prim steps are split over threads only when asked.
    n_threads = n_threads or len(os.sched_getaffinity(0))
    return np.asarray(obce.fast_death_radii(acts, n_threads=n_threads), dtype=np.float64)


def _obce_tensor(x):
    import obce

    return obce.fast_death_radii(x)


def _obce_cuda(x):
    return _obce_tensor(x).double().cpu().numpy()


OBCE = Peer("obce", _obce_numpy, "obce", "obce", threads=None)
OBCE_CUDA = Peer("obce", _obce_cuda, "obce", "obce", device="cuda", tensor_fn=_obce_tensor)
# On a GPU run, obce on the CPU is one more thing to compare with.
OBCE_CPU = Peer("obce-cpu", _obce_numpy, "obce", "obce", threads=None)
# Most peers compute on one thread: obce on one thread too shows what of each ratio is threads.
OBCE_ONE_THREAD = Peer("obce-1-thread", functools.partial(_obce_numpy, n_threads=1), "obce", "obce", threads=1)


def tools_for(case, device: str, only=None) -> list[tuple[Peer, str | None]]:
    """(peer, skip reason or None) for every peer that takes this case's kind on ``device``."""
    out = []
    candidates = [OBCE_CPU] if device == "cuda" else [OBCE_ONE_THREAD]
    candidates += [p for p in peer_defs.PEERS.values() if p.device == device]
    for peer in candidates:
        if case.kind not in peer.kinds or (only and peer.name not in (*only, OBCE_ONE_THREAD.name)):
            continue
        if device == "cpu" and case.tools is not None and peer.name not in (*case.tools, OBCE_ONE_THREAD.name):
            continue
        out.append((peer, case.skip.get(peer.name) if device == "cpu" else None))
    return out


def threads_of(peer: Peer, machine: dict) -> int | str:
    """CPU threads a peer computes on ("GPU" for one that runs on the device)."""
    if peer.device == "cuda":
        return "GPU"
    if peer.threads is not None:
        return peer.threads
    return machine["build_info"]["threads"] if peer.name.startswith("obce") else machine["cores"]


def tiny(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (10, 3) if kind == "1d" else (2, 10, 3)
    return rng.standard_normal(shape, dtype=np.float32)


def warm_up(peer: Peer, device: str) -> str | None:
    """Import, compile (numba) and check the peer on tiny inputs; the error text if it fails."""
    for kind in peer.kinds:
        try:
            arg = to_device(tiny(kind), device if peer.device == "cuda" else "cpu")
            got = peer.fn(arg)
            want = _obce_numpy(tiny(kind))
            if not np.allclose(got, want, rtol=RTOL, atol=0):
                return f"wrong λ on a tiny {kind} input: {got} vs obce {want}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def to_device(acts: np.ndarray, device: str):
    if device == "cpu":
        return acts
    import torch

    return torch.from_numpy(acts).to(device)


# --- timing -------------------------------------------------------------------------------------


def timed(fn, arg, device: str) -> tuple[float, object]:
    """One call, in seconds: perf_counter on the CPU, CUDA events around it on a GPU."""
    if device == "cuda":
        import torch

        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = fn(arg)
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3, out
    t0 = time.perf_counter()
    out = fn(arg)
    return time.perf_counter() - t0, out


def repeat(fn, arg, device: str, first: float, target_s: float = 1.0) -> list[float]:
    """More runs after a first one of ``first`` seconds: about ``target_s`` in all, 3 to 25. Never fewer than 3,
    so that the median is a warm run's even for a tool whose first run at this size was also its first call."""
    n = int(min(25, max(3, target_s / max(first, 1e-6))))
    return [first] + [timed(fn, arg, device)[0] for _ in range(n - 1)]


def check(got, want) -> tuple[float, str | None]:
    """Largest relative error against obce's λ, and what is wrong if it exceeds ``RTOL``."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf"), f"shape {got.shape}, obce's is {want.shape}"
    err = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    err[~np.isfinite(got)] = np.inf
    bad = int(np.argmax(err))
    if err[bad] <= RTOL:
        return float(err[bad]), None
    return float(err[bad]), f"cloud {bad}: {float(got[bad])!r} vs obce {float(want[bad])!r}"


def choose_subset(peer: Peer, total: int, per_cloud_s: float, budget_s: float) -> int:
    """How many clouds to time: all if the estimate fits the budget, else a power of two that does.

    Python loops over clouds get ``budget_s``; vectorized peers up to 10× that before subsetting.
    """
    allowed = budget_s if peer.per_cloud else 10 * budget_s
    if per_cloud_s * total <= allowed:
        return total
    return min(total, max(1, 2 ** int(math.log2(max(1.0, budget_s / per_cloud_s)))))


# --- memory (a fresh process per tool) ----------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def probe_memory(case_name: str, tool: str, k: int) -> dict:
    """Peak extra RSS of one run of ``tool`` on the first ``k`` clouds (called in a subprocess)."""
    case = case_defs.by_name(case_name)
    peer = {OBCE.name: OBCE, OBCE_ONE_THREAD.name: OBCE_ONE_THREAD}.get(tool) or peer_defs.PEERS[tool]
    peer.fn(tiny(case.kind))
    arg = subset(case.generate(), k)
    # Hand freed heap pages back first, or a tool's allocations reuse them without raising RSS.
    ctypes.CDLL(None).malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (lower bound)"
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    peer.fn(arg)
    seconds = time.perf_counter() - t0
    if method.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": max(0, peak - before) / 1024, "seconds": seconds, "method": method}


def measure_memory(case, tool: str, k: int) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-memory", case.name, tool, str(k)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"    memory probe for {tool} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- one case -----------------------------------------------------------------------------------


def run_case(case, args, machine: dict) -> list[dict]:
    device = args.device
    acts = case.generate()
    arg = to_device(acts, device)
    total = n_clouds(acts)
    obce_peer = OBCE_CUDA if device == "cuda" else OBCE
    base = {
        "case": case.name,
        "group": case.group,
        "device": device,
        "n_clouds": case.n_clouds,
        "n_points": case.n_points,
        "dim": case.dim,
        "layout": list(case.shape),
        "describe": case.describe,
        **{k: machine[k] for k in ("cpu", "cores", "gpu", "build_info")},
        "gemm_gflops": machine["gemm_gflops"],
    }
    fn = obce_peer.tensor_fn or obce_peer.fn
    lam = fn(arg)  # warm-up, and the reference every peer is checked against
    lam = np.asarray(lam.double().cpu().numpy() if device == "cuda" else lam, dtype=np.float64)
    if device == "cuda":
        import torch

        in_use = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = repeat(fn, arg, device, timed(fn, arg, device)[0])
    obce_s = float(np.median(times))
    rec = {
        **base,
        "tool": "obce",
        "threads": threads_of(obce_peer, machine),
        "version": machine["build_info"].get("version"),
        "status": "ok",
        "clouds_timed": total,
        "scale": 1.0,
        "times_s": times,
        "median_s": obce_s,
        "full_s": obce_s,
        "per_cloud_s": obce_s / total,
        "max_rel_err": 0.0,
    }
    if case.kind == "nd":
        floor_s = case.pair_flops / (machine["gemm_gflops"] * 1e9)
        rec.update(floor_s=floor_s, floor_fraction=floor_s / obce_s)
    if device == "cuda":
        rec["torch_alloc_peak_mib"] = (torch.cuda.max_memory_allocated() - in_use) / 2**20
    records = [rec]

    for peer, reason in tools_for(case, device, args.tools):
        rec = {**base, "tool": peer.name, "threads": threads_of(peer, machine), "version": peer.version}
        rec["per_cloud_loop"] = peer.per_cloud
        records.append(rec)
        if peer.name in args.broken:
            rec.update(status="broken", reason=args.broken[peer.name])
            continue
        if reason:
            rec.update(status="skipped", reason=reason)
            continue
        on_device = peer.device == "cuda"
        fn = peer.tensor_fn if on_device else peer.fn
        peer_arg = arg if on_device else acts
        if device == "cuda" and on_device:
            in_use = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        where = device if on_device else "cpu"
        # Pilot runs on 1, 16, 256, ... clouds until one takes a measurable time.
        k0 = 1
        t0, out = timed(fn, subset(peer_arg, k0), where)
        while t0 < 0.05 * args.budget and k0 < total:
            k0 = min(total, 16 * k0)
            t0, out = timed(fn, subset(peer_arg, k0), where)
        k = choose_subset(peer, total, t0 / k0, args.budget)
        if k != k0:
            t0, out = timed(fn, subset(peer_arg, k), where)
        got = out.double().cpu().numpy() if on_device else out
        rel, wrong = check(got, lam[:k])
        rec["max_rel_err"] = rel
        if wrong:
            msg = f"{peer.name} disagrees with obce on {case.name}: {wrong} (rel err {rel:.3g})"
            print(f"\n!!! MISMATCH !!! {msg}\n", file=sys.stderr, flush=True)
            rec.update(status="mismatch", reason=msg)
            continue
        times = repeat(fn, subset(peer_arg, k), where, t0)
        med = float(np.median(times))
        scale = total / k
        rec.update(
            status="ok",
            clouds_timed=k,
            scale=scale,
            times_s=times,
            median_s=med,
            full_s=med * scale,
            per_cloud_s=med / k,
            speedup=med * scale / obce_s,
        )
        if device == "cuda" and on_device:
            rec["torch_alloc_peak_mib"] = (torch.cuda.max_memory_allocated() - in_use) / 2**20

    if case.memory and not args.no_memory and device == "cpu":
        for rec in records:
            if rec["status"] == "ok":
                mem = measure_memory(case, rec["tool"], rec["clouds_timed"])
                if mem:
                    rec["peak_rss_mib"] = mem["peak_rss_mib"]
                    rec["memory_method"] = mem["method"]
    evaluate_targets(case, records)
    return records


def evaluate_targets(case, records: list[dict]) -> None:
    """Attach (target, measured, PASS/MISS) to the records the case's targets name."""
    by_tool = {r["tool"]: r for r in records}
    for name, least in case.targets:
        if name == "best":
            timed_peers = [r for r in records if r["status"] == "ok" and not r["tool"].startswith("obce")]
            if not timed_peers:
                continue
            rec = min(timed_peers, key=lambda r: r["full_s"])
            label = f"≥ {least:g}× (best peer)"
        else:
            rec = by_tool.get(name)
            if rec is None:
                continue
            label = f"≥ {least:g}×"
        if rec.get("status") != "ok":
            rec.update(target=label, verdict="MISS (not timed)")
            continue
        rec.update(target=label, verdict="PASS" if rec["speedup"] >= least else "MISS")


# --- output -------------------------------------------------------------------------------------


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.3g} µs"
    return f"{s * 1e9:.3g} ns"


def _fmt_x(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}×"
    return f"{x:.4f}×" if 0.99 < x < 1.01 else f"{x:.3g}×"  # so 0.9996 does not print as 1


_SPEEDUP_COLUMNS = "| obce speedup | target | verdict |"


def case_table(records: list[dict]) -> list[str]:
    first = records[0]
    head = f"{first['case']}: {first['describe']}"
    mem_col = "GPU peak (torch alloc)" if first["device"] == "cuda" else "peak RSS Δ"
    lines = [
        f"#### {head}",
        "",
        f"| tool | version | threads | clouds timed | time (whole case) | per cloud | {mem_col} {_SPEEDUP_COLUMNS}",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        mem = r.get("torch_alloc_peak_mib", r.get("peak_rss_mib"))
        mem = "—" if mem is None else f"{mem:,.1f} MiB"
        if r["status"] != "ok":
            lines.append(f"| {r['tool']} | {r['version']} | | {r['status']}: {r['reason']} | | | | | | |")
            continue
        if r["scale"] == 1:
            clouds = f"{r['clouds_timed']:,} (all)"
        else:
            clouds = f"{r['clouds_timed']:,} of {r['n_clouds']:,}, ×{r['scale']:,.4g}"
        if r["tool"] == "obce":
            ratio = "—"
            target = (
                f"GEMM yardstick {_fmt_s(r['floor_s'])} at {r['gemm_gflops']:.0f} GFLOP/s: "
                f"{r['floor_fraction']:.1%} of it"
                if "floor_s" in r
                else ""
            )
        else:
            ratio = _fmt_x(r["speedup"])
            target = r.get("target", "")
        lines.append(
            f"| {r['tool']} | {r['version']} | {r.get('threads', '?')} | {clouds} | {_fmt_s(r['full_s'])} "
            f"| {_fmt_s(r['per_cloud_s'])} | {mem} | {ratio} | {target} "
            f"| {r.get('verdict', '')} |"
        )
    return [*lines, ""]


def _series(records: list[dict]) -> dict:
    """{series: {tool: [(x, full_s), ...]}} of the scaling cases."""
    out: dict = {}
    for r in records:
        if r["group"] in case_defs.SERIES and r["status"] == "ok":
            axis = case_defs.SERIES[r["group"]][0]
            out.setdefault(r["group"], {}).setdefault(r["tool"], []).append((r[axis], r["full_s"]))
    return out


def slope(points) -> float | None:
    """Growth order: log-log slope over the three largest sizes."""
    points = sorted(points)[-3:]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def scaling_table(records: list[dict]) -> list[str]:
    lines = []
    for group, tools in _series(records).items():
        axis, what = case_defs.SERIES[group]
        sizes = sorted({x for pts in tools.values() for x, _ in pts})
        lines += [
            f"#### {group}: time vs {axis} ({what})",
            "",
            "| tool | " + " | ".join(f"{s:,}" for s in sizes) + " | growth order |",
            "|---|" + "---|" * (len(sizes) + 1),
        ]
        for tool, pts in tools.items():
            got = dict(pts)
            order = slope(pts)
            lines.append(
                f"| {tool} | "
                + " | ".join(_fmt_s(got.get(s)) for s in sizes)
                + f" | {'—' if order is None else f'{axis}^{order:.2f}'} |"
            )
        lines.append("")
    return lines


def verdicts(records: list[dict]) -> list[str]:
    rows = [r for r in records if "verdict" in r]
    lines = ["| case | obce vs | target | measured | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        measured = _fmt_x(r["speedup"]) if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['case']} | {r['tool']} | {r['target']} | {measured} | {r['verdict']} |")
    floors = [r for r in records if r["tool"] == "obce" and "floor_fraction" in r and r["group"] == "main"]
    for r in floors:
        lines.append(f"| {r['case']} | GEMM yardstick | (not a target) | {r['floor_fraction']:.1%} of its rate | |")
    return [*lines, ""]


METHOD = (
    "Each peer's λ was checked against obce's (rtol 1e-5) before it was timed. Times are "
    "medians of 3 to 25 runs (obce's after an untimed call; a peer's first run at the timed size, after "
    "pilot runs on fewer clouds, counts), for the whole "
    "case, on the threads shown: peers timed on the first clouds only "
    '("64 of 3,072, ×48") are scaled up linearly. obce speedup = peer time / obce time. '
    "Peak RSS Δ: extra resident memory of one run in a fresh process (of the clouds timed). "
    "The d > 1 GEMM yardstick: n_clouds · n_points² · dim FLOPs, what a GEMM (SYRK) computing half of each "
    "cloud's pair distances as products x·y would do, at the GEMM rate above; obce computes exact differences "
    "instead (a subtract and an FMA per dimension and pair), so it is a scale, not a bound."
)
GPU_NOTE = (
    "On the GPU, times come from CUDA events; memory is the peak of torch's allocator above "
    "what was in use before the run, so buffers a tool allocates outside torch are not counted."
)


def write_markdown(path: Path, records, machine: dict, command: str, plot_name: str) -> None:
    from obce._io import atomic_write_text

    bi = machine["build_info"]
    where = machine["gpu"] or machine["cpu"]
    gemm = "torch 8192² on the GPU" if machine["gpu"] else "numpy 2048²"
    load = f"{machine['load_before']:.2f} before, {machine.get('load_after', float('nan')):.2f} after"
    lines = [
        f"# obce kernel benchmark ({machine['device']}: {where})",
        "",
        f"Command: `{command}`",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM",
        f"- GPU: {machine['gpu'] or 'none'}",
        f"- obce {bi.get('version')}: build_info `{json.dumps(bi, sort_keys=True)}`",
        f"- Python {machine['python']}, numpy {machine['numpy']}",
        f"- float32 GEMM ({gemm}): {machine['gemm_gflops']:.0f} GFLOP/s",
        f"- Date: {machine['date']}; load average (1 min) {load}",
        "",
        METHOD,
        "",
    ]
    if machine["gpu"]:
        lines += [GPU_NOTE, ""]
    lines += ["## Targets", ""]
    lines += verdicts(records)
    lines += ["## Cases", ""]
    main = [r for r in records if r["group"] == "main"]
    for name in dict.fromkeys(r["case"] for r in main):
        lines += case_table([r for r in main if r["case"] == name])
    if _series(records):  # the plot is drawn only for the scaling cases
        lines += ["## Scaling", "", f"![time vs size]({plot_name})", ""]
        lines += scaling_table(records)
    atomic_write_text(path, "\n".join(lines), overwrite=True)


def write_plot(path: Path, records, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(records)
    if not series:
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    names = sorted({tool for tools in series.values() for tool in tools} - {"obce"})
    # One colour per tool in every panel; obce drawn thick and black.
    style = {t: {"color": f"C{i % 10}", "lw": 1.2} for i, t in enumerate(names)}
    style["obce"] = {"color": "black", "lw": 2.5}
    for ax, group in zip(axes.flat, case_defs.SERIES, strict=True):
        axis, what = case_defs.SERIES[group]
        for tool, pts in sorted(series.get(group, {}).items()):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tool, **style[tool])
        ax.set(xscale="log", yscale="log", xlabel=axis, ylabel="time (s)", title=what)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    from obce._io import atomic_open

    with atomic_open(path, "wb", overwrite=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_all(out: Path, name: str, records, machine, command) -> None:
    from obce._io import atomic_write_text

    lines = "".join(json.dumps(r, default=float) + "\n" for r in records)
    atomic_write_text(out / f"{name}.jsonl", lines, overwrite=True)
    write_markdown(out / f"{name}.md", records, machine, command, f"{name}.png")
    where = machine["gpu"] or machine["cpu"]
    write_plot(out / f"{name}.png", records, f"obce λ kernel vs peers ({where})")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: obce on CUDA tensors vs the torch peers (needs a GPU)",
    )
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="NAME",
        help="case names, or 'main' / 'scaling' (default: all)",
    )
    p.add_argument("--tools", nargs="+", metavar="PEER", help="only these peers (obce always runs)")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds per timed run of a per-cloud peer before it is subset (default 1)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    p.add_argument("--name", help="output file stem (default kernel_cpu / kernel_gpu)")
    p.add_argument("--probe-memory", nargs=3, metavar=("CASE", "TOOL", "K"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select_cases(names):
    if not names:
        return case_defs.ALL
    out = []
    for n in names:
        out += {"main": case_defs.MAIN, "scaling": case_defs.SCALING}.get(n) or [case_defs.by_name(n)]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe_memory:
        case, tool, k = args.probe_memory
        print(json.dumps(probe_memory(case, tool, int(k))))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    if (args.cases or args.tools) and not args.name:
        raise SystemExit("--cases or --tools measure a part: name its files with --name (the default is a full run)")
    if args.tools:
        unknown = set(args.tools) - set(peer_defs.PEERS) - {OBCE_CPU.name, OBCE_ONE_THREAD.name}
        if unknown:
            raise SystemExit(f"unknown or missing peers {sorted(unknown)}; have {sorted(peer_defs.PEERS)}")
    selected = select_cases(args.cases)
    name = args.name or f"kernel_{'gpu' if args.device == 'cuda' else 'cpu'}"
    command = "python benchmarks/bench_kernel.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))

    machine = machine_defs.describe(gpu=args.device == "cuda")
    machine.update(
        device=args.device,
        gemm_gflops=gemm_gflops(args.device),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        load_before=os.getloadavg()[0],
    )
    if machine["load_before"] > 0.25 * machine["cores"]:
        print(
            f"warning: load average {machine['load_before']:.2f} on {machine['cores']} cores: "
            "other work is running and times will be noisy",
            file=sys.stderr,
        )
    print(
        f"{machine['cpu']}, {machine['cores']} cores; GPU: {machine['gpu']}; "
        f"GEMM {machine['gemm_gflops']:.0f} GFLOP/s; obce {machine['build_info']}",
        flush=True,
    )
    for tool, why in peer_defs.MISSING.items():
        print(f"  not installed: {tool} ({why})")
    args.broken = {}
    for peer in [p for p in peer_defs.PEERS.values() if p.device == args.device]:
        why = warm_up(peer, args.device)
        if why:
            args.broken[peer.name] = f"failed on a tiny input: {why}"
            print(f"  !!! {peer.name} does not work: {why}", file=sys.stderr)

    records: list[dict] = []
    started = time.perf_counter()
    for case in selected:
        t0 = time.perf_counter()
        recs = run_case(case, args, machine)
        records += recs
        if case.group == "main":
            print("\n".join(case_table(recs)))
        else:
            print(
                f"{case.name}: "
                + ", ".join(f"{r['tool']} {_fmt_s(r.get('full_s'))}" for r in recs if r["status"] == "ok")
            )
        print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
        write_all(args.out, name, records, machine, command)
    machine["load_after"] = os.getloadavg()[0]
    write_all(args.out, name, records, machine, command)
    print("\n".join(scaling_table(records) + verdicts(records)))
    written = ",".join(ext for ext in ("jsonl", "md", "png") if (args.out / f"{name}.{ext}").is_file())
    print(f"total {time.perf_counter() - started:.0f} s; wrote {args.out}/{name}.{{{written}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
