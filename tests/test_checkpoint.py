"""Checkpoints: latest-N plus best, exact restore, and refusals that leave the files alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from train_utils import assert_trees_equal, compilation_cache, snapshot, tiny_config

from diffusion_jax import checkpoint, parallel, train
from diffusion_jax import state as state_lib
from diffusion_jax.errors import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist_dir):
    """6 steps, a checkpoint every 2, the latest 2 kept; returns (config, workdir, final state)."""
    config = tiny_config(
        tiny_mnist_dir, train__num_steps=6, train__ckpt_every=2, train__keep_checkpoints=2
    )
    workdir = tmp_path_factory.mktemp("trained")
    with compilation_cache():
        state = train.train_and_evaluate(config, str(workdir))
    return config, workdir, state


def _abstract(config):
    mesh = parallel.make_mesh()
    _, abstract = state_lib.abstract_train_state(config, parallel.replicated(mesh))
    return abstract, checkpoint.make_meta(config, abstract.params)


def _copy(workdir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return target


def test_keeps_the_latest_n_and_the_best(trained):
    _, workdir, _ = trained
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    assert ckpts.all_steps() == [4, 6]
    assert ckpts.best_step() in (2, 4, 6)
    assert ckpts.best_value("heldout_loss") < float("inf")  # the default "auto" metric
    meta = ckpts.read_meta(6)
    assert meta["num_params"] == 163_985 and meta["config"]["train"]["num_steps"] == 6
    ckpts.close()


def test_restore_gives_back_the_exact_state(trained):
    config, workdir, state = trained
    abstract, meta = _abstract(config)
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    restored = ckpts.restore(abstract, meta)
    ema, step = ckpts.restore_ema(abstract.ema_params, meta)
    ckpts.close()
    assert int(restored.step) == step == 6
    assert_trees_equal(restored, state)
    assert_trees_equal(ema, state.ema_params)


def test_incompatible_checkpoint_is_refused_and_untouched(trained, tmp_path):
    config, workdir, _ = trained
    run = _copy(workdir, tmp_path)
    before = snapshot(run)
    bigger = tiny_config(config.data.data_dir, model__ch=32, model__num_groups=8)
    with pytest.raises(CheckpointError) as error:
        train.train_and_evaluate(bigger, str(run))
    message = str(error.value)
    assert str(run / "checkpoints" / "6") in message
    assert "checkpoint has 163,985 parameters, the config builds" in message
    assert "config.model.ch: checkpoint 16, now 32" in message
    assert "another --workdir" in message
    assert snapshot(run) == before


def test_corrupt_checkpoint_is_refused_and_untouched(trained, tmp_path):
    config, workdir, _ = trained
    run = _copy(workdir, tmp_path)
    data_files = sorted(
        (run / "checkpoints" / "6" / "params").rglob("d/*"), key=lambda p: -p.stat().st_size
    )
    data_files[0].write_bytes(b"garbage" * 100)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="cannot be read") as error:
        train.train_and_evaluate(config, str(run))
    assert str(run / "checkpoints" / "6") in str(error.value)
    assert snapshot(run) == before


def test_checkpoint_without_meta_is_refused(trained, tmp_path):
    config, workdir, _ = trained
    run = _copy(workdir, tmp_path)
    shutil.rmtree(run / "checkpoints" / "6" / "meta")
    abstract, meta = _abstract(config)
    ckpts = checkpoint.Checkpoints(str(run), read_only=True)
    with pytest.raises(CheckpointError, match="cannot be read"):
        ckpts.restore(abstract, meta)
    ckpts.close()


def test_missing_step_and_empty_workdir_say_so(trained, tmp_path):
    config, workdir, _ = trained
    abstract, meta = _abstract(config)
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 .*saved steps: \[4, 6\]"):
        ckpts.restore_ema(abstract.ema_params, meta, step=5)
    ckpts.close()
    empty = checkpoint.Checkpoints(str(tmp_path / "nothing"), read_only=True)
    assert empty.restore(abstract, meta) is None
    with pytest.raises(CheckpointError, match="train first"):
        empty.restore_ema(abstract.ema_params, meta)
    assert not (tmp_path / "nothing").exists()  # read-only creates nothing
