#!/usr/bin/env bash
# Session 9 queue for issue 28 on run 2: N=1000 sweep (sampler x NFE x guidance), the tf test
# statistics, the full-protocol final (both protocols) with the sweep's best, the tf floor.
set -uo pipefail
cd /work/main
RUN=/work/runs/mnist_quality_cpu_v2
SHARED=/work/shared/data
WEIGHTS=$SHARED/inception-2015-12-05_fid_torchscript.pt
common=(--config=mnist_quality_cpu_v2 --config.data.data_dir=$HOME/tensorflow_datasets --config.fid.weights="$WEIGHTS")
main() { python -m diffusion_jax.main "${common[@]}" "$@"; }
stamp() { echo "== $(date -u +%FT%TZ) $*"; }
SWEEP=${SWEEP:-"dpm++2m:40:1.5 dpm++2m_sde:40:1.5 dpm++3m:20:1.5"}
for s in $SWEEP; do
  IFS=: read -r smp nfe g <<<"$s"
  out="$RUN/sweep/${smp}_nfe${nfe}_g${g}"
  ls "$out"/eval/fid_*.json >/dev/null 2>&1 && continue
  stamp "sweep $smp nfe=$nfe guidance=$g"
  main --workdir="$out" --mode=eval --checkpoint=pretrained:"$RUN/export" --config.sample.sampler="$smp" \
    --config.sample.num_steps="$nfe" --config.sample.guidance="$g" \
    --config.fid.eval_samples=1000 --config.fid.protocol=pytorch_fid
done
read -r smp nfe g <<<"$(python - <<'PY'
import json, pathlib
recs = [json.loads(p.read_text()) for p in pathlib.Path("/work/runs/mnist_quality_cpu_v2/sweep").glob("*/eval/fid_*.json")]
recs.append(json.loads(pathlib.Path("/work/main/results/quality/curve_v2/eval/fid_8366.json").read_text()))
for r in sorted(recs, key=lambda r: r["fid"]["pytorch_fid"]):
    print(r["sampler"], r["steps"], r["guidance"], r["fid"]["pytorch_fid"], file=__import__("sys").stderr)
r = min(recs, key=lambda r: r["fid"]["pytorch_fid"])
print(r["sampler"], r["steps"], r["guidance"])
PY
)"
smp=${SAMPLER:-$smp}; nfe=${NFE:-$nfe}; g=${GUIDANCE:-$g}
if [ -z "$(ls ~/.cache/diffusion_jax/fid_stats/mnist-test-tf-*.npz 2>/dev/null)" ]; then
  stamp "tf reference statistics"
  main --workdir="$RUN" --mode=fid_stats --config.fid.protocol=tf
fi
if [ ! -e "$RUN/quality.json" ]; then
  stamp "full protocol $smp nfe=$nfe guidance=$g"
  main --workdir="$RUN" --mode=train_and_eval --config.fid.protocol=both --config.sample.sampler="$smp" \
    --config.sample.num_steps="$nfe" --config.sample.guidance="$g"
fi
if [ ! -e /work/runs/floor_tf.txt ]; then
  stamp "real-data floor (tf)"
  stats=$(ls ~/.cache/diffusion_jax/fid_stats/mnist-test-tf-*.npz | head -1)
  python -m diffusion_jax.fid "$SHARED/mnist.npz:x_train[0:10000]" "$stats" --protocol=tf \
    --weights="$WEIGHTS" --batch_size=100 --no_progress | tee /work/runs/floor_tf.txt
fi
stamp done
