"""The VAE (Kingma & Welling 2014) baseline: conv encoder, transposed-conv decoder, Gaussian prior.

The encoder maps an image to the mean and log-variance of a diagonal Gaussian q(z|x) over
`latent_dim` dimensions (stride-2 4x4 convs, one per entry of `widths`, then a dense layer). The
decoder mirrors it (a dense layer to the smallest feature map, one stride-2 4x4 transposed conv
per width, a 3x3 conv to the image's channels) and returns logits `h`; the image is `tanh(h)`,
so decoded images lie in (-1, 1), the model space of `data.to_model_space`. Built for 28 px
(MNIST, Fashion-MNIST) and 32 px (CIFAR-10) images; `image_size / 2**len(widths)` must be an
integer (28 px: at most 2 widths, 32 px: at most 5).

The loss of one image is the negative ELBO with a KL weight:

    loss = recon(x, h) + beta * KL(q(z|x) || N(0, I)),  z = mean + exp(logvar / 2) * eps,

averaged over the batch, with the KL in closed form, 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar),
and one reparameterised sample of z per image. `recon`:

  "mse": sum over pixels of (x - tanh(h))^2, i.e. -log N(x; tanh(h), I / 2) up to the constant
         (H * W * C / 2) * log(pi): a Gaussian likelihood with fixed variance 1/2 in [-1, 1].
  "bce": sum over pixels of the binary cross-entropy of the target p = (x + 1) / 2 under
         Bernoulli(sigmoid(2h)), whose mean 2 * sigmoid(2h) - 1 = tanh(h) is the image: the usual
         MNIST choice (an exact log-likelihood for binary pixels only).

With beta = 1 the loss is the negative ELBO (in nats, up to the "mse" constant). Samples decode
z ~ N(0, I), z_i = normal(fold_in(keys[i], 0)), so image i depends only on its key. The held-out
loss (`heldout`, logged at each checkpoint) is this loss on the first
`config.train.heldout_examples` test images with one fixed noise draw per image: deterministic,
low-variance, and it picks `workdir/best` when no periodic FID runs (the training loss when
`heldout_examples` is 0).

The networks are `nets.vae`; `methods/vae_gan.py` reuses the losses and helpers of this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import batches, data, parallel, samplers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.heldout import HELDOUT_STREAM
from diffusion_jax.methods.base import Method, SampleFn, step_keys
from diffusion_jax.nets.vae import VAE, levels_ok

RECONS = ("mse", "bce")
IMAGE_SIZES = (28, 32)
PRIOR_STREAM = 0  # z_i = normal(fold_in(keys[i], PRIOR_STREAM)) for sample i


def settings() -> ml_collections.ConfigDict:
    """`config.vae`: the VAE's own settings (lr, batch, EMA, steps are config.train's)."""
    s = ml_collections.ConfigDict()
    s.latent_dim = 128  # dimensions of z (prior N(0, I), diagonal Gaussian posterior)
    s.widths = (64, 128, 256)  # encoder channels, one stride-2 conv each (decoder: reversed)
    s.beta = 1.0  # KL weight (1: the negative ELBO; beta-VAE for other values)
    s.recon = "mse"  # "mse": summed squared error (Gaussian, var 1/2); "bce": Bernoulli
    s.b1 = 0.9  # Adam beta1
    s.b2 = 0.999  # Adam beta2
    return s


# ---------------------------------------------------------------------------------------------
# The network (`nets.vae`) from the settings, and its output as images


def to_images(h: jax.Array) -> jax.Array:
    """Decoder logits -> images in (-1, 1)."""
    return jnp.tanh(h)


def build_vae(config: ml_collections.ConfigDict, s: ml_collections.ConfigDict, rngs) -> VAE:
    """The VAE of settings `s` (config.vae or config.vae_gan) for `config.data`'s images."""
    return VAE(
        image_size=config.data.image_size,
        channels=config.data.channels,
        widths=tuple(int(w) for w in s.widths),
        latent_dim=int(s.latent_dim),
        rngs=rngs,
    )


# ---------------------------------------------------------------------------------------------
# Loss terms (pure functions of arrays)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per row [B], in closed form (nats)."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
    """z = mean + sigma * eps: a draw of q(z | x) differentiable in (mean, logvar)."""
    return mean + jnp.exp(0.5 * logvar) * eps


def reconstruction_loss(h: jax.Array, x: jax.Array, kind: str) -> jax.Array:
    """-log p(x | z) per image [B] (up to a constant for "mse"), from decoder logits `h`."""
    axes = tuple(range(1, x.ndim))
    if kind == "mse":
        return jnp.sum(jnp.square(x - to_images(h)), axis=axes)
    if kind == "bce":
        logits, target = 2.0 * h, (x + 1.0) / 2.0  # tanh(h) = 2 * sigmoid(2h) - 1
        return jnp.sum(jax.nn.softplus(logits) - target * logits, axis=axes)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECONS}")


def forward(model: VAE, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(decoder logits of z = mean + sigma * eps, mean, logvar) for images x."""
    mean, logvar = model.encoder(x)
    return model.decoder(reparameterize(mean, logvar, eps)), mean, logvar


def per_image_losses(
    model: VAE, x: jax.Array, eps: jax.Array, s: ml_collections.ConfigDict
) -> tuple[dict[str, jax.Array], jax.Array]:
    """({loss, recon, kl}: [B] each, decoder logits) of images x with posterior noise eps."""
    h, mean, logvar = forward(model, x, eps)
    recon = reconstruction_loss(h, x, s.recon)
    kl = kl_divergence(mean, logvar)
    return {"loss": recon + s.beta * kl, "recon": recon, "kl": kl}, h


def prior_z(keys: jax.Array, latent_dim: int) -> jax.Array:
    """z_i = normal(fold_in(keys[i], 0), (latent_dim,)): one prior draw per image key."""
    return jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(k, PRIOR_STREAM), (latent_dim,))
    )(keys)


def posterior_noise(key: jax.Array, batch: int, latent_dim: int) -> jax.Array:
    """eps [batch, latent_dim], row i from fold_in(key, i) (the same for any sharding)."""
    return samplers.image_normal(samplers.image_keys(key, batch), (batch, latent_dim))


# ---------------------------------------------------------------------------------------------
# State, optimizer, shared step helpers


@flax.struct.dataclass
class State:
    """The VAE's (and VAE-GAN's) training state; every field is checkpointed."""

    step: jax.Array  # int32 scalar: optimizer updates done
    rng: jax.Array  # raw uint32[2] key: batches and noise of step n from fold_in(rng, ...)
    params: Any  # VAE: the VAE's nnx.State; VAE-GAN: {"vae": ..., "discriminator": ...}
    ema_params: Any  # EMA of the VAE's parameters (encoder + decoder): what sampling reads
    opt_state: Any  # Adam state (VAE-GAN: {"vae": ..., "discriminator": ...})


def build_optimizer(
    config: ml_collections.ConfigDict, s: ml_collections.ConfigDict
) -> optax.GradientTransformation:
    """Adam(b1, b2 of `s`) at `config.train`'s lr (and warmup), behind optional clipping.

    `identity` stands in for a disabled clip so the state's structure is the same either way.
    """
    return state_lib.adam(config, s.b1, s.b2)


def training_batch(
    config: ml_collections.ConfigDict,
    state: State,
    train_data: batches.TrainData,
    batch_sharding: jax.sharding.Sharding | None,
) -> tuple[jax.Array, jax.Array]:
    """(images of step `state.step` in [-1, 1], randomly flipped if configured; this step's key
    for the method's own draws). The same images for every method of a seed (batches.py)."""
    data_key, step_key = step_keys(state.rng, state.step)
    flip_key, key = jax.random.split(step_key)
    x, _ = batches.select_batch(train_data, data_key, state.step, config.train.batch_size)
    if batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
    return batches.to_model_images(x, flip_key, config.data.random_flip), key


def check_settings(config: ml_collections.ConfigDict, name: str) -> None:
    """Raise `UserError` naming the first bad setting of `config.<name>` (a VAE's settings)."""
    if name not in config:
        raise UserError(
            f"The config lacks config.{name}; set config.{name} = "
            f"diffusion_jax.methods.{name}.settings() in the config file."
        )
    s = config[name]

    def fail(field: str, requirement: str) -> None:
        raise UserError(f"config.{name}.{field}={s[field]!r} {requirement}.")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (is_int(s.latent_dim) and s.latent_dim > 0):
        fail("latent_dim", "must be a positive integer")
    widths = s.widths
    if not (
        isinstance(widths, (tuple, list)) and widths and all(is_int(w) and w > 0 for w in widths)
    ):
        fail("widths", "must be a non-empty tuple of positive integers")
    if not (is_num(s.beta) and s.beta >= 0):
        fail("beta", "must be a finite number >= 0")
    if s.recon not in RECONS:
        fail("recon", f"is not one of {RECONS}")
    for field in ("b1", "b2"):
        if not (is_num(s[field]) and 0 <= s[field] < 1):
            fail(field, "must be in [0, 1)")
    size = config.data.image_size
    if size not in IMAGE_SIZES:
        raise UserError(
            f"config.data.image_size={size!r}: the {name} networks are built for "
            f"{' or '.join(map(str, IMAGE_SIZES))} px images (MNIST, Fashion-MNIST, CIFAR-10)."
        )
    if not levels_ok(size, widths):
        most = max(n for n in range(1, 6) if size % 2**n == 0)
        fail(
            "widths",
            f"has {len(widths)} entries (stride-2 levels), but {size} px images halve "
            f"evenly at most {most} times; use at most {most} widths",
        )


def validate(config: ml_collections.ConfigDict) -> None:
    check_settings(config, "vae")


# ---------------------------------------------------------------------------------------------
# The method


def init_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, State]:
    """(graphdef of the VAE, fresh state): parameters, EMA = parameters, Adam state, step 0."""
    s = config.vae
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    graphdef, params = nnx.split(build_vae(config, s, nnx.Rngs(params=init_key)), nnx.Param)
    state = State(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=build_optimizer(config, s).init(params),
    )
    return graphdef, state


def train_step(
    state: State,
    train_data: batches.TrainData,
    *,
    config: ml_collections.ConfigDict,
    static: nnx.GraphDef,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[State, dict[str, jax.Array]]:
    """One Adam update of the negative ELBO (one z per image); EMA of the parameters."""
    s = config.vae
    x, key = training_batch(config, state, train_data, batch_sharding)
    eps = posterior_noise(key, x.shape[0], s.latent_dim)

    def loss_fn(params):
        terms, _ = per_image_losses(nnx.merge(static, params), x, eps, s)
        terms = {k: jnp.mean(v) for k, v in terms.items()}
        return terms["loss"], terms

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    optimizer = build_optimizer(config, s)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **terms,
        "grad_norm": optax.tree.norm(grads),  # before clipping
        "lr": jnp.asarray(state_lib.learning_rate(config)(state.step), jnp.float32),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=state_lib.ema_update(config, state.step, state.ema_params, params),
        opt_state=opt_state,
    )
    return new_state, metrics


def decoder_sampler(graphdef: nnx.GraphDef, latent_dim: int) -> SampleFn:
    """sample_fn(vae_params, keys, labels): tanh(decoder(z_i)), z_i from keys[i] (the prior)."""

    def sample(params, keys: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        del labels  # unconditional
        model = nnx.merge(graphdef, params)
        return to_images(model.decoder(prior_z(keys, latent_dim)))

    return sample


def sampler(
    config: ml_collections.ConfigDict,
    static: nnx.GraphDef,
    *,
    fast: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> SampleFn:
    """The decoder on prior draws (one network call: `fast` and `batch_sharding` change
    nothing)."""
    del fast, batch_sharding
    return decoder_sampler(static, int(config.vae.latent_dim))


def reconstruct(
    config: ml_collections.ConfigDict, static: nnx.GraphDef, ema_params: Any, images: jax.Array
) -> jax.Array:
    """tanh(decoder(posterior mean)) of `images` (uint8, or float in [-1, 1]) [B, H, W, C]:
    the deterministic reconstructions of reconstruction figures, in [-1, 1]."""
    return reconstruct_with(static, ema_params, images)


def reconstruct_with(graphdef: nnx.GraphDef, params: Any, images: jax.Array) -> jax.Array:
    """`reconstruct` for a VAE graphdef and its parameters (shared with the VAE-GAN)."""
    x = jnp.asarray(images)
    x = data.to_model_space(x) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    model = nnx.merge(graphdef, params)
    mean, _ = model.encoder(x)
    return to_images(model.decoder(mean))


def heldout_images(config: ml_collections.ConfigDict) -> np.ndarray:
    """The first `config.train.heldout_examples` test images (uint8 [N, H, W, C])."""
    images, _ = data.read_split(config.data, "test")
    return images[: int(config.train.heldout_examples)]


def heldout_noise(config: ml_collections.ConfigDict, n: int, latent_dim: int) -> jax.Array:
    """The held-out posterior noise: row i from fold_in(fold_in(PRNGKey(seed), HELDOUT_STREAM),
    i) (`heldout.HELDOUT_STREAM`, the DDPM held-out loss's stream)."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), HELDOUT_STREAM)
    return posterior_noise(key, n, latent_dim)


def make_heldout_loss(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    graphdef: nnx.GraphDef,
    s: ml_collections.ConfigDict,
) -> Callable[[Any], np.ndarray] | None:
    """`fn(vae_params) -> [n]` per-image losses (recon + beta * KL, host) of the first
    `heldout_examples` test images, noise fixed per image; compiled once; None when off.

    Every process must call it (the images are replicated; the batch is split over all
    devices when it divides).
    """
    if not config.train.heldout_examples:
        return None
    images = heldout_images(config)
    n = len(images)
    eps_host = np.asarray(heldout_noise(config, n, int(s.latent_dim)))
    replicated = parallel.replicated(mesh)
    split = parallel.batch_sharding(mesh) if n % parallel.num_devices(mesh) == 0 else replicated

    def loss(params, x_uint8, eps):
        x = jax.lax.with_sharding_constraint(data.to_model_space(x_uint8), split)
        eps = jax.lax.with_sharding_constraint(eps, split)
        terms, _ = per_image_losses(nnx.merge(graphdef, params), x, eps, s)
        return terms["loss"]

    compiled = jax.jit(loss, in_shardings=(replicated, replicated, replicated),
                       out_shardings=replicated)  # fmt: skip
    x_dev = parallel.global_array(images, replicated, images.shape)
    eps_dev = parallel.global_array(eps_host, replicated, eps_host.shape)

    def heldout_loss(params) -> np.ndarray:
        return parallel.process_allgather(compiled(params, x_dev, eps_dev))

    return heldout_loss


def heldout(
    config: ml_collections.ConfigDict, mesh: Mesh, static: nnx.GraphDef
) -> Callable[[Any], float] | None:
    return make_heldout_loss(config, mesh, static, config.vae)


METHODS = {
    "vae": Method(
        name="vae",
        validate=validate,
        init_state=init_state,
        train_step=train_step,
        sampler=sampler,
        heldout=heldout,
        best_metric="loss",  # "auto" picks heldout_loss when heldout_examples > 0
    )
}
