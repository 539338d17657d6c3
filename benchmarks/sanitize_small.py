"""A small batch through every CUDA path, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_small.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_small.py --tiny

--tiny keeps one cloud per path that racecheck can get through in a minute (no global-memory
coordinates: that path shares the shared-memory code of the others).
"""

import os
import sys

import torch

import obce

gen = torch.Generator(device="cuda").manual_seed(0)
for dtype in (torch.float32, torch.float64):
    cases = [
        torch.randn(150, 300, device="cuda", dtype=dtype, generator=gen),  # 1-D, shared buckets
        torch.randn(300, 150, device="cuda", dtype=dtype, generator=gen).T,  # 1-D, each cloud contiguous
        torch.randn(40000, 3, device="cuda", dtype=dtype, generator=gen),  # 1-D, global buckets (f64)
        torch.randn(5, 150, 17, device="cuda", dtype=dtype, generator=gen),  # Prim, one block
        torch.randn(2, 700, 64, device="cuda", dtype=dtype, generator=gen),  # Prim, a cluster
        torch.randn(1, 2600, 200, device="cuda", dtype=dtype, generator=gen),  # cluster: coordinates in global memory
    ]
    if "--tiny" in sys.argv:
        cases = [
            torch.randn(60, 40, device="cuda", dtype=dtype, generator=gen),
            torch.randn(40, 60, device="cuda", dtype=dtype, generator=gen).T,
            torch.randn(2, 60, 5, device="cuda", dtype=dtype, generator=gen),
            torch.randn(1, 300, 8, device="cuda", dtype=dtype, generator=gen),
        ]
    for x in cases:
        # d > 1: the matrix path (default) and the cluster kernel
        for path in ("matrix", "cluster") if x.dim() == 3 else ("",):
            os.environ["OBCE_CUDA_PRIM"] = path
            lam = obce.fast_death_radii(x)
            deaths = obce.h0_deaths(x)
            assert torch.allclose(deaths[:, -1], lam), (tuple(x.shape), dtype, path)
    bad = torch.randn(3, 50, 4, device="cuda", dtype=dtype, generator=gen)
    bad[1, 3, 0] = float("nan")
    try:
        obce.fast_death_radii(bad)
    except ValueError as e:
        assert "cloud 1" in str(e)
    else:
        raise AssertionError("NaN not reported")
torch.cuda.synchronize()
print("sanitize_small: all paths ran")
