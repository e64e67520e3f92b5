"""The held-out loss: deterministic, resumes exactly, picks workdir/best by default."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from train_utils import compilation_cache, tiny_config

from diffusion_jax import checkpoint, heldout, methods, metrics, parallel, train
from diffusion_jax import state as state_lib


@pytest.fixture(scope="module", autouse=True)
def _cache():
    with compilation_cache():
        yield


def _records(workdir) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "heldout_loss" in r]


def test_timestep_grid_covers_the_chain_evenly():
    np.testing.assert_array_equal(heldout.timestep_grid(1000, 8), np.arange(8) * 125 + 62)
    np.testing.assert_array_equal(heldout.timestep_grid(4, 8), [0, 1, 2, 3])
    assert heldout.timestep_grid(100, 1).tolist() == [50]


def test_heldout_loss_is_deterministic_and_moves_with_the_parameters(tiny_mnist_dir):
    config = tiny_config(tiny_mnist_dir)
    mesh = parallel.make_mesh()
    graphdef, state = state_lib.init_train_state(config, parallel.replicated(mesh))
    schedule = state_lib.build_schedule(config)
    fn = heldout.make_heldout_loss(config, mesh, graphdef, schedule)
    losses = fn(state.params)
    grid, n = config.train.heldout_timesteps, config.train.heldout_examples
    assert losses.shape == (grid, n) and np.isfinite(losses).all()
    np.testing.assert_array_equal(fn(state.params), losses)
    # What the loop logs: the mean and spread over images and timesteps, through clu.metrics.
    scalars = metrics.heldout_scalars(losses)
    assert set(scalars) == {"heldout_loss", "heldout_loss_std"}
    a = scalars["heldout_loss"]
    np.testing.assert_allclose(a, losses.mean(dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(scalars["heldout_loss_std"], losses.std(dtype=np.float64), rtol=1e-4)
    # A fresh U-Net predicts eps ~ 0 (zero-init output), so the eps-MSE is ~E[eps^2] = 1.
    assert 0.9 < a < 1.1, a
    moved = jax.tree.map(lambda p: p + 0.01, state.params)
    assert not np.array_equal(fn(moved), losses)
    # A second build (a new process, a restart) gives the same numbers.
    again = heldout.make_heldout_loss(config, mesh, graphdef, schedule)
    np.testing.assert_array_equal(again(state.params), losses)
    config.train.heldout_examples = 0
    assert heldout.make_heldout_loss(config, mesh, graphdef, schedule) is None


def test_heldout_loss_resumes_exactly_and_picks_best(tiny_mnist_dir, tmp_path):
    config = tiny_config(tiny_mnist_dir, train__num_steps=6, train__ckpt_every=3,
                         train__log_every=3)  # fmt: skip
    assert methods.best_metric(config) == "heldout_loss"
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    straight = _records(tmp_path / "straight")
    assert [r["step"] for r in straight] == [3, 6]
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "3", tmp_path / "resumed/checkpoints/3")
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    resumed = _records(tmp_path / "resumed")
    assert [r["heldout_loss"] for r in resumed] == [straight[1]["heldout_loss"]]

    ckpts = checkpoint.Checkpoints(str(tmp_path / "straight"), read_only=True)
    meta = ckpts.read_meta(ckpts.latest_step())
    ckpts.close()
    best_dir = tmp_path / "straight" / "best"
    best_step = int(next(p.name for p in best_dir.iterdir() if p.name.isdigit()))
    want = min(straight, key=lambda r: r["heldout_loss"])["step"]
    assert best_step == want
    assert meta["num_params"] > 0


def test_best_metric_auto():
    config = tiny_config("unused")
    assert methods.best_metric(config) == "heldout_loss"
    config.train.heldout_examples = 0
    assert methods.best_metric(config) == "loss"
    config.fid.every, config.fid.num_samples = 4, 16
    assert methods.best_metric(config) == "fid"
