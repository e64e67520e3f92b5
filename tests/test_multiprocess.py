"""Several processes on localhost (CPU, gloo collectives), started by launch/local.sh.

- 2 processes x 2 simulated devices train the tiny config; both end with the same parameters,
  equal (within float tolerance) to 1 process x 4 devices on the same global batches
  (`config.data.num_shards=2` in both), and all processes restart and resume from the shared
  checkpoint.
- Killing one process makes the other exit non-zero within the heartbeat timeout, with a message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_utils import REPO, flags_for, subprocess_env

pytestmark = pytest.mark.slow

STEPS = 8
MORE_STEPS = 12
CHECKSUM = re.compile(r"process (\d+): parameter checksum ([0-9a-f]{16})")


def _launch(tmp_path: Path, workdir: Path, data_dir: str, num_steps: int, **env_extra):
    log_dir = tmp_path / f"logs-{workdir.name}-{num_steps}"
    env = subprocess_env()
    env.update(
        NUM_PROCESSES="2", CPU_DEVICES="2", LOG_DIR=str(log_dir), HEARTBEAT_TIMEOUT="30",
        PYTHON=sys.executable, **env_extra,
    )  # fmt: skip
    args = flags_for(data_dir, train__num_steps=num_steps, data__num_shards=2, train__ckpt_every=4)
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "local.sh"), f"--workdir={workdir}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    logs = result.stdout + result.stderr
    other = (log_dir / "process_1.log").read_text() if (log_dir / "process_1.log").exists() else ""
    detail = f"{logs[-4000:]}\n--- process 1 ---\n{other[-4000:]}"
    assert result.returncode == 0, f"launcher failed:\n{detail}"
    return logs, other


def _single(workdir: Path, data_dir: str, num_steps: int) -> str:
    env = subprocess_env(devices=4)
    args = flags_for(data_dir, train__num_steps=num_steps, data__num_shards=2, train__ckpt_every=4)
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_jax.main", f"--workdir={workdir}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def _params(workdir: Path, step: int) -> dict:
    """Params and EMA params of a checkpoint, restored onto this process's first device."""
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = {}
    with ocp.StandardCheckpointer() as ckptr:
        for item in ("params", "ema_params"):
            path = workdir / "checkpoints" / str(step) / item
            tree = ckptr.metadata(path).item_metadata
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
            )
            out[item] = ckptr.restore(path, target)
    return out


def _assert_close(a, b) -> None:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


def _checksums(*logs: str) -> dict[int, str]:
    return {int(p): c for log in logs for p, c in CHECKSUM.findall(log)}


def test_two_processes_match_one_and_resume(tmp_path, tiny_mnist_dir):
    multi, single = tmp_path / "multi", tmp_path / "single"

    logs0, logs1 = _launch(tmp_path, multi, tiny_mnist_dir, STEPS)
    sums = _checksums(logs0, logs1)
    assert set(sums) == {0, 1}, f"expected a checksum from each process:\n{logs0[-3000:]}"
    assert sums[0] == sums[1], f"processes ended with different parameters: {sums}"

    _single(single, tiny_mnist_dir, STEPS)
    _assert_close(_params(multi, STEPS), _params(single, STEPS))

    # Restart every process with a larger step budget: they resume from the shared checkpoint.
    logs0, logs1 = _launch(tmp_path, multi, tiny_mnist_dir, MORE_STEPS)
    assert f"Resuming from step {STEPS}" in logs0, logs0[-3000:]
    sums = _checksums(logs0, logs1)
    assert sums[0] == sums[1]
    _single(single, tiny_mnist_dir, MORE_STEPS)
    _assert_close(_params(multi, MORE_STEPS), _params(single, MORE_STEPS))


def test_killed_process_stops_the_other(tmp_path, tiny_mnist_dir):
    """kill -9 one process mid-run: the survivor exits non-zero within the heartbeat timeout."""
    heartbeat = 10
    port = _free_port()
    workdir = tmp_path / "run"
    args = flags_for(tiny_mnist_dir, train__num_steps=100_000, train__log_every=2)
    procs, logs = [], []
    for pid in range(2):
        env = subprocess_env(devices=2)
        env.update(
            DJAX_COORDINATOR=f"127.0.0.1:{port}", DJAX_NUM_PROCESSES="2",
            DJAX_PROCESS_ID=str(pid), DJAX_HEARTBEAT_TIMEOUT=str(heartbeat),
        )  # fmt: skip
        log = open(tmp_path / f"p{pid}.log", "w+")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-u", "-m", "diffusion_jax.main", f"--workdir={workdir}", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    try:
        deadline = time.monotonic() + 400
        while "loss=" not in (tmp_path / "p0.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "p0.log").read_text()[-3000:]
            assert procs[0].poll() is None, (tmp_path / "p0.log").read_text()[-3000:]
            time.sleep(1)
        os.kill(procs[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=heartbeat + 90)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    out = (tmp_path / "p0.log").read_text()
    assert code != 0
    assert waited < heartbeat + 90
    assert "another process" in out.lower() or "another task died" in out.lower(), out[-3000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
