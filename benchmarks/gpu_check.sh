#!/usr/bin/env bash
# Build, test and time obce's CUDA backend on a bare GPU machine, in one go.
#   bash benchmarks/gpu_check.sh [results-folder]
# Needs python3 with torch (CUDA), pybind11, scikit-build-core, cmake, nvcc, pytest, hypothesis,
# scipy; no network. Each stage's outcome is printed; the logs go to the results folder.
set -u
out=${1:-benchmarks/results}
mkdir -p "$out"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
if [ -z "$card" ]; then
  echo "gpu_check: no GPU found (nvidia-smi lists none); nothing was built or installed" >&2
  exit 1
fi
log="$out/gpu_check_${card}_$(date +%Y-%m-%d).log"
status=()
stage() { # name, command...
  local name=$1; shift
  echo "=== $name" | tee -a "$log"
  local t0=$SECONDS
  if "$@" >>"$log" 2>&1; then status+=("$name: ok ($((SECONDS - t0)) s)"); else status+=("$name: FAILED ($((SECONDS - t0)) s)"); fi
  tail -n 25 "$log"
}
export PYTHONUNBUFFERED=1
nvidia-smi >>"$log" 2>&1
# sm_90 only: this card's own code, built in seconds (the wheel default adds sm_75..sm_89).
stage build python3 -m pip install --no-build-isolation --no-deps -v . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Ccmake.define.OBCE_CUDA=ON
stage build-info python3 -c "import obce, json; i = obce.build_info(); print(json.dumps(i)); assert i['cuda'] and i['gpu_usable'], i"
# Warnings are shown, not raised: this machine's package versions are not the project's pins.
stage cuda-tests python3 -m pytest tests/test_kernel.py -p no:cacheprovider -q -rs -m cuda -W default
grep -q "skipped" <(tail -n 3 "$log") && status+=("cuda-tests: some CUDA tests SKIPPED")
stage targets python3 benchmarks/gpu_targets.py --out "$out"
stage host-cost python3 benchmarks/host_cost.py --device cuda --out "$out"
stage memcheck timeout 120 compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_small.py
stage racecheck timeout 150 compute-sanitizer --tool racecheck --error-exitcode 1 python3 benchmarks/sanitize_small.py --tiny
# Hardware counters of one 1-D launch (BERT-base) and the d > 1 launches (144 x 1500 x 64: the
# distance and Prim kernels of the matrix path): issue rate, occupancy and stall reasons.
stage ncu timeout 120 ncu --clock-control none --kernel-name regex:'line_tile_kernel|pairwise_kernel|prim_matrix_kernel|prim_kernel' --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  python3 -c "import torch, obce; [obce.fast_death_radii(torch.randn(s, device='cuda'), check_finite=False) for s in ((150, 82944), (144, 1500, 64))]; torch.cuda.synchronize()"
stage suite timeout 90 python3 benchmarks/bench_kernel.py --device cuda --no-memory --out "$out"
echo "=== summary" | tee -a "$log"
printf '%s\n' "${status[@]}" | tee -a "$log"
cat "$out"/gpu_targets_*.md 2>/dev/null
