#!/usr/bin/env bash
# The GPU path in one go, on a machine with a CUDA GPU, in under 8 minutes:
#   1. the tests marked `gpu` (fused torch-op paths on CUDA vs eager, training steps with trainer=gpu);
#   2. scripts/bench.py --device cuda --precision bf16-mixed --compile --quick (training-step and
#      deployed-inference ratios to LayerNorm, throughput vs the GPU's measured bf16 matmul rate);
#   3. experiment=fast_cifar10 trainer=gpu data.device=auto for LayerNorm and AutoNorm (soft gate),
#      with a time cap (a smoke run of the recipe on the GPU, not the recipe's accuracy);
# then one summary block. Installs nothing beyond `make install` (run only when $PY is missing).
#
#   scripts/gpu_check.sh                 # DATA=../shared/data OUT=outputs/gpu_check PY=.venv/bin/python
#
# Without a GPU it stops at once with one line and exit status 3. Exit status 1 when a stage failed
# or timed out (the summary says which), 0 when all passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3

PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data}
OUT=${OUT:-outputs/gpu_check}
TEST_S=${TEST_S:-90}       # stage time caps (seconds); their sum stays under 8 minutes
BENCH_S=${BENCH_S:-180}
TRAIN_S=${TRAIN_S:-90}

fail() { echo "gpu_check: FAIL: $*" >&2; exit 3; }

if [ ! -x "$PY" ]; then
  command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU here (nvidia-smi not found); nothing was run"
  nvidia-smi -L 2>/dev/null | grep -q GPU || fail "no NVIDIA GPU here (nvidia-smi lists none); nothing was run"
  make install >/dev/null || fail "make install failed"
fi
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || fail "torch sees no CUDA GPU (torch.cuda.is_available() is False; CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-}'); nothing was run"

mkdir -p "$OUT" || fail "cannot create $OUT"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
START=$(date +%s)
declare -a STATUS=()

stage() {  # stage NAME SECONDS LOG CMD...: run with a time cap, record PASS/FAIL/TIMEOUT and seconds
  local name=$1 cap=$2 log=$3; shift 3
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 )) verdict=PASS
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMEOUT (${cap} s cap)"; elif [ $rc -ne 0 ]; then verdict="FAIL (exit $rc)"; fi
  STATUS+=("$(printf '%-34s %-20s %4d s  %s' "$name" "$verdict" "$dt" "$log")")
  echo "gpu_check: $name: $verdict (${dt} s, log $log)" >&2
}

stage "tests -m gpu" "$TEST_S" "$OUT/tests.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider
stage "bench cuda bf16-mixed compile" "$BENCH_S" "$OUT/bench.log" \
  "$PY" scripts/bench.py --quick --device cuda --precision bf16-mixed --compile --variants dyt,autonorm_soft,autonorm_gumbel,afn \
  --out "$OUT/bench_cuda.json"

if [ -f "$DATA/cifar10.npz" ] && [ -f "$DATA/mnist.npz" ]; then
  for norm in ln autonorm; do
    stage "fast_cifar10 trainer=gpu norm=$norm" "$TRAIN_S" "$OUT/train_$norm.log" \
      "$PY" train.py experiment=fast_cifar10 trainer=gpu data.device=auto norm=$norm gate=soft \
      paths.data_root="$DATA" paths.output_root="$OUT/runs_$norm" data.download=false \
      trainer.max_epochs=2 transfer.pretrain.max_epochs=1 +trainer.max_time=00:00:01:00
  done
else
  STATUS+=("$(printf '%-34s %-20s' "fast_cifar10 trainer=gpu" "SKIPPED: no $DATA/cifar10.npz and mnist.npz (set DATA=)")")
fi

# ------------------------------------------------------------------------------- summary block
echo
echo "==================== gpu_check summary ($(( $(date +%s) - START )) s) ===================="
"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
import torch
out = sys.argv[1]
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
path = os.path.join(out, "bench_cuda.json")
if os.path.exists(path):
    b = json.load(open(path))
    mm = b["machine"].get("matmul_gflops", {})
    print(f"matmul: float32 {mm.get('fp32', 0):.0f} GFLOP/s, bfloat16 {mm.get('bf16', 0):.0f} GFLOP/s (2 FLOPs per multiply-add)")
    for r in b["ratios"].values():
        print(f"  {r['name']:<44} {r['value']:7.3f}  (target {r['op']} {r['target']:.2f}) {'PASS' if r['pass'] else 'FAIL'}")
for res in sorted(glob.glob(os.path.join(out, "runs_*", "**", "results.json"), recursive=True)):
    r = json.load(open(res))
    acc = lambda k: "?" if r.get(k) is None else f"{100 * r[k]:.1f}%"
    print(f"  {res.split(os.sep)[-2][:50]:<50} val {acc('val_acc')} test {acc('test_acc')} train {r.get('train_time_s', '?')} s")
EOF
printf '%s\n' "${STATUS[@]}"
echo "=========================================================================================="
for s in "${STATUS[@]}"; do case "$s" in *PASS*) ;; *) exit 1 ;; esac; done
exit 0
