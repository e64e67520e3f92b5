"""The Python API (`diffusion_jax.load` -> Pipeline): the CLI's images for the same seed, the
config from the checkpoint, labels, the denoise function, edits, and clear refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import tiny_config

import diffusion_jax
from diffusion_jax import checkpoint, sampling, train
from diffusion_jax.errors import UserError


@pytest.fixture(scope="module")
def runs(tiny_mnist_dir, tmp_path_factory):
    """Tiny unconditional and class-conditional runs of 4 steps, each sampled by the CLI's
    function (`sampling.run`, i.e. --mode=sample) with 3 images."""
    out = {}
    for name, extra in (("uncond", {}), ("cond", {"model__num_classes": 10})):
        workdir = tmp_path_factory.mktemp(name)
        config = tiny_config(
            tiny_mnist_dir, train__num_steps=4, sample__num_samples=3, sample__batch_size=2,
            sample__num_steps=5, sample__sampler="ddim", **extra,
        )  # fmt: skip
        train.train_and_evaluate(config, str(workdir))
        sampling.run(config, str(workdir))
        out[name] = (workdir, config)
    return out


def test_load_sample_equals_the_cli(runs):
    workdir, config = runs["cond"]
    pipe = diffusion_jax.load(str(workdir))
    assert pipe.step == 4 and pipe.num_classes == 10
    assert checkpoint.config_differences(pipe.config.to_dict(), config.to_dict()) == []
    images = pipe.sample(3, sampler="ddim", num_steps=5, batch_size=1)  # another batch size
    with np.load(workdir / "sample" / "samples.npz") as z:
        np.testing.assert_array_equal(images, z["images"])
    other = pipe.sample(3, sampler="ddim", num_steps=5, seed=1)
    assert not np.array_equal(images, other)


def test_labels_choose_the_class_and_keep_the_noise(runs):
    pipe = diffusion_jax.load(str(runs["cond"][0]))
    default = pipe.sample(2, sampler="ddim", num_steps=5)  # classes 0, 1
    same = pipe.sample(2, sampler="ddim", num_steps=5, labels=[0, 1])
    np.testing.assert_array_equal(default, same)
    moved = pipe.sample(2, sampler="ddim", num_steps=5, labels=[7, 1])
    np.testing.assert_array_equal(moved[1], default[1])  # image 1: same noise, same class
    assert not np.array_equal(moved[0], default[0])
    with pytest.raises(UserError, match="classes in"):
        pipe.sample(2, labels=[3, 10])
    with pytest.raises(UserError, match="not a config.sample setting"):
        pipe.sample(2, samplr="ddim")
    unconditional = diffusion_jax.load(str(runs["uncond"][0]))
    with pytest.raises(UserError, match="class-conditional"):
        unconditional.sample(2, labels=[1, 2])


def test_denoise_fn_is_the_models_eps(runs):
    pipe = diffusion_jax.load(str(runs["cond"][0]))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
    t = jnp.array([10, 90])
    plain = pipe.denoise_fn(jnp.array([3, 4]), guidance=1.0)(x, t)
    null = pipe.denoise_fn(jnp.array([10, 10]), guidance=1.0)(x, t)
    guided = pipe.denoise_fn(jnp.array([3, 4]), guidance=3.0)(x, t)
    assert plain.shape == x.shape
    np.testing.assert_allclose(guided, null + 3.0 * (plain - null), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="labels"):
        pipe.denoise_fn()


def test_edit_returns_arrays_and_figures(runs, tmp_path):
    pipe = diffusion_jax.load(str(runs["cond"][0]))
    out = pipe.edit("anagram", workdir=str(tmp_path), pairs="6,9", samples=1, stride=25)
    assert (tmp_path / "edit" / "anagram.npz").is_file()
    assert all(str(p).startswith(str(tmp_path)) for p in out["paths"].values())
    images = out["arrays"]["images"]
    assert images.dtype == np.uint8 and images.shape[-3:] == (28, 28, 1)
    with pytest.raises(UserError, match="not a config.edit setting"):
        pipe.edit("anagram", pair="6,9")


def test_load_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(UserError, match="neither a shipped model"):
        diffusion_jax.load(str(tmp_path))
    assert diffusion_jax.__version__ and diffusion_jax.__version__ != "0+unknown"
