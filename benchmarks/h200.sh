#!/usr/bin/env bash
# Issue 14 in one command on one H200 (<= 8 min): ours and the PyTorch peer, same process.
#   benchmarks/h200.sh FID_WEIGHTS OUT_DIR      (or env FID_WEIGHTS, OUT_DIR; WHEELS optional)
# Writes OUT_DIR/benchmarks_h200.json (rewritten after every row), OUT_DIR/benchmarks_h200.md
# (the table, goals and top ops) and OUT_DIR/profile/ (traces of rows that miss their goal).
# TINY=1 runs the same flag set at configs/tiny.py size (a CPU dry run); PYTHON (python3).
# On the device tool's machine launch/gpu/on_device.sh runs it as the job `bench` (README there).
set -euo pipefail
cd "$(dirname "$0")/.."
FID_WEIGHTS="${1:-${FID_WEIGHTS:-../shared/data/inception-2015-12-05_fid_torchscript.pt}}"
OUT_DIR="${2:-${OUT_DIR:-results}}"
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if ! "$PY" -c "import diffusers, ml_collections" 2>/dev/null; then
  if [ -n "${WHEELS:-}" ]; then  # the machine's own packages stay; the wheels go beside them
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "${SITE:-/tmp/site}" \
      "$WHEELS"/*.whl
    export PYTHONPATH="${SITE:-/tmp/site}:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if [ "${TINY:-0}" = 1 ]; then
  C=tiny; B1=8; B2=16; BM=8; SB=4; FB=2; EXTRA=(--tiny --train_steps=2 --repeats=2
    --sample_short_steps=2 --fid_batches=1 --train_examples=256)
else
  C=cifar10; B1=128; B2=512; BM=256; SB=1000; FB=500; EXTRA=(--train_steps=32 --repeats=5
    --sample_short_steps=20 --fid_batches=4)
fi
M=$([ "${TINY:-0}" = 1 ] && echo tiny || echo mnist)
# The four goal rows first, cheapest compile first, so a budget can only cut the rest.
PLAN="train:$C:bfloat16:$B1:1+8,sample:$C:bfloat16:$SB,fid:$C:$FB,train:$C:bfloat16:$B2:1+8"
PLAN="$PLAN,train:$C:float32:$B1:1,train:$M:bfloat16:$BM:8"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
"$PY" -m benchmarks.run --workloads=train,sample,fid,peer --plan="$PLAN" "${EXTRA[@]}" \
  --e2e_repeats=0 --fid_weights="$FID_WEIGHTS" --peer_budget_s=230 --time_budget_s=420 \
  --profile_dir="$OUT_DIR/profile" --profile_when=missed \
  --compilation_cache="${JAX_CACHE:-/tmp/jax_cache}" \
  --json="$OUT_DIR/benchmarks_h200.json" | tee "$OUT_DIR/benchmarks_h200.md"
