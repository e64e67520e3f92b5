"""The VAE and VAE-GAN methods (methods/vae.py, methods/vae_gan.py): closed-form KL, the
reparameterisation gradient, training progress, the VAE-GAN's three losses by hand and each
network on its own loss, per-key
sampling, output ranges, the held-out loss and the settings' validation."""

from __future__ import annotations

import copy
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import batches, data, parallel, samplers
from diffusion_jax import state as state_lib
from diffusion_jax.config import base_config
from diffusion_jax.errors import UserError
from diffusion_jax.methods import vae, vae_gan


def _tiny_data(config: ml_collections.ConfigDict) -> None:
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.random_flip = False
    config.train.batch_size = 8
    config.train.num_steps = 8
    config.train.log_every = 2
    config.train.ckpt_every = 4
    config.train.sample_every = 0
    config.train.tensorboard = False
    config.train.warmup_steps = 0
    config.train.grad_clip = 0.0
    config.train.ema_decay = 0.0  # EMA == params unless a test says otherwise
    config.train.heldout_examples = 0
    config.sample.batch_size = 8
    config.sample.num_samples = 8


def tiny_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    """A VAE on grey 28 px MNIST with 4 and 8 channels and a 4-d latent: ~0.1 s a step."""
    c = base_config()
    c.method = "vae"
    c.vae = vae.settings()
    c.vae.latent_dim = 4
    c.vae.widths = (4, 8)
    _tiny_data(c)
    c.train.lr = 1e-3
    c.data.data_dir = data_dir
    return c


def tiny_config_vae_gan(data_dir: str | None = None) -> ml_collections.ConfigDict:
    """The tiny VAE's networks plus a 4-8 channel discriminator."""
    c = base_config()
    c.method = "vae_gan"
    c.vae_gan = vae_gan.settings()
    c.vae_gan.latent_dim = 4
    c.vae_gan.widths = (4, 8)
    c.vae_gan.disc_widths = (4, 8)
    _tiny_data(c)
    c.train.lr = 1e-3
    c.data.data_dir = data_dir
    return c


def _init(method_module, config):
    box = {}

    def init():
        box["static"], state = method_module.init_state(config)
        return state

    state = jax.jit(init)()
    return box["static"], state


def _train_data(n: int = 8, seed: int = 0) -> batches.TrainData:
    rng = np.random.default_rng(seed)
    # smooth-ish images (blobs), so a tiny VAE can make progress in a few steps
    yy, xx = np.mgrid[:28, :28]
    centres = rng.uniform(6, 22, (n, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 30)
    images = (255 * blobs).astype(np.uint8)[None, ..., None]
    return batches.TrainData(images=jnp.asarray(images), labels=jnp.zeros((1, n), jnp.int32))


def _pairs(a, b) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in _pairs(a, b))


@pytest.fixture(scope="module")
def tiny_vae():
    """(config, static, fresh state, jitted train step) of `tiny_config()`, built once."""
    config = tiny_config()
    static, state = _init(vae, config)
    step = jax.jit(functools.partial(vae.train_step, config=config, static=static))
    return config, static, state, step


@pytest.fixture(scope="module")
def tiny_vae_gan():
    """(config, static, fresh state) of `tiny_config_vae_gan()`, built once."""
    config = tiny_config_vae_gan()
    static, state = _init(vae_gan, config)
    return config, static, state


# ---------------------------------------------------------------------------------------------
# Loss terms


def test_kl_matches_numpy_closed_form_and_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 5)) * 1.5
    logvar = rng.normal(size=(3, 5))
    got = np.asarray(vae.kl_divergence(jnp.asarray(mean, jnp.float32),
                                       jnp.asarray(logvar, jnp.float32)))  # fmt: skip
    # Independent closed form: KL = 0.5 (tr(S) + m^T m - k - log det S), S = diag(var).
    var = np.exp(logvar)
    k = mean.shape[1]
    closed = 0.5 * (var.sum(1) + (mean**2).sum(1) - k - np.log(np.prod(var, axis=1)))
    np.testing.assert_allclose(got, closed, rtol=1e-5)
    # Monte Carlo: E_q[log q(z) - log p(z)] with 200k draws, within 4 standard errors.
    n = 200_000
    for i in range(3):
        z = mean[i] + np.sqrt(var[i]) * rng.normal(size=(n, k))
        log_q = -0.5 * (((z - mean[i]) ** 2) / var[i] + np.log(2 * np.pi * var[i])).sum(1)
        log_p = -0.5 * (z**2 + np.log(2 * np.pi)).sum(1)
        diff = log_q - log_p
        assert abs(diff.mean() - got[i]) < 4 * diff.std() / np.sqrt(n)
    # KL is 0 exactly at the prior
    assert float(vae.kl_divergence(jnp.zeros((1, 7)), jnp.zeros((1, 7)))[0]) == 0.0


def test_reconstruction_losses_match_numpy():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 3, 3, 1)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(2, 3, 3, 1)).astype(np.float32)
    mse = np.asarray(vae.reconstruction_loss(jnp.asarray(h), jnp.asarray(x), "mse"))
    np.testing.assert_allclose(mse, ((x - np.tanh(h)) ** 2).sum((1, 2, 3)), rtol=1e-5)
    p, q = (x + 1) / 2, 1 / (1 + np.exp(-2 * h))  # Bernoulli mean (tanh(h) + 1) / 2
    bce = -(p * np.log(q) + (1 - p) * np.log(1 - q)).sum((1, 2, 3))
    got = np.asarray(vae.reconstruction_loss(jnp.asarray(h), jnp.asarray(x), "bce"))
    np.testing.assert_allclose(got, bce, rtol=1e-5)


def test_reparameterisation_gradient_is_the_chain_rule_and_reaches_the_encoder(tiny_vae):
    mean = jnp.array([[0.3, -1.0]])
    logvar = jnp.array([[0.2, -0.5]])
    eps = jnp.array([[1.5, -0.7]])

    def f(z):
        return jnp.sum(jnp.sin(z) * jnp.array([2.0, 3.0]))

    g_mean, g_logvar = jax.grad(lambda m, lv: f(vae.reparameterize(m, lv, eps)), (0, 1))(
        mean, logvar
    )
    z = mean + jnp.exp(0.5 * logvar) * eps
    g_z = jnp.cos(z) * jnp.array([2.0, 3.0])
    np.testing.assert_allclose(g_mean, g_z, rtol=1e-6)
    np.testing.assert_allclose(g_logvar, g_z * eps * 0.5 * jnp.exp(0.5 * logvar), rtol=1e-6)

    # The reconstruction term alone trains the encoder only through z: its gradient reaches
    # every encoder parameter, including the log-variance half of the output layer.
    config, static, state, _ = tiny_vae
    x = data.to_model_space(_train_data().images[0])
    eps = vae.posterior_noise(jax.random.PRNGKey(3), 8, config.vae.latent_dim)

    @jax.jit
    def recon_grads(params, eps):
        def loss(params):
            terms, _ = vae.per_image_losses(nnx.merge(static, params), x, eps, config.vae)
            return jnp.mean(terms["recon"])

        return jax.grad(loss)(params)

    grads = recon_grads(state.params, eps)
    for leaf in jax.tree.leaves(grads["encoder"]):
        assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0
    d = config.vae.latent_dim
    out_kernel = np.asarray(grads["encoder"]["out"]["kernel"][...])
    assert np.abs(out_kernel[:, :d]).max() > 0 and np.abs(out_kernel[:, d:]).max() > 0
    # With eps = 0 the log-variance gets no reconstruction gradient (z = mean).
    zero = recon_grads(state.params, 0 * eps)
    assert np.abs(np.asarray(zero["encoder"]["out"]["kernel"][...])[:, d:]).max() == 0


# ---------------------------------------------------------------------------------------------
# Training


def test_vae_loss_finite_and_decreasing_on_a_fixed_batch(tiny_vae):
    config, static, state, step = tiny_vae
    train_data = _train_data()
    x = data.to_model_space(train_data.images[0])
    eps = vae.posterior_noise(jax.random.PRNGKey(9), 8, config.vae.latent_dim)

    @jax.jit
    def fixed_loss(params):  # the batch's loss with fixed noise: no sampling noise in the check
        terms, _ = vae.per_image_losses(nnx.merge(static, params), x, eps, config.vae)
        return jnp.mean(terms["loss"])

    before = float(fixed_loss(state.params))
    first, first_metrics = step(state, train_data)
    again, again_metrics = step(state, train_data)
    assert _leaves_equal(first, again) and _leaves_equal(first_metrics, again_metrics)
    losses = []
    for _ in range(20):
        state, metrics = step(state, train_data)
        assert set(metrics) == {"loss", "recon", "kl", "grad_norm", "lr"}
        assert all(np.isfinite(float(v)) for v in metrics.values())
        np.testing.assert_allclose(
            float(metrics["loss"]),
            float(metrics["recon"]) + config.vae.beta * float(metrics["kl"]),
            rtol=1e-5,
        )
        losses.append(float(metrics["loss"]))
    after = float(fixed_loss(state.params))
    assert after < 0.8 * before, (before, after)
    assert np.mean(losses[-5:]) < 0.8 * losses[0]
    assert int(state.step) == 20
    assert _leaves_equal(state.ema_params, state.params)  # ema_decay 0: EMA == params


def test_ema_update_follows_the_configured_decay():
    config = tiny_config()
    config.train.ema_decay = 0.5
    ema, params = {"a": jnp.ones(3)}, {"a": jnp.full(3, 3.0)}
    np.testing.assert_allclose(
        state_lib.ema_update(config, jnp.int32(7), ema, params)["a"], 2.0, rtol=1e-6
    )
    config.train.ema_warmup = True  # min(0.5, (1 + 0) / (10 + 0)) = 0.1 at step 0
    np.testing.assert_allclose(
        state_lib.ema_update(config, jnp.int32(0), ema, params)["a"], 2.8, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Sampling, reconstruction, ranges


@pytest.mark.parametrize("module, setup", [(vae, "tiny_vae"), (vae_gan, "tiny_vae_gan")])
def test_sample_i_depends_only_on_key_i(module, setup, request):
    config, static, state = request.getfixturevalue(setup)[:3]
    sample = jax.jit(module.sampler(config, static))
    key = jax.random.PRNGKey(5)
    four = np.asarray(sample(state.ema_params, samplers.image_keys(key, 4), None))
    eight = np.asarray(sample(state.ema_params, samplers.image_keys(key, 8), None))
    assert four.shape == (4, 28, 28, 1) and eight.shape == (8, 28, 28, 1)
    np.testing.assert_allclose(four, eight[:4], atol=1e-6)
    # later images of a batch started at 4 are images 4..7
    rest = np.asarray(sample(state.ema_params, samplers.image_keys(key, 4, start=4), None))
    np.testing.assert_allclose(rest, eight[4:], atol=1e-6)
    assert not np.allclose(eight[0], eight[1])  # different keys, different latents
    latent_dim = config[module.__name__.split(".")[-1]].latent_dim
    z = vae.prior_z(samplers.image_keys(key, 2), latent_dim)
    z0 = jax.random.normal(jax.random.fold_in(samplers.image_keys(key, 1)[0], 0), z.shape[1:])
    np.testing.assert_array_equal(z[0], z0)  # z_i = normal(fold_in(keys[i], 0))


def test_decoder_output_lies_in_minus_one_one(tiny_vae):
    config, static, state, _ = tiny_vae
    model = nnx.merge(static, state.params)
    z = 1e3 * jax.random.normal(jax.random.PRNGKey(0), (16, config.vae.latent_dim))
    images = np.asarray(vae.to_images(model.decoder(z)))
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.max() - images.min() > 1.0  # large logits reach both ends of the range
    sample = vae.sampler(config, static)
    s = np.asarray(sample(state.ema_params, samplers.image_keys(jax.random.PRNGKey(1), 8), None))
    assert np.all(np.abs(s) <= 1.0)
    # reconstructions: deterministic tanh(decoder(posterior mean)), same for uint8 and floats
    images_u8 = _train_data().images[0]
    r = np.asarray(vae.reconstruct(config, static, state.ema_params, images_u8))
    mean, _ = model.encoder(data.to_model_space(images_u8))
    np.testing.assert_allclose(r, np.tanh(np.asarray(model.decoder(mean))), atol=1e-6)
    r2 = vae.reconstruct(config, static, state.ema_params, data.to_model_space(images_u8))
    np.testing.assert_array_equal(r, np.asarray(r2))
    assert r.shape == images_u8.shape and np.all(np.abs(r) <= 1.0)


def test_cifar_sized_networks_build_for_32_px_rgb():
    config = tiny_config()
    config.data.update(dataset="cifar10", image_size=32, channels=3)
    config.vae.widths = (4, 4, 8)
    vae.validate(config)
    static, state = vae.init_state(config)  # eagerly: one call, nothing to compile
    out = vae.sampler(config, static)(state.ema_params, samplers.image_keys(
        jax.random.PRNGKey(0), 2), None)  # fmt: skip
    assert out.shape == (2, 32, 32, 3)


# ---------------------------------------------------------------------------------------------
# VAE-GAN


def _vae_gan_batch(config, static, state):
    x = data.to_model_space(_train_data().images[0])
    latent = config.vae_gan.latent_dim
    eps = vae.posterior_noise(jax.random.PRNGKey(1), 8, latent)
    z_prior = vae.posterior_noise(jax.random.PRNGKey(2), 8, latent)
    model = nnx.merge(static.vae, state.params["vae"])
    h, _, _ = vae.forward(model, x, eps)
    return x, eps, z_prior, vae.to_images(h), vae.to_images(model.decoder(z_prior))


def _bce(logits, target):
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def _features_by_hand(d_params, x, layer: int) -> np.ndarray:
    """D's conv layer `layer` (0-based) output, flattened: SAME stride-2 convs + leaky ReLU 0.2,
    written with lax.conv on the raw kernels (not through the module)."""
    convs = d_params["convs"]
    h = np.asarray(x, np.float64)
    for i in range(layer + 1):
        kernel = np.asarray(convs[i]["kernel"].value, np.float64)
        bias = np.asarray(convs[i]["bias"].value, np.float64)
        h = jax.lax.conv_general_dilated(
            jnp.asarray(h, jnp.float32), jnp.asarray(kernel, jnp.float32), (2, 2), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        h = np.asarray(h, np.float64) + bias
        h = np.where(h > 0, h, 0.2 * h)
    return h.reshape(h.shape[0], -1)


def test_vae_gan_three_losses_match_a_hand_computation(tiny_vae_gan):
    # Larsen et al.: encoder beta * KL + L_llike (D's features), decoder gamma * L_llike +
    # non-saturating GAN, D the BCE of real vs (reconstructed, generated) weighed 1 : 1/2 : 1/2.
    config, static, state = tiny_vae_gan
    config = copy.deepcopy(config)
    config.vae_gan.beta, config.vae_gan.gamma, config.vae_gan.feature_layer = 0.7, 0.3, 0
    x, eps, z_prior, x_recon, x_fake = _vae_gan_batch(config, static, state)
    (enc, dec), m = jax.jit(functools.partial(vae_gan.vae_losses, config, static))(
        state.params["vae"], state.params["discriminator"], x, eps, z_prior
    )
    d_params = state.params["discriminator"]
    f_real, f_recon = (_features_by_hand(d_params, v, 0) for v in (x, x_recon))
    llike = 0.5 * np.sum((f_recon - f_real) ** 2, axis=1)
    model = nnx.merge(static.vae, state.params["vae"])
    mean, logvar = (np.asarray(v, np.float64) for v in model.encoder(x))
    kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=1)
    disc = nnx.merge(static.discriminator, d_params)
    g_adv = _bce(disc(x_recon), 1) + _bce(disc(x_fake), 1)
    np.testing.assert_allclose(float(m["llike"]), np.mean(llike), rtol=1e-4)
    np.testing.assert_allclose(float(enc), np.mean(0.7 * kl + llike), rtol=1e-4)
    np.testing.assert_allclose(float(dec), np.mean(0.3 * llike + g_adv), rtol=1e-4)
    np.testing.assert_allclose(float(m["loss"]), float(enc) + float(dec), rtol=1e-6)
    assert np.mean(llike) > 0 and np.isfinite(np.mean(llike))

    params, opt, dm = jax.jit(functools.partial(vae_gan.d_update, config, static))(
        state.params, state.opt_state, x, x_recon, x_fake
    )
    want = np.mean(_bce(disc(x), 1) + 0.5 * (_bce(disc(x_recon), 0) + _bce(disc(x_fake), 0)))
    np.testing.assert_allclose(float(dm["d_loss"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(dm["d_real"]), np.mean(jax.nn.sigmoid(disc(x))), rtol=1e-5)
    # each update changes only its own side
    assert _leaves_equal(params["vae"], state.params["vae"])
    assert _leaves_equal(opt["vae"], state.opt_state["vae"])
    for new, old in _pairs(params["discriminator"], state.params["discriminator"]):
        assert not np.array_equal(new, old)
    params2, opt2, _ = jax.jit(functools.partial(vae_gan.vae_update, config, static))(
        state.params, state.opt_state, x, eps, z_prior
    )
    assert _leaves_equal(params2["discriminator"], state.params["discriminator"])
    assert _leaves_equal(opt2["discriminator"], state.opt_state["discriminator"])
    assert all(not np.array_equal(a, b) for a, b in _pairs(params2["vae"], state.params["vae"]))


def test_vae_gan_each_network_steps_on_its_own_loss():
    # The encoder's update depends on beta and D's features, never on gamma or D's logit layer
    # (no GAN term reaches it); the decoder's depends on gamma and the logits, never on beta.
    config = tiny_config_vae_gan()
    static, state = _init(vae_gan, config)
    x, eps, z_prior, _, _ = _vae_gan_batch(config, static, state)

    def update(beta=1.0, gamma=1e-2, d_params=None):
        c = copy.deepcopy(config)
        c.vae_gan.beta, c.vae_gan.gamma = beta, gamma
        params = {**state.params, "discriminator": d_params or state.params["discriminator"]}
        new, _, _ = jax.jit(functools.partial(vae_gan.vae_update, c, static))(
            params, state.opt_state, x, eps, z_prior
        )
        return new["vae"]["encoder"], new["vae"]["decoder"]

    enc, dec = update()
    enc_g, dec_g = update(gamma=0.5)
    enc_b, dec_b = update(beta=3.0)
    d = state.params["discriminator"]
    other_out = jax.tree.map(lambda p: p * 1.5 + 0.01, d["out"])
    enc_o, dec_o = update(d_params=nnx.State({"convs": d["convs"], "out": other_out}))
    assert _leaves_equal(enc, enc_g) and not _leaves_equal(dec, dec_g)
    assert _leaves_equal(dec, dec_b) and not _leaves_equal(enc, enc_b)
    assert _leaves_equal(enc, enc_o) and not _leaves_equal(dec, dec_o)


def test_vae_gan_refuses_the_old_adv_weight_and_bad_feature_layers():
    config = tiny_config_vae_gan()
    config.vae_gan.adv_weight = 0.1
    with pytest.raises(UserError, match="adv_weight is gone.*gamma"):
        vae_gan.validate(config)
    for layer in (2, -3):  # (ml_collections itself refuses a float for this int field)
        config = tiny_config_vae_gan()
        config.vae_gan.feature_layer = layer
        with pytest.raises(UserError, match="feature_layer"):
            vae_gan.validate(config)


def test_vae_gan_train_step_metrics_and_both_sides_move(tiny_vae_gan):
    config, static, state = tiny_vae_gan
    step = jax.jit(functools.partial(vae_gan.train_step, config=config, static=static))
    new, metrics = step(state, _train_data())
    want = {"loss", "prior", "llike", "d_loss", "g_adv", "d_real", "d_recon", "d_fake",
            "encoder_grad_norm", "decoder_grad_norm", "d_grad_norm", "lr"}  # fmt: skip
    assert set(metrics) == want
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for side in ("vae", "discriminator"):
        assert not _leaves_equal(new.params[side], state.params[side])
    assert _leaves_equal(new.ema_params, new.params["vae"])  # ema_decay 0
    assert jax.tree.structure(new.ema_params) == jax.tree.structure(state.params["vae"])
    for _ in range(3):
        new, metrics = step(new, _train_data())
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert int(new.step) == 4


# ---------------------------------------------------------------------------------------------
# Held-out loss, validation


@pytest.mark.parametrize("module, make", [(vae, tiny_config), (vae_gan, tiny_config_vae_gan)])
def test_heldout_loss_is_the_loss_on_the_first_test_images_with_fixed_noise(
    module, make, tiny_mnist_dir
):
    config = make(tiny_mnist_dir)
    config.train.heldout_examples = 6
    static, state = _init(module, config)
    mesh = parallel.make_mesh()
    fn = module.heldout(config, mesh, static)
    assert fn is not None
    value = fn(state.ema_params)  # one loss per image
    assert value.shape == (6,)
    np.testing.assert_array_equal(fn(state.ema_params), value)  # deterministic
    s = config[module.__name__.split(".")[-1]]
    graphdef = static.vae if module is vae_gan else static
    split = data.load_split("mnist", "test", data_dir=tiny_mnist_dir, progress=False)
    images = split.images.reshape(-1, 28, 28, 1)[:6]  # the split's first six, stored order
    x = data.to_model_space(jnp.asarray(images))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 4)
    eps = jnp.stack([jax.random.normal(jax.random.fold_in(key, i), (s.latent_dim,))
                     for i in range(6)])  # fmt: skip
    model = nnx.merge(graphdef, state.ema_params)
    mean, logvar = model.encoder(x)
    h = model.decoder(mean + jnp.exp(0.5 * logvar) * eps)
    recon = np.sum((np.asarray(x) - np.tanh(np.asarray(h))) ** 2, axis=(1, 2, 3))
    var = np.exp(np.asarray(logvar, np.float64))
    kl = 0.5 * np.sum(np.asarray(mean, np.float64) ** 2 + var - 1 - np.log(var), axis=1)
    np.testing.assert_allclose(value, recon + s.beta * kl, rtol=1e-5)
    config.train.heldout_examples = 0
    assert module.heldout(config, mesh, static) is None


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("latent_dim", 0, "config.vae.latent_dim=0 must be a positive integer"),
        ("widths", (), "config.vae.widths=() must be a non-empty"),
        ("widths", (4, 8, 16), "28 px images halve evenly at most 2 times"),
        ("beta", -1.0, "config.vae.beta=-1.0 must be"),
        ("recon", "l1", "config.vae.recon='l1' is not one of"),
        ("b1", 1.0, "config.vae.b1=1.0 must be in"),
    ],
)
def test_validate_names_the_bad_setting(field, value, match):
    config = tiny_config()
    vae.validate(config)
    config.vae[field] = value
    with pytest.raises(UserError, match=re.escape(match)):
        vae.validate(config)


def test_validate_rejects_other_image_sizes_and_bad_vae_gan_settings():
    config = tiny_config()
    config.data.image_size = 64
    with pytest.raises(UserError, match="config.data.image_size=64.*28 or 32 px"):
        vae.validate(config)
    del config["vae"]
    with pytest.raises(UserError, match="lacks config.vae"):
        vae.validate(config)
    config = tiny_config_vae_gan()
    vae_gan.validate(config)
    config.vae_gan.gamma = -0.5
    with pytest.raises(UserError, match="config.vae_gan.gamma=-0.5"):
        vae_gan.validate(config)
    config = tiny_config_vae_gan()
    config.vae_gan.disc_widths = (0,)
    with pytest.raises(UserError, match="config.vae_gan.disc_widths"):
        vae_gan.validate(config)


def test_train_rng_is_ddpms_so_every_method_sees_the_same_batches(tiny_vae, tiny_vae_gan):
    # state.rng = split(PRNGKey(seed))[1], as DDPM's `state._init_state`: batches.select_batch
    # with fold_in(rng, DATA_STREAM) then picks the same images for each method of a seed.
    want = np.asarray(jax.random.split(jax.random.PRNGKey(tiny_vae[0].seed))[1])
    np.testing.assert_array_equal(tiny_vae[2].rng, want)
    np.testing.assert_array_equal(tiny_vae_gan[2].rng, want)
