"""The GPU speed targets: obce against torch on the same card, timed with CUDA events.

    python benchmarks/gpu_targets.py [--out benchmarks/results]

For each case (the arrays of ``cases.py``, as on the CPU): obce with the default check (one 4-byte
copy back), which the targets are judged on, and with check_finite=False (fully asynchronous);
torch's baseline (sort + diff + max for 1-D clouds, cdist + a batched Prim loop for d > 1); and the
bandwidth floor (input bytes once over the copy bandwidth measured in the same run). Medians over
repeated runs after warm-up. obce's λ on the GPU is checked against obce on the CPU (itself tested
against scipy) before anything is timed: a disagreement beyond rtol 1e-5 stops the script.

One call's time includes the host's work before the kernel starts (the GPU idles meanwhile), so
two more columns split it: the kernels' own device time (torch profiler) and the time per call
when up to 50 calls are queued back to back (the larger of host and device time per call). The
smallest case is nearly all fixed cost. For d > 1 the cluster kernel (OBCE_CUDA_PRIM=cluster) is timed
too, beside the default matrix path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases
import numpy as np
import peers

import obce
from obce._io import atomic_write_text

RTOL = 1e-5
# (case of cases.py, clouds taken from it or None for all, target ms or None)
CASES = [
    ("1d-bert-layer", 32, None),  # the fixed cost of a call
    ("1d-bert-base", None, 0.1),
    ("1d-bert-large", None, 0.25),
    ("1d-bert-layer", None, None),
    ("1d-768x3000", None, None),
    ("d64-144x150", None, None),
    ("d64-144x1500", None, 5.0),
    ("d64-12x3000", None, 10.0),
    ("d8-1x20000", None, None),
    ("d64-1x20000", None, None),
]


def median_ms(fn, min_time_s: float = 0.3, max_reps: int = 200, warmup: int = 3) -> float:
    """Median of event-timed runs after warm-up (at least 3 runs, more until min_time_s)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, spent = [], 0.0
    while len(times) < max_reps and (spent < min_time_s or len(times) < 3):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        t = start.elapsed_time(stop)
        times.append(t)
        spent += t / 1e3
    return statistics.median(times)


def queued_ms(fn, one_call_ms: float, max_calls: int = 50, repeats: int = 5) -> float:
    """Time per call with calls queued back to back: host launch cost overlaps the GPU. As many
    calls as fit ~0.1 s (2 to max_calls): the slow cases are all device time anyway."""
    calls = max(2, min(max_calls, int(100 / one_call_ms)))
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    return statistics.median(times)


def device_ms(fn, one_call_ms: float, max_calls: int = 20) -> float | None:
    """Device time per call of everything fn runs on the GPU (kernels, memsets, copies), from the
    torch profiler, over as many calls as fit ~0.2 s (2 to max_calls); None where the profiler
    gives no device times."""
    from torch.profiler import ProfilerActivity, profile

    calls = max(2, min(max_calls, int(200 / one_call_ms)))
    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    except (RuntimeError, AssertionError) as error:  # no CUDA profiling here: the other columns still stand
        print(f"profiler: {error}", file=sys.stderr)
        return None
    total_us = sum(event.self_device_time_total for event in prof.key_averages())
    return total_us / 1e3 / calls if total_us > 0 else None


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a))
    return 2 * a.numel() / (ms / 1e3)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def baseline(x):
    return peers.torch_sort_diff_tensor(x) if x.dim() == 2 else peers.torch_prim_tensor(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    info = obce.build_info()
    card = torch.cuda.get_device_name()
    rows = []
    for case_name, clouds, target in CASES:
        acts = cases.by_name(case_name).generate()
        acts = acts if clouds is None else peers.subset(acts, clouds)
        name = case_name if clouds is None else f"{case_name}, first {clouds} clouds"
        x = torch.from_numpy(np.ascontiguousarray(acts)).cuda()
        want = obce.fast_death_radii(acts).astype(np.float64)
        got = obce.fast_death_radii(x).double().cpu().numpy()
        rel_err = float((np.abs(got - want) / np.maximum(np.abs(want), 1e-30)).max())
        if not rel_err <= RTOL:
            sys.exit(f"{name}: obce on the GPU disagrees with obce on the CPU (max rel err {rel_err:.2e})")
        t_async = median_ms(lambda x=x: obce.fast_death_radii(x, check_finite=False))
        t_checked = median_ms(lambda x=x: obce.fast_death_radii(x))
        t_queued = queued_ms(lambda x=x: obce.fast_death_radii(x, check_finite=False), t_async)
        t_device = device_ms(lambda x=x: obce.fast_death_radii(x, check_finite=False), t_async)
        t_cluster = None
        if x.dim() == 3:  # d > 1: the cluster kernel too, which the matrix path replaces where it fits
            os.environ["OBCE_CUDA_PRIM"] = "cluster"
            t_cluster = median_ms(lambda x=x: obce.fast_death_radii(x, check_finite=False))
            del os.environ["OBCE_CUDA_PRIM"]
        t0 = time.perf_counter()
        t_torch = median_ms(lambda x=x: baseline(x), min_time_s=1.0, max_reps=10, warmup=1)
        floor_us = x.numel() * x.element_size() / bandwidth * 1e6
        rows.append(
            dict(
                case=name,
                shape=list(x.shape),
                obce_ms=t_async,
                obce_checked_ms=t_checked,
                obce_queued_ms=t_queued,
                obce_device_ms=t_device,
                obce_cluster_ms=t_cluster,
                torch_ms=t_torch,
                speedup=t_torch / t_checked,
                target_ms=target,
                met=None if target is None else t_checked <= target,
                floor_us=floor_us,
                max_rel_err_vs_cpu=rel_err,
                card=card,
                build=info,
                copy_bandwidth_gb_s=bandwidth / 1e9,
                seconds=time.perf_counter() - t0,
            )
        )
        print(
            f"{name}: obce {t_checked:.4f} ms (unchecked {t_async:.4f}, device {_ms(t_device)}), "
            f"torch {t_torch:.3f} ms, err vs CPU {rel_err:.1e}",
            flush=True,
        )

    lines = [
        f"GPU: {card}; copy bandwidth {bandwidth / 1e9:.0f} GB/s; obce {info['version']} "
        f"(CUDA {info['cuda_version']}, archs {info['cuda_archs']}); float32, torch {torch.__version__}",
        "",
        "| case | obce ms | obce ms (check_finite=False) | obce device ms | obce queued ms/call | cluster kernel ms "
        "| torch ms | speed-up | target | floor µs | max rel err vs CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target_ms"] is None else f"≤ {r['target_ms']} ms: {'MET' if r['met'] else 'MISSED'}"
        lines.append(
            f"| {r['case']} | {r['obce_checked_ms']:.4f} | {r['obce_ms']:.4f} | {_ms(r['obce_device_ms'])} | "
            f"{r['obce_queued_ms']:.4f} | {_ms(r['obce_cluster_ms'])} | {r['torch_ms']:.3f} | "
            f"{r['speedup']:.0f}× | {target} | {r['floor_us']:.1f} | {r['max_rel_err_vs_cpu']:.1e} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_targets_" + card.replace(" ", "_")
    command = "\n\nCommand: python benchmarks/gpu_targets.py\n"
    atomic_write_text(args.out / f"{stem}.md", table + command, overwrite=True)
    atomic_write_text(args.out / f"{stem}.jsonl", "".join(json.dumps(r) + "\n" for r in rows), overwrite=True)


if __name__ == "__main__":
    main()
