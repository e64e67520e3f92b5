cd /work/main
M=${M:-/work/runs/export_step1000}
for s in "1.0 7 3" "2.0 13 3" "3.0 19 3" "2.0 13 7" "1.5 11 5" "3.0 19 7"; do
  set -- $s
  out=/work/runs/hybrid/$(basename $M)_s$1_k$2_g$3
  echo "== $(date -u +%T) sigma=$1 kernel=$2 guidance=$3"
  nice -n 5 python -m diffusion_jax.main --pretrained=$M --mode=edit --workdir=$out \
    --config.edit.kind=hybrid --config.edit.hybrid_sigma=$1 --config.edit.hybrid_kernel=$2 \
    --config.edit.guidance=$3 --config.edit.samples=3 2>&1 | grep -E "Wrote|rror" | cut -c1-200
done
