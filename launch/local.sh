#!/usr/bin/env bash
# Start N processes of one diffusion_jax job on this machine (multi-GPU boxes without SLURM,
# and multi-process tests on CPU). Every argument is passed to `python -m diffusion_jax.main`.
#
#   NUM_PROCESSES=2 launch/local.sh --config=configs/cifar10.py --workdir=runs/c10
#
# Environment:
#   NUM_PROCESSES      processes to start (default: number of GPUs, else 2)
#   GPUS_PER_PROCESS   GPUs given to each process via CUDA_VISIBLE_DEVICES (default 1 when GPUs exist)
#   CPU_DEVICES        simulated CPU devices per process (forces JAX onto the CPU; for testing)
#   PORT               coordinator port on localhost (default: a free one)
#   LOG_DIR            where processes 1..N-1 write their logs (default: a temp dir, printed)
#   HEARTBEAT_TIMEOUT  seconds after which a silent process is declared dead (default 100)
#   PYTHON             interpreter (default python3)
# If any process fails, the others are stopped and this script exits with its status.
set -euo pipefail

PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && [ -z "${CPU_DEVICES:-}" ]; then
  NUM_GPUS=$(nvidia-smi -L | wc -l)
else
  NUM_GPUS=0
fi
GPUS_PER_PROCESS=${GPUS_PER_PROCESS:-1}
if [ "$NUM_GPUS" -gt 0 ]; then
  NUM_PROCESSES=${NUM_PROCESSES:-$((NUM_GPUS / GPUS_PER_PROCESS))}
else
  NUM_PROCESSES=${NUM_PROCESSES:-2}
fi
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES'" >&2
  exit 2
fi
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-$(mktemp -d -t djax-launch-XXXXXX)}
mkdir -p "$LOG_DIR"

export DJAX_COORDINATOR="127.0.0.1:$PORT"
export DJAX_NUM_PROCESSES="$NUM_PROCESSES"
export DJAX_HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-100}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  env_vars=("DJAX_PROCESS_ID=$i")
  if [ -n "${CPU_DEVICES:-}" ]; then
    env_vars+=("JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$CPU_DEVICES ${XLA_FLAGS:-}")
  elif [ "$NUM_GPUS" -gt 0 ]; then
    first=$((i * GPUS_PER_PROCESS))
    env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, "$first" $((first + GPUS_PER_PROCESS - 1)))")
  fi
  if [ "$i" -eq 0 ]; then
    env "${env_vars[@]}" "$PYTHON" -m diffusion_jax.main "$@" &
  else
    env "${env_vars[@]}" "$PYTHON" -m diffusion_jax.main "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "launch/local.sh: $NUM_PROCESSES processes, coordinator $DJAX_COORDINATOR, logs of processes 1.. in $LOG_DIR" >&2

# Wait for the processes one by one; as soon as one fails, stop the rest.
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  status=0
  wait -n -p finished "${running[@]}" || status=$?
  still=()
  for pid in "${running[@]}"; do [ "$pid" != "$finished" ] && still+=("$pid"); done
  running=("${still[@]}")
  if [ "$status" -ne 0 ]; then
    echo "launch/local.sh: process with pid $finished exited with status $status; stopping the others" >&2
    cleanup
    wait || true
    for ((i = 1; i < NUM_PROCESSES; i++)); do
      echo "---- last lines of process $i ($LOG_DIR/process_$i.log) ----" >&2
      tail -n 5 "$LOG_DIR/process_$i.log" >&2 || true
    done
    exit "$status"
  fi
done
exit 0
