#!/usr/bin/env bash
# Time several source trees of obce on the same card in one run: "change one thing, measure".
#   bash benchmarks/gpu_compare.sh RESULTS-FOLDER NAME=SOURCE-DIR [NAME=SOURCE-DIR ...]
# e.g. git archive some-branch --prefix=ab/new/ | tar -x; bash benchmarks/gpu_compare.sh out main=. new=ab/new
# Builds every tree at once (sm_90, each into /tmp/obce-compare-NAME/site: outside the results, which
# stay a few files), then runs each tree's own
# gpu_targets.py (and host_cost.py, where the tree has it) against its own build, one after the
# other, and prints the tables.
set -u
out=$1
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
for spec in "$@"; do
  name=${spec%%=*} src=${spec#*=}
  mkdir -p "$out/$name"
  rm -rf "/tmp/obce-compare-$name/site" # pip --target keeps what an earlier build left there
  python3 -m pip install --no-build-isolation --no-deps --target "/tmp/obce-compare-$name/site" "$src" \
    -Cbuild-dir="/tmp/obce-compare-$name/build" -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Ccmake.define.OBCE_CUDA=ON \
    >"$out/$name/build.log" 2>&1 &
done
wait
for spec in "$@"; do
  name=${spec%%=*} src=${spec#*=}
  echo "=== $name ($src)"
  # PYTHONPATH comes before site-packages, but an editable install's import hook comes before both:
  # make sure this tree's build is the one imported before timing it.
  site="/tmp/obce-compare-$name/site"
  if ! PYTHONPATH="$site" python3 -c "import obce, sys; sys.exit(not obce.__file__.startswith('$site/'))"; then
    echo "$name: SKIPPED: import obce does not load $site (an editable install of obce? pip uninstall obce)"
    continue
  fi
  PYTHONPATH="$site" python3 "$src/benchmarks/gpu_targets.py" --out "$out/$name" \
    >"$out/$name/targets.log" 2>&1 || echo "$name: FAILED (see $out/$name/build.log, targets.log)"
  if [ -f "$src/benchmarks/host_cost.py" ]; then
    PYTHONPATH="$site" python3 "$src/benchmarks/host_cost.py" --device cuda --out "$out/$name" \
      >"$out/$name/host_cost.log" 2>&1 || echo "$name: host_cost FAILED (see $out/$name/host_cost.log)"
  fi
  cat "$out/$name"/gpu_targets_*.md "$out/$name"/host_cost_cuda.md 2>/dev/null
done
