"""The quality run (`--mode=train_and_eval`) on the tiny config: the time budget stops training,
which still checkpoints and evaluates; the EMA warm-up follows its formula."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_utils import flags_for, run_main, tiny_config

from diffusion_jax import state as state_lib

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [0, 1, 5, 90, 10_000])
def test_ema_warmup_is_min_of_decay_and_formula(n):
    config = tiny_config("unused")
    config.train.ema_decay = 0.999
    config.train.ema_warmup = True
    expected = min(0.999, (1 + n) / (10 + n))
    assert float(state_lib.ema_decay(config, n)) == pytest.approx(expected, rel=1e-6)


def test_quality_run_stops_at_budget_then_evaluates(tmp_path, tiny_mnist_dir, fid_flags):
    workdir = tmp_path / "run"
    args = flags_for(
        tiny_mnist_dir, train__num_steps=1000, train__time_budget_s=0.001, train__log_every=1,
        train__ckpt_every=500,
    )  # fmt: skip
    result = run_main(
        f"--workdir={workdir}", "--mode=train_and_eval", *args, *fid_flags,
        "--config.fid.every=1", "--config.fid.num_samples=8", "--config.fid.eval_samples=8",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((workdir / "quality.json").read_text())
    assert 1 <= record["train_steps"] < 1000  # stopped by the budget, not by num_steps
    assert record["images_seen"] == record["train_steps"] * 32
    assert record["checkpoint_step"] == record["train_steps"]  # checkpointed at the stop
    assert np.isfinite(record["fid"]["tf"]) and record["num_samples"] == 8
    assert record["image_indices"] == [0, 8] and record["sample_stream"] == 2
    assert result.stderr.count("FID evaluator ready") == 1  # built once: periodic + final eval
    for key in ("sampler", "steps", "device", "train_wall_s", "train_cpu_s", "time_budget_s"):
        assert key in record
    # What was run, without the command: config file, data, schedule, model size, batch, sampler.
    assert record["config_file"].endswith("configs/tiny.py") and record["method"] == "ddpm"
    assert record["dataset"] == "mnist" and record["batch_size"] == 32
    assert record["schedule"] == "linear" and record["num_timesteps"] == 100
    assert record["sampler"] == "ddim" and record["steps"] == 10
    model = record["model"]
    assert model["arch"] == "unet" and model["ch"] == 16 and model["ch_mult"] == [1, 2]
    assert model["num_params"] == record["num_params"] > 0
    grid = workdir / "eval" / f"samples_{record['checkpoint_step']}.png"  # the scored images
    assert record["samples_grid"] == str(grid) and grid.stat().st_size > 0
    assert (workdir / "fid_vs_time.png").stat().st_size > 0
    assert (workdir / "checkpoints" / str(record["train_steps"])).is_dir()
    # the eval record of that step says how its weights were trained, as quality.json does
    evaluated = json.loads((workdir / "eval" / f"fid_{record['train_steps']}.json").read_text())
    for key in ("train_steps", "images_seen", "train_wall_s", "train_cpu_s"):
        assert evaluated[key] == record[key], key
