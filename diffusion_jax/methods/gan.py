"""The GAN baselines: the course's fully connected GAN ("gan") and DCGAN ("dcgan").

Both train a generator G (z ~ N(0, I) -> image in [-1, 1], tanh) against a discriminator D
(image -> logit) with binary cross-entropy on logits (Goodfellow et al. 2014) and the
non-saturating generator loss -log sigmoid(D(G(z))). Networks: `nets.gan`. Settings:
`config.gan` (`settings()`); the learning rate, batch, EMA and intervals are the shared
`config.train` ones (Adam 2e-4, b1 0.5, batch 128 in the configs, as in DCGAN).

One train step (`train_step`) is `d_steps` discriminator updates (`d_update`) and then one
generator update (`g_update`), two pure functions of (params, model_state, opt_state, inputs):

    D: loss = BCE(D(x), 1 - label_smoothing) + BCE(D(G(z)), 0), x the real batch of step n
       (`batches.select_batch`, random flips per `config.data.random_flip`), G(z) held fixed;
    G: loss = BCE(D(G(z')), 1) with a fresh z', D held fixed.

Both run the networks in training mode, as PyTorch's DCGAN tutorial does: BatchNorm normalises
with batch statistics and updates its running statistics (G's in both updates, D's once per
forward: real and fake batches are separate forwards), and D's dropout (MLP GAN) is on. D update
j of step n reads the real batch of index n * d_steps + j, so with d_steps = 1 (the default)
every method sees the same images in the same order.

The state (`GANState`): params / opt_state / model_state are {"generator", "discriminator"}
dicts (parameters, one Adam each, BatchNorm running statistics: empty for the MLP GAN), and
`ema_params` is what the sampler needs: {"params", "batch_stats"}, the EMA (decay
`state.ema_decay(config, step)`; the configs set it to 0, so EMA == G) of G's parameters and
of its BatchNorm running statistics together, as the denoiser's. The sampler runs G in eval
mode (running statistics), z_i = normal(fold_in(keys[i], 0), (latent_dim,)), so image i depends
on keys[i] alone.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from diffusion_jax import batches, samplers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.methods.base import Method, SampleFn, step_keys
from diffusion_jax.nets import gan as gan_nets

_D_STREAM, _G_STREAM = 0, 1  # fold_in(step_key, stream): the D updates' / the G update's draws


def settings() -> ml_collections.ConfigDict:
    """`config.gan`: the settings of both GAN methods ("gan" reads the mlp_* fields and dropout,
    "dcgan" g_width / d_width)."""
    c = ml_collections.ConfigDict()
    c.latent_dim = 100  # size of z ~ N(0, I)
    c.b1 = 0.5  # Adam beta1 of both players (DCGAN's 0.5; Adam's usual 0.9 is unstable here)
    c.b2 = 0.999  # Adam beta2 of both players
    c.init_std = 0.02  # kernels N(0, init_std), BatchNorm scale N(1, init_std), biases 0
    c.g_width = 64  # dcgan: generator channels before its output conv (x2 per stage to z)
    c.d_width = 64  # dcgan: discriminator channels of its first conv (x2 per stage)
    c.mlp_g_widths = (256, 512, 1024)  # gan: the generator's hidden layer widths, from z
    c.mlp_d_widths = (1024, 512, 256)  # gan: the discriminator's hidden layer widths, from x
    c.dropout = 0.0  # gan: discriminator dropout after each hidden layer (the course: 0.3)
    c.label_smoothing = 0.0  # one-sided (Salimans et al. 2016): D's real target 1 - this
    c.d_steps = 1  # discriminator updates per generator update, each on the next real batch
    return c


class Nets(NamedTuple):
    """The method's `static`: graphdefs of both networks."""

    generator: nnx.GraphDef
    discriminator: nnx.GraphDef


@flax.struct.dataclass
class GANState:
    """Everything a GAN run needs to continue exactly where it stopped (all of it checkpointed)."""

    step: jax.Array  # int32 scalar: train steps done (= generator updates)
    rng: jax.Array  # raw uint32[2]: root of every draw (`methods.base.step_keys`)
    params: dict[str, nnx.State]  # {"generator", "discriminator"}: nnx.Param
    ema_params: dict[str, nnx.State]  # {"params": EMA of G's params, "batch_stats": G's stats}
    opt_state: dict[str, optax.OptState]  # {"generator", "discriminator"}: one Adam each
    model_state: dict[str, nnx.State]  # {"generator", "discriminator"}: nnx.BatchStat


# ---------------------------------------------------------------------------------------------
# Settings and networks


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise UserError(f"config.{name}={value!r} {requirement}.")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate(config: ml_collections.ConfigDict, *, method: str = "dcgan") -> None:
    """Raise `UserError` naming the first bad `config.gan` setting (or image size for DCGAN)."""
    if "gan" not in config:
        raise UserError(
            f"config.gan is missing: config.method={method!r} reads its settings there; set "
            "config.gan = diffusion_jax.methods.gan.settings() in the config file."
        )
    s = config.gan
    for name in ("latent_dim", "d_steps", "g_width", "d_width"):
        _check(_is_positive_int(s[name]), f"gan.{name}", s[name], "must be a positive integer")
    for name in ("mlp_g_widths", "mlp_d_widths"):
        widths = tuple(s[name])
        ok = len(widths) > 0 and all(_is_positive_int(w) for w in widths)
        _check(ok, f"gan.{name}", widths, "must be a non-empty sequence of positive integers")
    for name in ("b1", "b2"):
        _check(0 <= s[name] < 1, f"gan.{name}", s[name], "must be in [0, 1)")
    _check(s.init_std > 0, "gan.init_std", s.init_std, "must be > 0")
    _check(0 <= s.dropout < 1, "gan.dropout", s.dropout, "must be in [0, 1)")
    smoothing = s.label_smoothing
    _check(0 <= smoothing < 1, "gan.label_smoothing", smoothing, "must be in [0, 1)")
    if method == "dcgan":
        size = config.data.image_size
        _check(
            size in gan_nets.SIZES,
            "data.image_size",
            size,
            f"is not a size DCGAN is built for: use one of {tuple(gan_nets.SIZES)} (28 for "
            "MNIST / Fashion-MNIST, 32 for CIFAR-10), or config.method='gan'",
        )


def build_networks(
    config: ml_collections.ConfigDict, method: str, g_key: jax.Array, d_key: jax.Array
) -> tuple[nnx.Module, nnx.Module]:
    """(generator, discriminator) of `method` ("gan" or "dcgan") for `config.data`'s images."""
    s, d = config.gan, config.data
    g_rngs, d_rngs = nnx.Rngs(params=g_key), nnx.Rngs(params=d_key)
    if method == "gan":
        shape = (d.image_size, d.image_size, d.channels)
        g = gan_nets.MLPGenerator(
            s.latent_dim, shape, tuple(s.mlp_g_widths), init_std=s.init_std, rngs=g_rngs
        )
        disc = gan_nets.MLPDiscriminator(
            shape, tuple(s.mlp_d_widths), dropout=s.dropout, init_std=s.init_std, rngs=d_rngs
        )
        return g, disc
    try:
        g = gan_nets.DCGANGenerator(
            s.latent_dim, d.image_size, d.channels, s.g_width, init_std=s.init_std, rngs=g_rngs
        )
        disc = gan_nets.DCGANDiscriminator(
            d.image_size, d.channels, s.d_width, init_std=s.init_std, rngs=d_rngs
        )
    except ValueError as e:
        raise UserError(f"config.data.image_size={d.image_size}: {e}.") from e
    return g, disc


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam(config.train.lr, gan.b1, gan.b2) behind optional global-norm clipping (identity
    when config.train.grad_clip = 0, so the state's structure is the same either way); each
    player has its own state of it."""
    return state_lib.adam(config, config.gan.b1, config.gan.b2)


def init_state(
    config: ml_collections.ConfigDict, *, method: str = "dcgan"
) -> tuple[Nets, GANState]:
    """(Nets, fresh state): N(0, init_std) networks, two fresh Adams, EMA = G, step 0.

    The seed splits as DDPM's does (init key, train key), so the train key, and with it the data
    order, is the same as every other method's for the same seed.
    """
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    g_key, d_key = jax.random.split(init_key)
    g, d = build_networks(config, method, g_key, d_key)
    g_def, g_params, g_stats = nnx.split(g, nnx.Param, nnx.BatchStat)
    d_def, d_params, d_stats = nnx.split(d, nnx.Param, nnx.BatchStat)
    tx = build_optimizer(config)
    state = GANState(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params={"generator": g_params, "discriminator": d_params},
        ema_params={
            "params": jax.tree.map(jnp.copy, g_params),
            "batch_stats": jax.tree.map(jnp.copy, g_stats),
        },
        opt_state={"generator": tx.init(g_params), "discriminator": tx.init(d_params)},
        model_state={"generator": g_stats, "discriminator": d_stats},
    )
    return Nets(g_def, d_def), state


# ---------------------------------------------------------------------------------------------
# Losses and the two updates


def discriminator_loss(
    real_logits: jax.Array, fake_logits: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """BCE(D(x), 1 - label_smoothing) + BCE(D(G(z)), 0), each a batch mean (on logits)."""
    real = optax.sigmoid_binary_cross_entropy(
        real_logits, jnp.full_like(real_logits, 1.0 - label_smoothing)
    )
    fake = optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits))
    return jnp.mean(real) + jnp.mean(fake)


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """The non-saturating loss BCE(D(G(z)), 1) = mean -log sigmoid(D(G(z)))."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))


def latents(key: jax.Array, batch: int, latent_dim: int) -> jax.Array:
    """z [batch, latent_dim] ~ N(0, I) for training."""
    return jax.random.normal(key, (batch, latent_dim), jnp.float32)


def _generate(
    nets: Nets, g_params: nnx.State, g_stats: nnx.State, z: jax.Array, *, train: bool
) -> tuple[jax.Array, nnx.State]:
    """(G(z), G's running statistics after the call). copy=True: the inputs stay unchanged."""
    g = nnx.merge(nets.generator, g_params, g_stats, copy=True)
    return g(z, train=train), nnx.state(g, nnx.BatchStat)


def _discriminate(
    nets: Nets, d_params: nnx.State, d_stats: nnx.State, xs: tuple[jax.Array, ...], key: jax.Array
) -> tuple[list[jax.Array], nnx.State]:
    """Training-mode D logits of each batch in `xs` (one forward each), and D's statistics."""
    d = nnx.merge(nets.discriminator, d_params, d_stats, copy=True)
    keys = jax.random.split(key, len(xs))
    logits = [d(x, train=True, rngs=nnx.Rngs(dropout=k)) for x, k in zip(xs, keys, strict=True)]
    return logits, nnx.state(d, nnx.BatchStat)


def _mean_sigmoid(logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.sigmoid(logits)).astype(jnp.float32)


def d_update(
    config: ml_collections.ConfigDict,
    nets: Nets,
    params: dict,
    model_state: dict,
    opt_state: dict,
    real: jax.Array,
    z: jax.Array,
    key: jax.Array,
) -> tuple[dict, dict, dict, dict[str, jax.Array]]:
    """One discriminator update on `real` (model space) and G(z) (G fixed, training mode).

    Returns (params, model_state, opt_state, metrics): only params["discriminator"] and
    opt_state["discriminator"] change; model_state changes for both (training-mode BatchNorm).
    `key` draws D's dropout.
    """
    fake, g_stats = _generate(nets, params["generator"], model_state["generator"], z, train=True)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
        xs = (real, fake)
        (real_logits, fake_logits), d_stats = _discriminate(
            nets, d_params, model_state["discriminator"], xs, key
        )
        loss = discriminator_loss(real_logits, fake_logits, config.gan.label_smoothing)
        return loss, (d_stats, real_logits, fake_logits)

    d_params = params["discriminator"]
    (loss, (d_stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        d_params
    )
    tx = build_optimizer(config)
    updates, d_opt = tx.update(grads, opt_state["discriminator"], d_params)
    metrics = {
        "d_loss": loss.astype(jnp.float32),
        "d_real": _mean_sigmoid(real_logits),
        "d_fake": _mean_sigmoid(fake_logits),
        "d_grad_norm": optax.tree.norm(grads).astype(jnp.float32),  # before clipping
    }
    return (
        {**params, "discriminator": optax.apply_updates(d_params, updates)},
        {"generator": g_stats, "discriminator": d_stats},
        {**opt_state, "discriminator": d_opt},
        metrics,
    )


def g_update(
    config: ml_collections.ConfigDict,
    nets: Nets,
    params: dict,
    model_state: dict,
    opt_state: dict,
    z: jax.Array,
    key: jax.Array,
) -> tuple[dict, dict, dict, dict[str, jax.Array]]:
    """One generator update with the non-saturating loss on D(G(z)) (D fixed, training mode).

    Returns (params, model_state, opt_state, metrics): only params["generator"] and
    opt_state["generator"] change; model_state changes for both. `key` draws D's dropout.
    """
    d_params = params["discriminator"]

    def loss_fn(g_params):
        fake, g_stats = _generate(nets, g_params, model_state["generator"], z, train=True)
        (logits,), d_stats = _discriminate(
            nets, d_params, model_state["discriminator"], (fake,), key
        )
        return generator_loss(logits), (g_stats, d_stats)

    g_params = params["generator"]
    (loss, (g_stats, d_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
    tx = build_optimizer(config)
    updates, g_opt = tx.update(grads, opt_state["generator"], g_params)
    metrics = {
        "g_loss": loss.astype(jnp.float32),
        "g_grad_norm": optax.tree.norm(grads).astype(jnp.float32),  # before clipping
    }
    return (
        {**params, "generator": optax.apply_updates(g_params, updates)},
        {"generator": g_stats, "discriminator": d_stats},
        {**opt_state, "generator": g_opt},
        metrics,
    )


def _constrain(x: jax.Array, sharding: jax.sharding.Sharding | None) -> jax.Array:
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def train_step(
    state: GANState,
    train_data: batches.TrainData,
    *,
    config: ml_collections.ConfigDict,
    static: Nets,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[GANState, dict[str, jax.Array]]:
    """`d_steps` D updates, then one G update and the EMA of G; metrics are float32 scalars
    (D's: the mean over its updates, its grad norm the last one's)."""
    s, batch = config.gan, config.train.batch_size
    data_key, step_key = step_keys(state.rng, state.step)
    d_key = jax.random.fold_in(step_key, _D_STREAM)
    params, model_state, opt_state = state.params, state.model_state, state.opt_state

    d_metrics = []
    for j in range(s.d_steps):
        flip_key, z_key, dropout_key = jax.random.split(jax.random.fold_in(d_key, j), 3)
        x, _ = batches.select_batch(train_data, data_key, state.step * s.d_steps + j, batch)
        real = batches.to_model_images(
            _constrain(x, batch_sharding), flip_key, config.data.random_flip
        )
        z = _constrain(latents(z_key, batch, s.latent_dim), batch_sharding)
        params, model_state, opt_state, m = d_update(
            config, static, params, model_state, opt_state, real, z, dropout_key
        )
        d_metrics.append(m)

    z_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, _G_STREAM))
    z = _constrain(latents(z_key, batch, s.latent_dim), batch_sharding)
    params, model_state, opt_state, g_metrics = g_update(
        config, static, params, model_state, opt_state, z, dropout_key
    )

    # G's parameters and its BatchNorm statistics averaged together: statistics of the live G
    # under averaged weights would not match the activations those weights produce.
    ema = state_lib.ema_update(
        config,
        state.step,
        state.ema_params,
        {"params": params["generator"], "batch_stats": model_state["generator"]},
    )
    metrics = {
        name: jnp.mean(jnp.stack([m[name] for m in d_metrics]))
        for name in ("d_loss", "d_real", "d_fake")
    }
    metrics["d_grad_norm"] = d_metrics[-1]["d_grad_norm"]
    metrics.update(g_metrics)
    metrics["loss"] = g_metrics["g_loss"]  # what a "loss" reader sees; it ranks nothing
    metrics["lr"] = jnp.asarray(state_lib.learning_rate(config)(state.step), jnp.float32)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema,
        opt_state=opt_state,
        model_state=model_state,
    )
    return new_state, metrics


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_latents(keys: jax.Array, latent_dim: int) -> jax.Array:
    """z_i = normal(fold_in(keys[i], 0), (latent_dim,)): image i's latent from its key alone."""
    sub = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    return samplers.image_normal(sub, (keys.shape[0], latent_dim))


def sampler(
    config: ml_collections.ConfigDict,
    static: Nets,
    *,
    fast: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> SampleFn:
    """fn(ema_params, keys, labels) -> images [B, H, W, C] in [-1, 1]: G in eval mode (running
    statistics) on z_i from keys[i]; labels are ignored (the GANs are unconditional). One
    network call: `fast` and `batch_sharding` change nothing."""
    del fast, batch_sharding
    latent_dim = config.gan.latent_dim

    def sample(ema_params: dict, keys: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        z = sample_latents(keys, latent_dim)
        x, _ = _generate(static, ema_params["params"], ema_params["batch_stats"], z, train=False)
        return x.astype(jnp.float32)

    return sample


def _method(name: str) -> Method:
    return Method(
        name=name,
        validate=functools.partial(validate, method=name),
        init_state=functools.partial(init_state, method=name),
        train_step=train_step,
        sampler=sampler,
        best_metric=None,  # GAN losses do not rank checkpoints (FID does, when it runs)
    )


METHODS = {"gan": _method("gan"), "dcgan": _method("dcgan")}
