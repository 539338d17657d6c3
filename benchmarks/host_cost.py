"""Where the host's time goes in one small obce call: the fixed cost that a call's event time includes.

    python benchmarks/host_cost.py [--device cuda] [--out benchmarks/results]

Times each host-side step of a call on a 32 × 150 activation matrix (the kernel's own work is
small there; one CPU thread): the whole call, unchecked and checked, and the pieces of the wrapper one by one
(output allocation, the current stream, DLPack capsules, the compiled call, the overflow check).
Host time only: loops of calls timed with perf_counter, the device synchronized between loops and
outside the timing; median over loops, in µs a call. On a GPU, the CUDA runtime calls of an
unchecked and a checked call follow (torch profiler: count and host µs per obce call, the
profiler's own cost included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.dlpack import to_dlpack

import obce
from obce import _core
from obce._io import atomic_write_text

LOOP, LOOPS = 200, 25


def host_us(fn, sync) -> float:
    """Median host time of fn over LOOPS loops of LOOP calls, in µs a call."""
    for _ in range(LOOP):
        fn()
    sync()
    per_call = []
    for _ in range(LOOPS):
        t0 = time.perf_counter_ns()
        for _ in range(LOOP):
            fn()
        per_call.append((time.perf_counter_ns() - t0) / LOOP / 1e3)
        sync()
    return statistics.median(per_call)


def runtime_calls(fn, calls: int = 200) -> list[tuple[str, float, float]]:
    """(name, count, host µs) per call of fn of every CUDA runtime call it makes, by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
    except (RuntimeError, AssertionError) as error:  # no CUDA profiling here: the timings above still stand
        print(f"profiler: {error}", file=sys.stderr)
        return []
    torch.cuda.synchronize()
    return [
        (event.key, event.count / calls, event.cpu_time_total / calls)
        for event in prof.key_averages()
        if event.key.startswith("cuda")
    ]


def steps(device: str) -> dict[str, callable]:
    acts = torch.randn(150, 32, device=device)
    out = torch.empty(32, device=device)
    cuda = device == "cuda"
    stream = torch.cuda.current_stream().cuda_stream if cuda else 0
    found = {
        "obce call, check_finite=False": lambda: obce.fast_death_radii(acts, n_threads=1, check_finite=False),
        "obce call, checked (default)": lambda: obce.fast_death_radii(acts, n_threads=1),
        "torch.empty(out)": lambda: torch.empty((32,), dtype=acts.dtype, device=acts.device),
        "acts.new_empty(out)": lambda: acts.new_empty((32,)),
        "Tensor.__dlpack__(stream=-1)": lambda: acts.__dlpack__(stream=-1),
        "torch.utils.dlpack.to_dlpack": lambda: to_dlpack(acts),
        "_core.death_radii + 2 to_dlpack": lambda: _core.death_radii(to_dlpack(acts), to_dlpack(out), 1, stream, False),
        "bool(torch.isinf(out).any())": lambda: bool(torch.isinf(out).any()),
    }
    if cuda:
        found["torch.cuda.current_stream(dev).cuda_stream"] = lambda: torch.cuda.current_stream(acts.device).cuda_stream
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is not None:
            found["torch._C._cuda_getCurrentRawStream(i)"] = lambda: raw(acts.device.index)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="folder for host_cost_<device>.{md,jsonl}")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    found = steps(args.device)
    rows = [(name, host_us(fn, sync)) for name, fn in found.items()]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"Host time per call, 32 × 150 float32 on {where} (torch {torch.__version__}, obce {obce.__version__}), "
        f"{date}; the latest run (every run is a line of host_cost_{args.device}.jsonl):",
        "",
        "| step | µs a call |",
        "|---|---|",
        *(f"| {name} | {us:.2f} |" for name, us in rows),
    ]
    if args.device == "cuda":
        for call in ("obce call, check_finite=False", "obce call, checked (default)"):
            runtime = runtime_calls(found[call])
            lines += ["", f"CUDA runtime calls of one {call} (profiled):", "", "| runtime call | count | µs |"]
            lines += ["|---|---|---|", *(f"| {name} | {count:.2f} | {us:.2f} |" for name, count, us in runtime)]
            rows += [(f"{call}: {name}", us) for name, _, us in runtime]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / f"host_cost_{args.device}.md", "\n".join(lines) + "\n", overwrite=True)
        with open(args.out / f"host_cost_{args.device}.jsonl", "a") as f:
            record = {"date": date, "device": where, "torch": torch.__version__, "steps_us": dict(rows)}
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
