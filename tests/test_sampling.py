"""--mode=sample and the pictures and metric files a run leaves behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from train_utils import compilation_cache, tiny_config

from diffusion_jax import images, parallel, sampling, train, writers
from diffusion_jax.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist_dir):
    config = tiny_config(tiny_mnist_dir, train__num_steps=4)
    workdir = tmp_path_factory.mktemp("trained")
    with compilation_cache():
        train.train_and_evaluate(config, str(workdir))
    return config, workdir


def test_sample_mode_writes_grid_npz_and_denoising_picture(trained):
    config, workdir = trained
    config.sample.num_samples = 70  # three batches of 32, the last one cut to 6
    config.sample.batch_size = 32
    config.sample.sampler = "ddim"
    config.sample.num_steps = 4
    config.sample.record_steps = (99, 50, 0)
    with compilation_cache():
        paths = sampling.run(config, str(workdir))
    with np.load(paths["samples"]) as npz:
        assert set(npz.files) == {"images"}  # unconditional: no labels
        x = npz["images"]
    assert x.shape == (70, 28, 28, 1) and x.dtype == np.uint8
    assert len({x[i].tobytes() for i in range(70)}) == 70  # every batch draws new noise
    grid = np.asarray(Image.open(paths["grid"]))
    assert grid.shape == (8 * 30 + 2, 8 * 30 + 2)  # 8x8 tiles of 28 + 2 px borders, greyscale
    assert Image.open(paths["denoising"]).size[0] > 200


def test_sample_mode_reads_a_chosen_checkpoint_or_says_which_exist(trained):
    config, workdir = trained
    config.sample.num_samples = 8
    config.sample.sampler = "ddim"
    config.sample.num_steps = 2
    mesh = parallel.make_mesh()
    params, step = sampling.load_ema_params(config, str(workdir), mesh, "4")
    assert step == 4
    _, best = sampling.load_ema_params(config, str(workdir), mesh, "best")
    assert best == 4
    with pytest.raises(UserError, match="saved steps"):
        sampling.load_ema_params(config, str(workdir), mesh, "3")
    with pytest.raises(UserError, match="a step number, 'latest' or 'best'"):
        sampling.load_ema_params(config, str(workdir), mesh, "last")


def test_class_labels_are_balanced():
    labels = np.asarray(sampling.class_labels(0, 30, 10))
    assert np.bincount(labels).tolist() == [3] * 10
    np.testing.assert_array_equal(np.asarray(sampling.class_labels(32, 4, 10)), [2, 3, 4, 5])


def test_batch_size_fills_the_devices():
    mesh = parallel.make_mesh()
    assert sampling.batch_size_for(70, 32, mesh) == 32
    assert sampling.batch_size_for(5, 256, mesh) == 5


def test_grid_and_denoising_figure(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    g = images.grid(x, cols=2, pad=1)
    assert g.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
    np.testing.assert_array_equal(g[1:5, 8:14], x[1])
    trajectory = np.stack([x, x])  # 2 recorded steps of 5 chains
    images.denoising_figure(str(tmp_path / "d.png"), trajectory, [9, 0], trajectory)
    assert Image.open(tmp_path / "d.png").size[0] > 100
    with pytest.raises(ValueError, match="timesteps"):
        images.denoising_figure(str(tmp_path / "e.png"), trajectory, [9], None)


def test_metrics_jsonl_and_loss_curve(tmp_path):
    writer = writers.create_writer(str(tmp_path), is_main=True, tensorboard=False)
    writer.write_scalars(10, {"loss": 0.5, "lr": 1e-3})
    writer.write_scalars(20, {"loss": float("nan")})
    writer.write_scalars(10, {"loss": 0.4})  # a resumed run logs step 10 again: last one wins
    writer.close()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1] == {"step": 20, "loss": "nan"}
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [10, 20] and records[0]["loss"] == 0.4
    images.loss_curve(records, str(tmp_path / "loss.png"))
    assert Image.open(tmp_path / "loss.png").size == (600, 400)
