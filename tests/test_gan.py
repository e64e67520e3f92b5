"""The GAN baselines ("gan", "dcgan"): losses, the two updates, BatchNorm, the sampler, init."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from train_utils import load_config

from diffusion_jax import batches, samplers
from diffusion_jax.errors import UserError
from diffusion_jax.methods import gan
from diffusion_jax.methods.base import step_keys
from diffusion_jax.nets import gan as gan_nets


def tiny_config() -> ml_collections.ConfigDict:
    """DCGAN on 28x28x1 MNIST with 4-channel networks, z of 8, batch 8 (a step in ~0.1 s)."""
    c = load_config("dcgan_mnist")
    c.gan.latent_dim = 8
    c.gan.g_width = 4
    c.gan.d_width = 4
    t = c.train
    t.batch_size = 8
    t.num_steps = 8
    t.log_every = 2
    t.ckpt_every = 4
    t.sample_every = 0
    t.tensorboard = False
    c.sample.batch_size = 8
    c.sample.num_samples = 8
    c.fid.batch_size = 8
    c.fid.eval_samples = 8
    return c


def tiny_config_mlp() -> ml_collections.ConfigDict:
    """The fully connected GAN of `tiny_config`'s size (hidden widths 16, 32)."""
    c = tiny_config()
    c.method = "gan"
    c.gan.mlp_g_widths = (16, 32)
    c.gan.mlp_d_widths = (32, 16)
    return c


def _train_data(config, n: int = 32, seed: int = 0) -> batches.TrainData:
    d = config.data
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (1, n, d.image_size, d.image_size, d.channels), np.uint8)
    return batches.TrainData(images=jnp.asarray(images), labels=jnp.zeros((1, n), jnp.int32))


def _init(config):
    """(static, state), built eagerly: the init's kernels are compiled once per shape, not per
    call (the loop's jit-compiled init is `test_init_is_dcgan_normal`'s)."""
    return gan.METHODS[config.method].init_state(config)


def _step_fn(config, static):
    method = gan.METHODS[config.method]
    return jax.jit(
        functools.partial(method.train_step, config=config, static=static, batch_sharding=None)
    )


def _equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _all_changed(a, b) -> bool:
    return all(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def dcgan_run():
    """tiny DCGAN: (config, static, initial state, [state after 1..4 steps], [metrics], step)."""
    config = tiny_config()
    static, state0 = _init(config)
    step, data = _step_fn(config, static), _train_data(config)
    states, metrics, state = [], [], state0
    for _ in range(4):
        state, m = step(state, data)
        states.append(state)
        metrics.append(jax.device_get(m))
    return config, static, state0, states, metrics, step


@pytest.fixture(scope="module")
def sample(dcgan_run):
    """The tiny DCGAN's compiled sampler."""
    config, static, *_ = dcgan_run
    return jax.jit(gan.sampler(config, static))


# ---------------------------------------------------------------------------------------------
# Losses


def test_losses_equal_hand_computed_bce():
    def log_sigmoid(v):
        return -math.log1p(math.exp(-v))

    real, fake, s = [2.0, -1.0], [0.5, -3.0], 0.1
    t = 1 - s
    want_d = -np.mean([t * log_sigmoid(v) + (1 - t) * log_sigmoid(-v) for v in real]) - np.mean(
        [log_sigmoid(-v) for v in fake]
    )
    got_d = gan.discriminator_loss(jnp.array(real), jnp.array(fake), s)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6)
    # non-saturating: -log sigmoid(l), not the saturating log(1 - sigmoid(l))
    want_g = -np.mean([log_sigmoid(v) for v in fake])
    np.testing.assert_allclose(gan.generator_loss(jnp.array(fake)), want_g, rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(jnp.array([0.0])), math.log(2), rtol=1e-6)


def test_losses_are_finite_move_and_probabilities_lie_in_0_1(dcgan_run):
    _, _, _, states, metrics, _ = dcgan_run
    want = {"d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "loss", "lr"}
    assert all(set(m) == want for m in metrics)
    for m in metrics:
        for value in m.values():
            assert value.dtype == np.float32 and value.shape == () and np.isfinite(value)
        assert 0 <= m["d_real"] <= 1 and 0 <= m["d_fake"] <= 1
        assert m["loss"] == m["g_loss"]
        assert m["d_grad_norm"] > 0 and m["g_grad_norm"] > 0
    assert len({float(m["d_loss"]) for m in metrics}) == len(metrics)
    assert len({float(m["g_loss"]) for m in metrics}) == len(metrics)
    assert [int(s.step) for s in states] == [1, 2, 3, 4]
    assert gan.METHODS["dcgan"].best_metric is None and gan.METHODS["gan"].best_metric is None


def test_mlp_gan_trains_and_samples_in_range():
    config = tiny_config_mlp()
    static, state = _init(config)
    assert jax.tree.leaves(state.model_state) == []  # no BatchNorm, same structure
    step, data = _step_fn(config, static), _train_data(config)
    losses = []
    for _ in range(3):
        new, m = step(state, data)
        assert all(np.isfinite(v) for v in jax.device_get(m).values())
        assert 0 <= m["d_real"] <= 1 and 0 <= m["d_fake"] <= 1
        assert _all_changed(state.params, new.params)
        losses.append((float(m["d_loss"]), float(m["g_loss"])))
        state = new
    assert len(set(losses)) == 3
    x = gan.sampler(config, static)(
        state.ema_params, samplers.image_keys(jax.random.PRNGKey(1), 5), None
    )
    assert x.shape == (5, 28, 28, 1) and x.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(x))) <= 1.0


# ---------------------------------------------------------------------------------------------
# The two updates


@pytest.fixture(scope="module")
def updates_setup(dcgan_run):
    config, static, state, *_ = dcgan_run
    real = batches.to_model_images(_train_data(config).images[0, :8], jax.random.PRNGKey(0), False)
    z = gan.latents(jax.random.PRNGKey(3), 8, config.gan.latent_dim)
    key = jax.random.PRNGKey(4)
    d_up = jax.jit(functools.partial(gan.d_update, config, static))
    g_up = jax.jit(functools.partial(gan.g_update, config, static))
    return config, static, state, real, z, key, d_up, g_up


def test_d_update_changes_only_the_discriminator(updates_setup):
    _, _, s, real, z, key, d_up, _ = updates_setup
    params, model_state, opt_state, m = d_up(s.params, s.model_state, s.opt_state, real, z, key)
    assert _equal(params["generator"], s.params["generator"])
    assert _equal(opt_state["generator"], s.opt_state["generator"])
    assert _all_changed(params["discriminator"], s.params["discriminator"])
    # G ran in training mode for G(z): its running statistics moved too
    assert _all_changed(model_state["generator"], s.model_state["generator"])
    assert _all_changed(model_state["discriminator"], s.model_state["discriminator"])
    assert set(m) == {"d_loss", "d_real", "d_fake", "d_grad_norm"}
    # a descent step: the D loss of the same real batch and z (training-mode BatchNorm reads
    # batch statistics, so the moved running ones do not enter) is lower at the new D
    *_, again = d_up(params, model_state, opt_state, real, z, key)
    assert again["d_loss"] < m["d_loss"]


def test_g_update_changes_only_the_generator(updates_setup):
    _, _, s, _, z, key, _, g_up = updates_setup
    params, model_state, opt_state, m = g_up(s.params, s.model_state, s.opt_state, z, key)
    assert _equal(params["discriminator"], s.params["discriminator"])
    assert _equal(opt_state["discriminator"], s.opt_state["discriminator"])
    assert _all_changed(params["generator"], s.params["generator"])
    assert set(m) == {"g_loss", "g_grad_norm"}
    *_, again = g_up(params, model_state, opt_state, z, key)
    assert again["g_loss"] < m["g_loss"]  # a descent step of the generator's loss


def test_batchnorm_running_mean_has_pytorch_momentum(updates_setup):
    """One training-mode forward of G from running mean 0: mean = 0.1 * batch mean."""
    config, static, s, real, z, key, d_up, _ = updates_setup
    _, model_state, _, _ = d_up(s.params, s.model_state, s.opt_state, real, z, key)
    g = nnx.merge(static.generator, s.params["generator"], s.model_state["generator"], copy=True)
    h = g.project(z).reshape(z.shape[0], g.s0, g.s0, g.c0)
    got = model_state["generator"]["project_norm"]["mean"][...]
    np.testing.assert_allclose(got, 0.1 * jnp.mean(h, axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
    assert gan_nets.BN_MOMENTUM == 0.9


def test_train_step_is_d_update_then_g_update_on_the_step_batch(dcgan_run, updates_setup):
    config, static, s, _, _, _, d_up, g_up = updates_setup
    data = _train_data(config)
    new, metrics = dcgan_run[-1](s, data)

    data_key, step_key = step_keys(s.rng, s.step)
    flip_key, z_key, drop_key = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(step_key, 0), 0), 3
    )
    x, _ = batches.select_batch(data, data_key, s.step, config.train.batch_size)
    real = batches.to_model_images(x, flip_key, config.data.random_flip)
    z = gan.latents(z_key, config.train.batch_size, config.gan.latent_dim)
    p, ms, o, dm = d_up(s.params, s.model_state, s.opt_state, real, z, drop_key)
    z_key, drop_key = jax.random.split(jax.random.fold_in(step_key, 1))
    z = gan.latents(z_key, config.train.batch_size, config.gan.latent_dim)
    p, ms, o, gm = g_up(p, ms, o, z, drop_key)

    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    jax.tree.map(close, new.params, p)
    jax.tree.map(close, new.model_state, ms)
    for name in ("d_loss", "d_real", "d_fake", "d_grad_norm"):
        close(metrics[name], dm[name])
    close(metrics["g_loss"], gm["g_loss"])
    # ema_decay 0: the EMA is G; the sampler's statistics are G's running statistics
    assert _equal(new.ema_params["params"], new.params["generator"])
    assert _equal(new.ema_params["batch_stats"], new.model_state["generator"])


def test_d_steps_runs_that_many_discriminator_updates_per_step():
    config = tiny_config()
    config.gan.d_steps = 2
    static, state = _init(config)
    new, m = _step_fn(config, static)(state, _train_data(config))
    d_count = [int(x) for x in jax.tree.leaves(new.opt_state["discriminator"]) if x.ndim == 0]
    g_count = [int(x) for x in jax.tree.leaves(new.opt_state["generator"]) if x.ndim == 0]
    assert set(d_count) == {2} and set(g_count) == {1}  # Adam's update counts
    assert int(new.step) == 1 and np.isfinite(m["d_loss"])


def test_train_step_is_pure_and_keeps_the_state_structure(dcgan_run):
    config, _, state0, states, _, step = dcgan_run
    again, _ = step(state0, _train_data(config))
    assert _equal(again, states[0])  # the same draws from (rng, step): bit-identical
    assert jax.tree.structure(states[0]) == jax.tree.structure(state0)  # lax.scan carries it
    shapes = jax.eval_shape(lambda: gan.METHODS["dcgan"].init_state(config)[1])
    assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state0
    )


# ---------------------------------------------------------------------------------------------
# BatchNorm and the sampler


def test_running_statistics_change_in_training_and_drive_the_sampler(dcgan_run, sample):
    config, static, state0, states, *_ = dcgan_run
    state = states[-1]
    assert _all_changed(state.model_state, state0.model_state)
    assert _equal(state.ema_params["batch_stats"], state.model_state["generator"])
    keys = samplers.image_keys(jax.random.PRNGKey(7), 4)
    x = sample(state.ema_params, keys, None)
    fresh = {"params": state.ema_params["params"], "batch_stats": state0.model_state["generator"]}
    y = sample(fresh, keys, None)
    assert float(jnp.max(jnp.abs(x - y))) > 1e-3  # eval mode reads the running statistics
    # ... and only them: eval-mode G is G's own eval forward of z_i
    z = gan.sample_latents(keys, config.gan.latent_dim)
    g = nnx.merge(static.generator, state.params["generator"], state.model_state["generator"])
    np.testing.assert_allclose(x, g(z, train=False), atol=1e-6)


def test_image_i_depends_only_on_key_i(dcgan_run, sample):
    config, _, _, states, *_ = dcgan_run
    ema = states[-1].ema_params
    keys = samplers.image_keys(jax.random.PRNGKey(11), 8)
    x8 = sample(ema, keys, None)
    x4 = sample(ema, keys[4:], None)
    assert x8.shape == (8, 28, 28, 1) and x8.dtype == jnp.float32
    np.testing.assert_allclose(x4, x8[4:], atol=1e-6)
    assert float(jnp.max(jnp.abs(x8))) <= 1.0  # tanh
    z = gan.sample_latents(keys, config.gan.latent_dim)
    want = jax.random.normal(jax.random.fold_in(keys[3], 0), (config.gan.latent_dim,))
    np.testing.assert_array_equal(z[3], want)


# ---------------------------------------------------------------------------------------------
# Initialisation, configs and validation


@pytest.mark.parametrize("name", ["dcgan_cifar10", "gan_mnist"])
def test_init_is_dcgan_normal(name):
    config = load_config(name)
    method = gan.METHODS[config.method]
    _, state = jax.jit(lambda: method.init_state(config))()
    kernels, biases, scales = [], [], []
    for net in ("generator", "discriminator"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params[net]):
            names = [str(getattr(p, "key", getattr(p, "name", ""))) for p in path]
            if "kernel" in names:
                kernels.append(np.asarray(leaf))
            elif "bias" in names:
                biases.append(np.asarray(leaf))
            elif "scale" in names:
                scales.append(np.asarray(leaf).ravel())
    assert kernels and biases
    for k in kernels:
        if k.size >= 4096:
            assert abs(k.std() - 0.02) < 0.002 and abs(k.mean()) < 0.002, k.shape
    assert all(np.all(b == 0) for b in biases)
    if config.method == "dcgan":
        s = np.concatenate(scales)
        assert abs(s.mean() - 1) < 0.005 and abs(s.std() - 0.02) < 0.004
        assert _equal(state.ema_params["batch_stats"], state.model_state["generator"])
    else:
        assert not scales and jax.tree.leaves(state.model_state) == []
    assert _equal(state.ema_params["params"], state.params["generator"])


@pytest.mark.parametrize(
    "name, method, shape",
    [
        ("gan_mnist", "gan", (28, 28, 1)),
        ("dcgan_mnist", "dcgan", (28, 28, 1)),
        ("dcgan_cifar10", "dcgan", (32, 32, 3)),
    ],
)
def test_configs(name, method, shape):
    c = load_config(name)
    assert c.method == method and (c.data.image_size, c.data.image_size, c.data.channels) == shape
    assert c.train.batch_size == 128 and c.train.lr == 2e-4 and c.gan.b1 == 0.5
    assert c.train.heldout_examples == 0 and c.train.ema_decay == 0 and c.gan.latent_dim == 100
    assert c.data.random_flip == (name == "dcgan_cifar10")
    gan.METHODS[method].validate(c)


def test_validate_names_the_bad_setting():
    c = tiny_config()
    c.data.image_size = 64
    with pytest.raises(UserError, match=r"config\.data\.image_size=64"):
        gan.METHODS["dcgan"].validate(c)
    gan.METHODS["gan"].validate(c)  # the MLP GAN takes any size
    for field, value in [
        ("latent_dim", -1),
        ("b1", 1.0),
        ("label_smoothing", -0.1),
        ("d_steps", 0),
        ("mlp_g_widths", ()),
    ]:
        c = tiny_config()
        c.gan[field] = value
        with pytest.raises(UserError, match=rf"config\.gan\.{field}="):
            gan.METHODS["gan"].validate(c)
    c = tiny_config()
    del c["gan"]
    with pytest.raises(UserError, match="config.gan is missing"):
        gan.METHODS["dcgan"].validate(c)
    c = tiny_config()
    c.data.image_size = 30
    with pytest.raises(UserError, match="image_size=30"):
        gan.METHODS["dcgan"].init_state(c)


def test_the_generator_ema_averages_its_batchnorm_statistics_too():
    """With decay d, one step gives EMA = d * before + (1 - d) * after for G's parameters AND
    its running statistics (the sampler runs averaged weights with averaged statistics)."""
    config = tiny_config()
    config.train.ema_decay, config.train.ema_warmup = 0.75, False
    static, state0 = _init(config)
    new, _ = _step_fn(config, static)(state0, _train_data(config))
    after = {"params": new.params["generator"], "batch_stats": new.model_state["generator"]}
    want = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, state0.ema_params, after)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, new.ema_params, want)
    assert not _equal(new.ema_params["batch_stats"], new.model_state["generator"])
