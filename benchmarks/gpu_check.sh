#!/usr/bin/env bash
# One command for a GPU machine: install (offline), check every GPU backend against
# the reference ON THE GPU, then run the benchmark suite at GPU sizes, within a time
# budget (default 8 minutes), writing results named after the GPU:
#
#   bash benchmarks/gpu_check.sh            # from anywhere; uses python3 (or $PYTHON)
#
#   benchmarks/results/gpu-<gpu-name>.json       merged pytest-benchmark JSON (report.py input)
#   benchmarks/results/gpu-<gpu-name>.md         the markdown table with its conditions line
#   benchmarks/results/gpu-<gpu-name>-check.json lcfast bench --check-only on the GPU
#   benchmarks/results/triton-<gpu-name>.json    benchmarks/gpu_triton_check.py (if present)
#   benchmarks/results/gpu-<gpu-name>.log        everything printed
# and copies them to $OUT when that is set (the lent-device tool brings $OUT back).
#
# Installs nothing from the network: `pip install --no-build-isolation --no-deps
# --no-index -e .` builds the C++/CUDA extension against the machine's torch (skipped
# when lcfast already imports from this tree with its extension).
#
# Budget: LCFAST_GPU_BUDGET_S (default 480 s, counted from the start of this script).
# The suite runs one workload per pytest call, cheapest first, so a workload that
# would not fit is skipped (and said so) instead of a timeout losing the whole JSON.
# LC_WORKLOADS="a b" restricts the workloads.  Never changes GPU settings.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${LCFAST_GPU_BUDGET_S:-480}
RES=benchmarks/results
mkdir -p "$RES"
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
say() { echo "[gpu_check +$(elapsed)s] $*"; }

# LCFAST_GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (a smoke test of this
# script, e.g. with LC_WORKLOADS=mnist-mlp LCFAST_BENCH_SIZE=cpu); results say cpu-smoke.
DEV=${LCFAST_GPU_CHECK_DEVICE:-cuda}
SIZE=${LCFAST_BENCH_SIZE:-gpu}
if [ "$DEV" = cpu ]; then
    GPU="cpu (smoke test of gpu_check.sh)"; SLUG=cpu-smoke
else
    GPU=$($PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print(torch.cuda.get_device_name(0))") \
        || { echo "gpu_check: no CUDA GPU visible to $PY" >&2; exit 2; }
    SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
fi
LOG="$RES/gpu-$SLUG.log"
exec > >(tee "$LOG") 2>&1
say "GPU: $GPU (results named gpu-$SLUG), budget ${BUDGET}s, python: $($PY -c 'import sys; print(sys.executable)')"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,temperature.gpu --format=csv 2>/dev/null || true
uptime || true

# ---------------------------------------------------------------- 1. install (offline)
if [ "$DEV" = cpu ]; then
    say "smoke test: no install (uses lcfast as installed here)"
elif $PY - <<'EOF' 2>/dev/null
import os, sys, lcfast, lcfast.bench
assert os.path.realpath(os.path.dirname(lcfast.__file__)) == os.path.realpath("lcfast")
import lcfast._C  # the extension of this tree
EOF
then
    say "lcfast with its extension already importable from this tree: no install"
else
    CAP=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else '9.0')")
    say "pip install --no-build-isolation --no-deps --no-index -e . (TORCH_CUDA_ARCH_LIST=$CAP)"
    TORCH_CUDA_ARCH_LIST=$CAP MAX_JOBS=$(nproc) timeout 240 $PY -m pip install -q --no-build-isolation --no-deps \
        --no-index -e . || say "INSTALL FAILED (rc=$?): backends needing the extension will be missing"
fi
$PY -c "import lcfast, torch; print('lcfast from', lcfast.__file__, '| torch', torch.__version__, '| backends on $DEV:', lcfast.available_backends('$DEV'))" \
    || { say "lcfast does not import: stop"; exit 3; }
export LCFAST_BENCH_DEVICE=$DEV LCFAST_BENCH_SIZE=$SIZE PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- 2. correctness on the GPU
if [ -f benchmarks/gpu_triton_check.py ] && [ "$DEV" != cpu ]; then
    TB=${TRITON_CHECK_BUDGET_S:-60}
    say "benchmarks/gpu_triton_check.py (op-level correctness first; its own budget ${TB}s)"
    timeout $((TB + 60)) $PY benchmarks/gpu_triton_check.py --out "$RES/triton-$SLUG.json" --budget "$TB" \
        || say "gpu_triton_check.py exited with $?"
fi
# backend test files that exercise CUDA (the Triton tests force the CPU interpreter and
# the native tests without "cuda" are CPU-only: CI runs those)
BACKEND_TESTS=$(grep -l "cuda" tests/test_*native*.py tests/test_*cuda*.py 2>/dev/null | tr '\n' ' ')
if [ -n "$BACKEND_TESTS" ] && [ "$DEV" != cpu ]; then
    say "backend tests: $BACKEND_TESTS"
    timeout 90 $PY -m pytest -q -x -p no:cacheprovider $BACKEND_TESTS || say "backend tests exited with $?"
fi
say "every method vs the reference on the GPU, 8 points per workload (lcfast bench --check-only)"
timeout 150 $PY -m lcfast.bench --workload ${LC_WORKLOADS:-all} --device "$DEV" --size "$SIZE" --n 8 --check-only --no-compile \
    --json "$RES/gpu-$SLUG-check.json" | tail -n 40
CHECK_RC=${PIPESTATUS[0]}
[ "$CHECK_RC" = 0 ] || say "CHECK FAILURES (rc=$CHECK_RC): see $RES/gpu-$SLUG-check.json; failing methods are never timed below"

# ---------------------------------------------------------------- 3. the suite at GPU sizes
# seconds a workload needs at least (H200 estimates, fp32 without TF32: ~9 runs of the
# vertex batch per workload plus torch.compile's compile); refine after a measured run.
declare -A NEED=([mnist-mlp]=40 [cifar-cnn]=40 [mnist-mlp-track]=60 [resnet18-224]=100 [vit-b16-224]=130 [resnet50-224]=170)
ORDER=${LC_WORKLOADS:-"mnist-mlp cifar-cnn mnist-mlp-track resnet18-224 vit-b16-224 resnet50-224"}
PARTS=()
for W in $ORDER; do
    need=${NEED[$W]:-60}
    if [ "$(left)" -lt "$need" ]; then
        say "SKIP $W: $(left)s left, it needs ~${need}s"
        continue
    fi
    say "suite: $W"
    OUTJ="$RES/.gpu-$SLUG-$W.json"
    timeout "$(left)" $PY -m pytest benchmarks/test_bench_workloads.py -q -p no:cacheprovider --benchmark-only \
        --lc-device "$DEV" --lc-size "$SIZE" --lc-workloads "$W" --benchmark-json "$OUTJ" --benchmark-columns=median,rounds \
        || say "$W exited with $?"
    [ -f "$OUTJ" ] && PARTS+=("$OUTJ")
done
OPS=$(ls benchmarks/test_bench_native_op.py benchmarks/test_bench_triton_ops.py 2>/dev/null | tr '\n' ' ')
if [ -n "$OPS" ] && [ "$(left)" -gt 30 ]; then
    say "op-level benchmarks: $OPS"
    timeout "$(left)" $PY -m pytest $OPS -q -p no:cacheprovider --benchmark-only --benchmark-json "$RES/.gpu-$SLUG-ops.json" \
        || say "op-level benchmarks exited with $?"
    [ -f "$RES/.gpu-$SLUG-ops.json" ] && PARTS+=("$RES/.gpu-$SLUG-ops.json")
fi
if [ ${#PARTS[@]} -gt 0 ]; then
    $PY benchmarks/report.py "${PARTS[@]}" --json-out "$RES/gpu-$SLUG.json" --out "$RES/gpu-$SLUG.md"
    rm -f "${PARTS[@]}"
fi
say "done in $(elapsed)s"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp -f "$RES/gpu-$SLUG.json" "$RES/gpu-$SLUG.md" "$RES/gpu-$SLUG-check.json" "$RES/triton-$SLUG.json" "$OUT"/ 2>/dev/null
    sync; cp -f "$LOG" "$OUT"/ 2>/dev/null
fi
exit 0
