#!/usr/bin/env bash
# One device call of a staged GPU job (launch/gpu/README.md lists the calls):
#
#   bash launch/gpu/on_device.sh BUNDLE K [JOB]
#
# BUNDLE is mnist, cifar10 or bench (made by prepare_local.sh), K the part this call carries
# (gpu_carry/BUNDLE/partK). Every call copies its part into $ROOT/parts/BUNDLE (ROOT=/tmp/djax:
# /tmp survives between back-to-back calls on a warm machine) and extracts, sha256-checked,
# every file whose bytes have all arrived. As soon as the wheels and the dataset are complete
# (part 1 for mnist and bench, part 4 for cifar10) it installs the wheels into $ROOT/site and
# imports the dataset into $TFDS (/tmp/tfds; README "Data (offline route)"; bench has none), once. The call with the last
# part names JOB, which then runs, timed, with fresh FID and compilation caches (reference
# statistics and compiles count in its time), and copies its outputs to $OUT:
#   mnist_fast         issue 15: configs/mnist_fast.py, --mode=train_and_eval
#   cifar10_fast       issue 16(b): configs/cifar10_fast.py, --mode=train_and_eval
#   cifar10_schedules  issue 16(a): launch/gpu/cifar10_schedules.sh (three schedules)
#   bench              issue 14: benchmarks/h200.sh (ours and the PyTorch peer, one process)
#
# Env (for the CPU dry run): ROOT, TFDS, OUT, SKIP_WHEELS=1 (use this python's packages),
# DRY_RUN=1 (import a subset dataset: data.import_arrays(full=False)), JOB_ARGS (more flags for
# the job), TRAIN_S (cifar10_schedules), TINY=1 (bench at configs/tiny.py size), PYTHON (python3).
set -euo pipefail
bundle=${1:?usage: on_device.sh BUNDLE K [JOB]}
k=${2:?usage: on_device.sh BUNDLE K [JOB]}
job=${3:-}
cd "$(dirname "$0")/../.."
root=${ROOT:-/tmp/djax}
tfds=${TFDS:-/tmp/tfds}
out=${OUT:-$root/out}
py=${PYTHON:-python3}
parts=$root/parts/$bundle
files=$root/files/$bundle
weights=$files/inception-2015-12-05_fid_torchscript.pt
mkdir -p "$parts" "$files" "$out"
t0=$(date +%s%N)
say() { echo "[on_device $(date -u +%T)] $*"; }

[[ -f gpu_carry/$bundle/part$k/blob ]] || { say "gpu_carry/$bundle/part$k was not carried"; exit 2; }
for ((j = 1; j < k; j++)); do
  if [[ ! -f $parts/blob.$j ]]; then
    say "part $j is not in $parts: the machine is not the one of the earlier calls (it went cold)."
    say "Start again from call 1."
    exit 3
  fi
done
"$py" launch/gpu/relay.py take "gpu_carry/$bundle/part$k" --parts "$parts"
"$py" launch/gpu/relay.py unpack --parts "$parts" --dest "$files" || true

names() { "$py" -c 'import json,sys; print("\n".join(e["name"] for e in json.load(open(sys.argv[1]))["files"]))' "$parts/MANIFEST.json"; }
setup_ready() {  # every wheel and the dataset extracted (the weights may still be on their way)
  local n
  while read -r n; do
    [[ $n == *.pt ]] && continue  # the weights are needed by the job only
    [[ -f $files/$n ]] || return 1
  done < <(names)
}
# Carried wheels go into $root/site, beside the machine's own packages (which stay).
install_wheels() {
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$root/site" "$@"
}
setup() {
  [[ -f $root/setup_$bundle.done ]] && return 0
  if [[ -z "${SKIP_WHEELS:-}" ]]; then
    install_wheels "$files"/wheels/*.whl
  fi
  export PYTHONPATH=$root/site:$PWD
  if ! "$py" -c 'from flax import nnx; nnx.List' 2>/dev/null; then
    say "the machine's flax has no nnx.List (needs >= 0.12): installing the carried fallback"
    install_wheels "$files"/fallback/flax-*.whl
  fi
  if [[ $bundle != bench ]] &&
    ! "$py" -c 'import tensorflow_metadata.proto.v0.schema_pb2' 2>/dev/null; then
    say "the TFDS reader refuses the machine's protobuf: installing the carried protobuf 6.31.1"
    install_wheels "$files"/fallback/protobuf-*.whl
  fi
  if [[ $bundle == bench ]]; then
    :  # the benchmarks train on synthetic data
  elif [[ -n "${DRY_RUN:-}" ]]; then
    "$py" -c 'import sys; from diffusion_jax import data
data.import_arrays(sys.argv[1], data.read_npz(sys.argv[2]), sys.argv[3], full=False)' \
      "$bundle" "$files/$bundle.npz" "$tfds"
  else
    "$py" -m diffusion_jax.data import --dataset="$bundle" --npz="$files/$bundle.npz" --data_dir="$tfds"
  fi
  touch "$root/setup_$bundle.done"
  say "setup done: wheels in $root/site, $bundle data (if any) in $tfds ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
  "$py" - <<'EOF' || true
import importlib.metadata as m
names = "jax jaxlib flax optax orbax-checkpoint numpy protobuf torch diffusers tensorflow-datasets"
def version(n):
    try:
        return m.version(n)
    except m.PackageNotFoundError:
        return "absent"
print("versions:", ", ".join(f"{n} {version(n)}" for n in names.split()))
EOF
}
if setup_ready; then setup; else say "setup waits for more parts"; fi
if [[ -z "$job" ]]; then
  say "part $k of $bundle in place; $(du -sh "$parts" | cut -f1) carried so far"
  exit 0
fi

# The job: everything must be here.
need=(--require "$(basename "$weights")")
[[ $bundle == bench ]] || need+=(--require "$bundle.npz")
"$py" launch/gpu/relay.py unpack --parts "$parts" --dest "$files" "${need[@]}"
setup
export PYTHONPATH=$root/site:$PWD PYTHONUNBUFFERED=1
export DJAX_FID_WEIGHTS=$weights
export DJAX_CACHE_DIR=$root/cache/$job DJAX_COMPILATION_CACHE=$root/jax_cache/$job
rm -rf "$DJAX_CACHE_DIR" "$DJAX_COMPILATION_CACHE" "$root/runs/$job"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# On the machine JAX must run on the GPU: a failed CUDA start is an error, not a CPU run.
[[ -n "${DRY_RUN:-}" ]] || export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
# shellcheck disable=SC2206
args=(${JOB_ARGS:-})
case "$job" in
  mnist_fast | cifar10_fast)
    [[ $job == mnist_fast ]] && name=mnist_h200 || name=cifar10_h200
    cmd=("$py" -m diffusion_jax.main --mode=train_and_eval "--config=configs/$job.py"
      "--workdir=$root/runs/$job" "--config.data.data_dir=$tfds" "${args[@]}")
    ;;
  cifar10_schedules)
    name=cifar10_schedules
    cmd=(env "DATA_DIR=$tfds" "EXTRA_ARGS=${JOB_ARGS:-}" "PYTHON=$py"
      bash launch/gpu/cifar10_schedules.sh "$root/runs/$job")
    ;;
  bench)
    name=benchmarks_h200
    cmd=(env "PYTHON=$py" "JAX_CACHE=$DJAX_COMPILATION_CACHE" "TINY=${TINY:-0}"
      bash benchmarks/h200.sh "$weights" "$root/runs/$job")
    ;;
  *) say "unknown job $job"; exit 2 ;;
esac
log=$out/${name}_log.txt
say "job $job: ${cmd[*]}" | tee "$log"
start=$(date +%s%N)
set +e
# The job's own limit (JOB_LIMIT_S, 540 s) ends it inside the device call's 600 s, so the
# outputs below are still copied to $OUT: SIGTERM first (training saves; the benchmarks' JSON
# is rewritten after every row), SIGKILL 20 s later.
timeout -s TERM -k 20 "${JOB_LIMIT_S:-540}" "${cmd[@]}" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wall=$(( wall_ms / 1000 )).$(printf %03d $(( wall_ms % 1000 )))
"$py" - "$out/${name}_command.json" "$rc" "$wall" "$job" "${cmd[*]}" <<'EOF'
import json, sys
path, rc, wall, job, cmd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
record = {"job": job, "command": cmd, "exit_code": rc, "command_wall_s": round(wall, 1),
          "limit_s": 480, "within_limit": wall <= 480}
open(path, "w").write(json.dumps(record, indent=2) + "\n")
print(json.dumps(record))
EOF
run=$root/runs/$job
latest() { ls "$@" 2>/dev/null | sort | tail -1 || true; }  # nothing found: empty, not an exit
if [[ $job == cifar10_schedules ]]; then
  for r in linear_T1000 linear_T300 cosine_T300; do
    [[ -f $run/$r/quality.json ]] && cp "$run/$r/quality.json" "$out/cifar10_$r.json"
  done
  [[ -f $run/schedules.md ]] && cp "$run/schedules.md" "$out/cifar10_schedules.md"
  (cd "$run" && tar -czf "$out/cifar10_schedules_runs.tgz" --exclude=checkpoints --exclude=best \
    --exclude='events.out.*' --exclude='*.npz' ./*/quality.json ./*/metrics.jsonl ./*/loss.png \
    ./*/samples ./*/eval ./summary.json 2>/dev/null) || true
elif [[ $job == bench ]]; then
  for f in benchmarks_h200.json benchmarks_h200.md; do
    [[ -f $run/$f ]] && cp "$run/$f" "$out/$f"
  done
  # The traces of rows that missed their goal (TensorBoard / Perfetto); their top ops are in
  # the JSON already. Kept only if the archive comes back (16 MiB a file).
  if [[ -d $run/profile ]]; then
    tar -czf "$out/benchmarks_h200_profile.tgz" -C "$run" profile
    if (($(stat -c %s "$out/benchmarks_h200_profile.tgz") >= 16000000)); then
      say "profile archive over 16 MB: only the Perfetto traces come back"
      (cd "$run" && find profile -name '*perfetto*' -print0 |
        tar -czf "$out/benchmarks_h200_profile.tgz" --null -T -)
      (($(stat -c %s "$out/benchmarks_h200_profile.tgz") < 16000000)) ||
        { say "still over 16 MB: left on the machine"; rm "$out/benchmarks_h200_profile.tgz"; }
    fi
  fi
else
  [[ -f $run/quality.json ]] && cp "$run/quality.json" "$out/$name.json"
  grid=$(latest "$run"/eval/samples_*.png)
  [[ -n "$grid" ]] || grid=$(latest "$run"/samples/step_*.png)
  [[ -n "$grid" ]] && cp "$grid" "$out/${name}_grid.png"
  for f in fid_vs_time.png loss.png metrics.jsonl; do
    [[ -f $run/$f ]] && cp "$run/$f" "$out/${name}_$f"
  done
fi
ls -la "$out"
say "job $job exit $rc, command wall $(printf %.1f "$wall") s (limit 480 s)"
exit "$rc"
