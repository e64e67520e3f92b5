"""`--mode=eval_watch`: a watcher beside training evaluates every checkpoint once.

The first test drives `watch.Watcher` on hand-made checkpoints with a stand-in evaluation (no
Inception, seconds): a save in progress is not read, a checkpoint deleted before it is read is
skipped, a restart evaluates nothing twice, and it stops at num_steps or after the timeout. The
second runs the real thing: a training subprocess and a watcher subprocess side by side.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import jax.numpy as jnp
import pytest
from train_utils import (
    REPO,
    compilation_cache,
    flags_for,
    main_command,
    no_traceback,
    subprocess_env,
    tiny_config,
)

from diffusion_jax import checkpoint, evaluate, parallel, watch
from diffusion_jax import state as state_lib


def _save_steps(config, state, workdir: Path, steps) -> None:
    meta = checkpoint.make_meta(config, state.params)
    ckpts = checkpoint.Checkpoints(str(workdir), keep=10)
    try:
        for s in steps:
            ckpts.save(state.replace(step=jnp.asarray(s, jnp.int32)), meta)
        ckpts.wait()
    finally:
        ckpts.close()


def test_watcher_skips_partial_and_deleted_and_resumes(tmp_path, monkeypatch):
    config = tiny_config("unused", train__num_steps=3)
    workdir = tmp_path / "run"
    mesh = parallel.make_mesh()
    with compilation_cache():
        _, state = state_lib.init_train_state(config, parallel.replicated(mesh))
    _save_steps(config, state, workdir, [1, 2])
    # A save of step 3 in progress: Orbax's temporary folder, renamed only on commit.
    partial = workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1234567"
    (partial / "ema_params").mkdir(parents=True)
    (partial / "ema_params" / "garbage").write_text("not a checkpoint")

    calls: list[int] = []

    def fake_evaluate(params, step):
        assert "params" in params or len(params) > 0  # EMA parameters were really restored
        calls.append(step)
        return {"fid": {"tf": float(step)}, "checkpoint_step": step}

    real_restore = checkpoint.Checkpoints.restore_ema

    def deleting_restore(self, abstract, expected, step=None, **kw):
        if step == 2:  # training's keep_checkpoints removes it while the watcher looks
            shutil.rmtree(workdir / "checkpoints" / "2")
        return real_restore(self, abstract, expected, step, **kw)

    monkeypatch.setattr(checkpoint.Checkpoints, "restore_ema", deleting_restore)

    def watcher(timeout_s):
        return watch.Watcher(config, str(workdir), fake_evaluate, mesh, timeout_s=timeout_s,
                             poll_s=0.05)  # fmt: skip

    started = time.monotonic()
    summary = watcher(timeout_s=1.0).run()  # latest step 2 < num_steps 3: stops by the timeout
    assert summary["evaluated"] == [1] and summary["skipped"] == [2], summary
    assert 1.0 <= time.monotonic() - started < 30
    assert watch.evaluated_steps(str(workdir)) == {1}
    record = json.loads(evaluate.record_path(str(workdir), 1).read_text())
    assert record["checkpoint_step"] == 1 and record["evaluated_by"] == "eval_watch"

    # The save commits; a restarted watcher evaluates step 3 only and stops: 3 >= num_steps.
    shutil.rmtree(partial)
    _save_steps(config, state, workdir, [3])
    started = time.monotonic()
    summary = watcher(timeout_s=600).run()
    assert summary["evaluated"] == [3] and summary["skipped"] == [], summary
    assert time.monotonic() - started < 60  # did not wait for the timeout
    assert calls == [1, 3]
    assert watch.evaluated_steps(str(workdir)) == {1, 3}

    # Everything evaluated and training finished: a third start does nothing at all.
    assert watcher(timeout_s=600).run()["evaluated"] == []
    assert calls == [1, 3]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"watcher exited early ({proc.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} after {timeout} s:\n{path.read_text()[-3000:]}")


@pytest.mark.slow
def test_watcher_beside_training(tmp_path, tiny_mnist_dir, fid_flags):
    """Trainer and watcher as two processes; then a restarted watcher evaluates nothing."""
    workdir = tmp_path / "run"
    args = flags_for(tiny_mnist_dir, train__num_steps=12, train__ckpt_every=4)
    watch_cmd = main_command(
        f"--workdir={workdir}", "--mode=eval_watch", *args, *fid_flags,
        "--config.fid.eval_samples=8", "--watch_timeout=300",
    )  # fmt: skip
    env = subprocess_env()
    log = tmp_path / "watch.log"
    with log.open("w") as err:
        watcher = subprocess.Popen(watch_cmd, cwd=REPO, env=env, stderr=err, text=True)
        try:
            # Start training once the watcher is following (its Evaluator is built).
            _wait_for(log, "eval_watch: following", watcher, timeout=600)
            trainer = subprocess.run(
                main_command(f"--workdir={workdir}", *args), cwd=REPO, env=env,
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert trainer.returncode == 0, trainer.stderr[-3000:]
            assert watcher.wait(timeout=600) == 0, log.read_text()[-4000:]
        finally:
            if watcher.poll() is None:
                watcher.kill()
    text = log.read_text()
    assert no_traceback(text), text[-3000:]

    kept = watch.finalized_steps(str(workdir))
    done = watch.evaluated_steps(str(workdir))
    assert kept == [8, 12] and set(kept) <= done <= {4, 8, 12}, (kept, done, text[-3000:])
    scalars = [json.loads(line) for line in (workdir / "eval" / "metrics.jsonl").open()]
    steps = [r["step"] for r in scalars]
    assert sorted(steps) == sorted(done) and len(steps) == len(set(steps))  # each once
    record = json.loads(evaluate.record_path(str(workdir), 12).read_text())
    assert record["num_samples"] == 8 and record["fid"]["tf"] > 0
    assert record["image_indices"] == [0, 8] and record["sample_stream"] == evaluate.EVAL_STREAM
    assert (
        record["heldout_loss"] > 0 and record["metrics"]["heldout_loss"] == record["heldout_loss"]
    )
    assert all("heldout_loss" in r and "fid_tf" in r for r in scalars)
    assert "training finished" in text
    mtimes = {s: evaluate.record_path(str(workdir), s).stat().st_mtime_ns for s in done}

    again = subprocess.run(watch_cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done: 0 checkpoint(s) evaluated" in again.stderr, again.stderr[-3000:]
    assert {s: evaluate.record_path(str(workdir), s).stat().st_mtime_ns for s in done} == mtimes
