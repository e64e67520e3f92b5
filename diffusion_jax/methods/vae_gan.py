"""The VAE-GAN baseline (Larsen et al. 2016, simplified): a VAE whose decoder is also a GAN's
generator, judged by a conv discriminator D.

Simplified from the paper: the reconstruction term is in pixel space (the VAE's "mse" or "bce"
of `methods/vae.py`), not in D's feature space, and the encoder and decoder share one loss and
one optimizer. The encoder/decoder are `nets.vae.VAE`; D (`nets.vae_gan.Discriminator`) is
stride-2 4x4 convs with leaky ReLU (one per entry of `disc_widths`) and a dense layer to one
logit. Each step, for the batch x, its reconstructions x_r = tanh(dec(z)), z ~ q(z | x), and
generated images x_p = tanh(dec(z_p)), z_p ~ N(0, I):

  1. `d_update` (D's parameters only): one Adam step on the BCE-with-logits loss
         d_loss = softplus(-D(x)) + softplus(D(x_r)) + softplus(D(x_p))      (mean over the batch)
     (D learns real = 1, reconstructed = generated = 0).
  2. `vae_update` (encoder + decoder only), against the updated D: one Adam step on
         loss = recon + beta * KL + adv_weight * g_adv,
         g_adv = softplus(-D(x_r)) + softplus(-D(x_p))                       (non-saturating)
     with recon and KL per image as in the VAE (summed over pixels / latent dimensions).

The weight is per image, like recon (a sum over H * W * C pixels) and KL: with adv_weight 0.1
the GAN term is a small correction. Measured on CIFAR-10 (configs/vae_gan_cifar10.py networks,
batch 32): the norm of its gradient on the decoder's parameters is 5e-5 of that of
recon + beta * KL at initialisation and 2% after 50 steps; raise adv_weight for a stronger GAN.

Metrics: loss (the VAE side's total), recon, kl, g_adv, d_loss, d_real / d_recon / d_fake (D's
mean probability of "real" on each kind, before its update), vae_grad_norm, d_grad_norm, lr.
Sampling decodes the prior like the VAE; `ema_params` is the EMA of the VAE side only (D is not
needed to make images). The held-out loss is the VAE's (recon + beta * KL on test images).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import batches
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.methods import vae
from diffusion_jax.methods.base import Method, SampleFn
from diffusion_jax.nets.vae_gan import Discriminator


def settings() -> ml_collections.ConfigDict:
    """`config.vae_gan`: the VAE-GAN's own settings (lr, batch, EMA are config.train's)."""
    s = ml_collections.ConfigDict()
    s.latent_dim = 256  # dimensions of z (prior N(0, I), diagonal Gaussian posterior)
    s.widths = (64, 128, 256)  # encoder channels per stride-2 conv (decoder: reversed)
    s.disc_widths = (64, 128, 256)  # discriminator channels per stride-2 conv
    s.beta = 1.0  # KL weight
    s.recon = "mse"  # pixel reconstruction term, as config.vae.recon ("mse" or "bce")
    s.adv_weight = 0.1  # weight of the GAN loss (per image) beside recon + beta * KL (per image)
    s.b1 = 0.5  # Adam beta1 of both optimizers (DCGAN's 0.5)
    s.b2 = 0.999  # Adam beta2 of both optimizers
    return s


class Static(NamedTuple):
    """What the pure functions need besides arrays: the two graphdefs."""

    vae: nnx.GraphDef
    discriminator: nnx.GraphDef


def validate(config: ml_collections.ConfigDict) -> None:
    vae.check_settings(config, "vae_gan")
    s = config.vae_gan
    w = s.disc_widths
    ok = isinstance(w, (tuple, list)) and w
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in w)
    if not ok:
        raise UserError(
            f"config.vae_gan.disc_widths={w!r} must be a non-empty tuple of positive integers."
        )
    a = s.adv_weight
    if not (isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a < float("inf")):
        raise UserError(f"config.vae_gan.adv_weight={a!r} must be a finite number >= 0.")


def init_state(config: ml_collections.ConfigDict) -> tuple[Static, vae.State]:
    """(graphdefs, fresh state): params {"vae", "discriminator"}, EMA of the VAE, two Adams."""
    s = config.vae_gan
    # state.rng as DDPM's (and the VAE's): the same seed gives every method the same batches
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    vae_key, d_key = jax.random.split(init_key)
    vae_def, vae_params = nnx.split(vae.build_vae(config, s, nnx.Rngs(params=vae_key)), nnx.Param)
    disc = Discriminator(
        image_size=config.data.image_size,
        channels=config.data.channels,
        widths=tuple(int(v) for v in s.disc_widths),
        rngs=nnx.Rngs(params=d_key),
    )
    d_def, d_params = nnx.split(disc, nnx.Param)
    optimizer = vae.build_optimizer(config, s)
    params = {"vae": vae_params, "discriminator": d_params}
    state = vae.State(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        ema_params=jax.tree.map(jnp.copy, vae_params),
        opt_state={k: optimizer.init(v) for k, v in params.items()},
    )
    return Static(vae=vae_def, discriminator=d_def), state


def _bce_logits(logits: jax.Array, real: bool) -> jax.Array:
    """Binary cross-entropy of D's `logits` against the label real (1) or not (0):
    softplus(-logits) or softplus(logits), elementwise."""
    return jax.nn.softplus(-logits) if real else jax.nn.softplus(logits)


def _adam_step(config: ml_collections.ConfigDict, params, opt_state, side: str, loss_fn):
    """One Adam step of `params[side]` on `loss_fn(params[side]) -> (loss, aux)`, the other side
    left as it is. Returns (params, opt_state, aux, the gradient's global norm)."""
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[side])
    optimizer = vae.build_optimizer(config, config.vae_gan)
    updates, new_opt = optimizer.update(grads, opt_state[side], params[side])
    new_params = {**params, side: optax.apply_updates(params[side], updates)}
    return new_params, {**opt_state, side: new_opt}, aux, optax.tree.norm(grads)


def d_update(
    config: ml_collections.ConfigDict,
    static: Static,
    params: dict[str, Any],
    opt_state: dict[str, Any],
    x: jax.Array,
    x_recon: jax.Array,
    x_fake: jax.Array,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """One Adam step of D on real x vs. reconstructed and generated images (held fixed).

    Returns (params, opt_state, metrics) with only the "discriminator" entries changed.
    """
    x_recon, x_fake = jax.lax.stop_gradient(x_recon), jax.lax.stop_gradient(x_fake)
    n = x.shape[0]

    def loss_fn(d_params):
        disc = nnx.merge(static.discriminator, d_params)
        logits = disc(jnp.concatenate([x, x_recon, x_fake]))  # one pass over the three kinds
        real, recon, fake = logits[:n], logits[n : 2 * n], logits[2 * n :]
        per_image = _bce_logits(real, True) + _bce_logits(recon, False) + _bce_logits(fake, False)
        d_loss = jnp.mean(per_image)
        probs = {
            "d_loss": d_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real)),
            "d_recon": jnp.mean(jax.nn.sigmoid(recon)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake)),
        }
        return d_loss, probs

    params, opt_state, metrics, norm = _adam_step(
        config, params, opt_state, "discriminator", loss_fn
    )
    return params, opt_state, {**metrics, "d_grad_norm": norm}


def vae_update(
    config: ml_collections.ConfigDict,
    static: Static,
    params: dict[str, Any],
    opt_state: dict[str, Any],
    x: jax.Array,
    eps: jax.Array,
    z_prior: jax.Array,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """One Adam step of the encoder + decoder on recon + beta * KL + adv_weight * g_adv, with D
    (params["discriminator"]) fixed. Returns (params, opt_state, metrics), only "vae" changed.
    """
    s = config.vae_gan
    disc = nnx.merge(static.discriminator, params["discriminator"])

    def loss_fn(vae_params):
        model = nnx.merge(static.vae, vae_params)
        terms, h = vae.per_image_losses(model, x, eps, s)
        x_recon = vae.to_images(h)
        x_fake = vae.to_images(model.decoder(z_prior))
        logits = disc(jnp.concatenate([x_recon, x_fake]))
        n = x.shape[0]
        g_adv = _bce_logits(logits[:n], True) + _bce_logits(logits[n:], True)
        loss = terms["loss"] + s.adv_weight * g_adv
        metrics = {"loss": jnp.mean(loss), "recon": jnp.mean(terms["recon"]),
                   "kl": jnp.mean(terms["kl"]), "g_adv": jnp.mean(g_adv)}  # fmt: skip
        return metrics["loss"], metrics

    params, opt_state, metrics, norm = _adam_step(config, params, opt_state, "vae", loss_fn)
    return params, opt_state, {**metrics, "vae_grad_norm": norm}


def train_step(
    state: vae.State,
    train_data: batches.TrainData,
    *,
    config: ml_collections.ConfigDict,
    static: Static,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[vae.State, dict[str, jax.Array]]:
    """D's update, then the encoder/decoder's against the new D; EMA of the VAE side."""
    s = config.vae_gan
    x, key = vae.training_batch(config, state, train_data, batch_sharding)
    post_key, prior_key = jax.random.split(key)
    n, latent = x.shape[0], int(s.latent_dim)
    eps = vae.posterior_noise(post_key, n, latent)
    z_prior = vae.posterior_noise(prior_key, n, latent)  # N(0, I), row i from its own key

    model = nnx.merge(static.vae, state.params["vae"])
    h, _, _ = vae.forward(model, x, eps)
    x_recon, x_fake = vae.to_images(h), vae.to_images(model.decoder(z_prior))

    params, opt_state, d_metrics = d_update(
        config, static, state.params, state.opt_state, x, x_recon, x_fake
    )
    params, opt_state, v_metrics = vae_update(config, static, params, opt_state, x, eps, z_prior)
    metrics = {
        **v_metrics,
        **d_metrics,
        "lr": jnp.asarray(state_lib.learning_rate(config)(state.step), jnp.float32),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=state_lib.ema_update(config, state.step, state.ema_params, params["vae"]),
        opt_state=opt_state,
    )
    return new_state, metrics


def sampler(
    config: ml_collections.ConfigDict,
    static: Static,
    *,
    fast: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> SampleFn:
    """The decoder on prior draws, as the VAE's (`fast`, `batch_sharding` change nothing)."""
    del fast, batch_sharding
    return vae.decoder_sampler(static.vae, int(config.vae_gan.latent_dim))


def reconstruct(
    config: ml_collections.ConfigDict, static: Static, ema_params: Any, images: jax.Array
) -> jax.Array:
    """tanh(decoder(posterior mean)) of `images` (uint8 or [-1, 1] floats), in [-1, 1]."""
    return vae.reconstruct_with(static.vae, ema_params, images)


def heldout(config: ml_collections.ConfigDict, mesh: Mesh, static: Static):
    return vae.make_heldout_loss(config, mesh, static.vae, config.vae_gan)


METHODS = {
    "vae_gan": Method(
        name="vae_gan",
        validate=validate,
        init_state=init_state,
        train_step=train_step,
        sampler=sampler,
        heldout=heldout,
        best_metric="loss",  # "auto" picks heldout_loss when heldout_examples > 0
    )
}
