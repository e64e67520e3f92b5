"""Checkpoints: latest-N plus best, exact restore, and refusals that leave the files alone."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest
from train_utils import assert_trees_equal, compilation_cache, snapshot, tiny_config

from diffusion_jax import checkpoint, parallel, train
from diffusion_jax import state as state_lib
from diffusion_jax.errors import CheckpointError, CheckpointSaveError


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


@pytest.mark.parametrize(
    "overrides, shown",
    [
        ({"diffusion__num_timesteps": 1000}, "num_timesteps: checkpoint 100, now 1000"),
        ({"diffusion__schedule": "cosine"}, "schedule: checkpoint 'linear', now 'cosine'"),
        ({"diffusion__prediction": "v"}, "prediction: checkpoint 'eps', now 'v'"),
    ],
)
def test_sampling_under_another_schedule_is_refused(trained, overrides, shown):
    """Same shapes, other meaning: the EMA restore (sample, eval, edit, watch) refuses it."""
    config, workdir, _ = trained
    assert config.diffusion.num_timesteps == 100 and config.diffusion.schedule == "linear"
    other = tiny_config(config.data.data_dir, **overrides)
    abstract, meta = _abstract(other)
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    with pytest.raises(CheckpointError) as error:
        ckpts.restore_ema(abstract.ema_params, meta)
    ckpts.close()
    message = str(error.value)
    assert f"config.diffusion.{shown}" in message and "would be wrong" in message
    key = shown.split(":")[0]
    assert f"--config.diffusion.{key}=" in message  # the flag that makes the config match


def test_the_loss_weighting_is_no_difference_in_meaning():
    """A network trained under min-SNR is sampled and scored like any other: its weighting (and
    gamma) may differ from the config's, while the schedule still may not."""
    config = tiny_config("unused")
    trained = config.to_dict()
    trained["diffusion"].update(loss_weighting="min_snr", min_snr_gamma=3.0)
    checkpoint.check_same_meaning({"config": trained}, {"config": config.to_dict()}, "here")
    trained["diffusion"]["schedule"] = "cosine"
    with pytest.raises(CheckpointError, match="config.diffusion.schedule: checkpoint 'cosine'"):
        checkpoint.check_same_meaning({"config": trained}, {"config": config.to_dict()}, "here")


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


def test_corrupt_checkpoint_message_is_one_clean_line(trained, tmp_path):
    config, workdir, _ = trained
    run = _copy(workdir, tmp_path)
    for f in (run / "checkpoints" / "6" / "params").rglob("d/*"):
        f.write_bytes(b"garbage" * 100)
    abstract, meta = _abstract(config)
    ckpts = checkpoint.Checkpoints(str(run), read_only=True)
    with pytest.raises(CheckpointError) as error:
        ckpts.restore(abstract, meta)
    ckpts.close()
    message = str(error.value)
    assert "\n" not in message and "cannot be read (" in message, message
    for noise in ("source locations", "RESOURCE_EXHAUSTED", "DATA_LOSS", "FAILED_PRECONDITION"):
        assert noise not in message, message


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failed_async_save_is_one_message_and_keeps_the_last_checkpoint(
    trained, tmp_path, monkeypatch, caplog
):
    """A full disk in Orbax's background write: one CheckpointSaveError naming the step, the
    reason and the intact checkpoint; no Orbax error records; step 6 still restores."""
    from orbax.checkpoint._src.serialization import serialization  # what writes every array

    config, workdir, state = trained
    run = _copy(workdir, tmp_path)
    ckpts = checkpoint.Checkpoints(str(run), keep=2)
    meta = checkpoint.make_meta(config, state.params)

    async def no_space(*args, **kwargs):
        _full_disk()

    monkeypatch.setattr(serialization, "async_serialize_from_host", no_space)
    with pytest.raises(CheckpointSaveError) as error:
        ckpts.save(state.replace(step=state.step + 2), meta)
        ckpts.wait()
    ckpts.wait()  # cleanup after a reported failure stays quiet
    ckpts.close()
    message = str(error.value)
    assert "checkpoint of step 8" in message and "No space left on device" in message, message
    assert f"last intact checkpoint is step 6 in {run / 'checkpoints'}" in message, message
    assert "Free disk space" in message and "\n" not in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "orbax" in r.pathname]

    monkeypatch.undo()
    abstract, expected = _abstract(config)
    reader = checkpoint.Checkpoints(str(run), read_only=True)
    assert reader.all_steps() == [4, 6]
    assert_trees_equal(reader.restore(abstract, expected), state)
    reader.close()


def test_failed_sync_save_names_the_step(trained, tmp_path, monkeypatch):
    config, workdir, state = trained
    ckpts = checkpoint.Checkpoints(str(_copy(workdir, tmp_path)), keep=2)
    monkeypatch.setattr(ckpts._latest, "save", _full_disk)
    with pytest.raises(CheckpointSaveError, match="step 8 .*No space left on device.*step 6"):
        ckpts.save(state.replace(step=state.step + 2), checkpoint.make_meta(config, state.params))
    with pytest.raises(CheckpointSaveError):  # no further save starts after a failure
        ckpts.save(state.replace(step=state.step + 4), checkpoint.make_meta(config, state.params))
    ckpts.close()


def test_first_reason_strips_library_noise():
    inner = ValueError(
        'DATA_LOSS: Error reading "params/x" in OCDBT database: bad magic '
        "[source locations='tensorstore/kvstore/ocdbt/format/btree.cc:123']\nmore detail"
    )
    assert checkpoint._first_reason(inner) == (
        'Error reading "params/x" in OCDBT database: bad magic'
    )
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/_METADATA")
        except OSError as e:
            raise RuntimeError("Orbax wrapper\nwith lines") from e
    except RuntimeError as outer:
        assert checkpoint._first_reason(outer) == "No such file or directory: /x/_METADATA"
