"""The VAE-GAN of Larsen et al. (2016), "Autoencoding beyond pixels using a learned similarity
metric": a VAE whose decoder is also a GAN's generator, and whose reconstruction error is
measured in the feature space of the GAN's discriminator D instead of pixels.

The encoder/decoder are `nets.vae.VAE`; D (`nets.vae_gan.Discriminator`) is stride-2 4x4 convs
with leaky ReLU (one per entry of `disc_widths`) and a dense layer to one logit. `Dis_l(x)` is
the output of D's conv layer `feature_layer` (after its leaky ReLU; Python indexing, -1 = the
last), flattened (`Discriminator.judge`). Each step,
for the batch x, z ~ q(z | x) (reparameterised), x_r = tanh(dec(z)) and x_p = tanh(dec(z_p)),
z_p ~ N(0, I), and per image:

    L_prior = KL(q(z | x) || N(0, I))                        (closed form, as the VAE's)
    L_llike = 0.5 * sum((Dis_l(x_r) - Dis_l(x))^2)           (-log N(Dis_l(x); Dis_l(x_r), I) + c)
    L_GAN^D = softplus(-D(x)) + 0.5 * (softplus(D(x_r)) + softplus(D(x_p)))      (BCE, for D)
    L_GAN^G = softplus(-D(x_r)) + softplus(-D(x_p))          (non-saturating, for the decoder)

and the three networks step on different losses (Larsen et al.'s Algorithm 1), batch means:

    encoder:        beta * L_prior + L_llike                 (no GAN term reaches it)
    decoder:        gamma * L_llike + L_GAN^G
    discriminator:  L_GAN^D                                  (L_llike does not train D)

`gamma` (default 1e-2, the weight of the authors' code) trades reconstruction against fooling D.
D weighs real images and the two kinds of generated ones equally in total (the authors'
`real_vs_gen_weight` 0.5). Departures from the paper, all as in common practice: the decoder's
GAN term is the non-saturating form (the paper writes the minimax one), D steps first and the
encoder/decoder step against the updated D, there is no BatchNorm in D, and the authors' code's
equilibrium rule (skipping D's or the decoder's update when D's losses leave a band) is not used.
Encoder and decoder share one Adam (elementwise, so the same as two) with the gradient clipped
per network (`config.train.grad_clip`); D has its own Adam.

Metrics: loss (= encoder loss + decoder loss), prior, llike, g_adv (L_GAN^G), d_loss, d_real /
d_recon / d_fake (D's mean probability of "real" on each kind, before its update),
encoder_grad_norm, decoder_grad_norm, d_grad_norm, lr. Sampling decodes the prior like the VAE;
`ema_params` is the EMA of the encoder and decoder (D is not needed to make images). The
held-out loss is a diagnostic in pixels, the VAE's recon (`recon`, "mse") + beta * KL on test
images: training never sees pixel errors, but it tracks how faithful reconstructions are.
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
    s.feature_layer = -1  # D's conv layer whose output is Dis_l (Python index; -1: the last)
    s.beta = 1.0  # weight of the KL (prior) term in the encoder's loss
    s.gamma = 1e-2  # weight of the feature reconstruction against the GAN term (decoder)
    s.recon = "mse"  # the held-out diagnostic's pixel term only (training uses D's features)
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
    layer = s.get("feature_layer")
    if not (isinstance(layer, int) and not isinstance(layer, bool) and -len(w) <= layer < len(w)):
        raise UserError(
            f"config.vae_gan.feature_layer={layer!r} must index one of D's {len(w)} conv layers "
            f"(an integer from {-len(w)} to {len(w) - 1}; -1 is the last)."
        )
    g = s.get("gamma")
    if not (isinstance(g, (int, float)) and not isinstance(g, bool) and 0 <= g < float("inf")):
        raise UserError(f"config.vae_gan.gamma={g!r} must be a finite number >= 0.")
    if "adv_weight" in s:
        raise UserError(
            "config.vae_gan.adv_weight is gone: the VAE-GAN is now Larsen et al.'s (the decoder "
            "weighs D's feature reconstruction by config.vae_gan.gamma against the GAN term). "
            "Remove adv_weight from the config."
        )


def _parts(vae_params: Any) -> Any:
    """The tree of "encoder" / "decoder" labels of the VAE's parameters (their top-level key)."""

    def label(path, _):
        key = path[0]
        return str(getattr(key, "key", getattr(key, "name", key)))

    return jax.tree_util.tree_map_with_path(label, vae_params)


def _norm_of(grads: Any, part: str) -> jax.Array:
    """The global norm of the "encoder" or "decoder" part of the VAE's gradient."""
    mine = jax.tree.map(lambda p, g: g if p == part else jnp.zeros_like(g), _parts(grads), grads)
    return optax.tree.norm(mine)


def _vae_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """One Adam over encoder + decoder behind a global-norm clip per network."""
    g = config.train.grad_clip
    clip = optax.clip_by_global_norm(g) if g > 0 else optax.identity()
    s = config.vae_gan
    per_net = optax.multi_transform({"encoder": clip, "decoder": clip}, _parts)
    return optax.chain(per_net, state_lib.adam(config, s.b1, s.b2, clip=False))


def _optimizer(config: ml_collections.ConfigDict, side: str) -> optax.GradientTransformation:
    if side == "vae":
        return _vae_optimizer(config)
    return vae.build_optimizer(config, config.vae_gan)


def init_state(config: ml_collections.ConfigDict) -> tuple[Static, vae.State]:
    """(graphdefs, fresh state): params {"vae", "discriminator"}, EMA of the VAE, two Adams
    (the VAE's clipped per network)."""
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
    params = {"vae": vae_params, "discriminator": d_params}
    state = vae.State(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        ema_params=jax.tree.map(jnp.copy, vae_params),
        opt_state={k: _optimizer(config, k).init(v) for k, v in params.items()},
    )
    return Static(vae=vae_def, discriminator=d_def), state


def _bce_logits(logits: jax.Array, real: bool) -> jax.Array:
    """Binary cross-entropy of D's `logits` against the label real (1) or not (0):
    softplus(-logits) or softplus(logits), elementwise."""
    return jax.nn.softplus(-logits) if real else jax.nn.softplus(logits)


def _apply(config, params, opt_state, side: str, grads):
    """One Adam step of `params[side]` with `grads`; the other side left as it is."""
    updates, new_opt = _optimizer(config, side).update(grads, opt_state[side], params[side])
    new_params = {**params, side: optax.apply_updates(params[side], updates)}
    return new_params, {**opt_state, side: new_opt}


def d_update(
    config: ml_collections.ConfigDict,
    static: Static,
    params: dict[str, Any],
    opt_state: dict[str, Any],
    x: jax.Array,
    x_recon: jax.Array,
    x_fake: jax.Array,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """One Adam step of D on L_GAN^D: real x vs. reconstructed and generated images (fixed).

    Returns (params, opt_state, metrics) with only the "discriminator" entries changed.
    """
    x_recon, x_fake = jax.lax.stop_gradient(x_recon), jax.lax.stop_gradient(x_fake)
    n = x.shape[0]

    def loss_fn(d_params):
        disc = nnx.merge(static.discriminator, d_params)
        logits = disc(jnp.concatenate([x, x_recon, x_fake]))  # one pass over the three kinds
        real, recon, fake = logits[:n], logits[n : 2 * n], logits[2 * n :]
        generated = _bce_logits(recon, False) + _bce_logits(fake, False)
        d_loss = jnp.mean(_bce_logits(real, True) + 0.5 * generated)
        probs = {
            "d_loss": d_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real)),
            "d_recon": jnp.mean(jax.nn.sigmoid(recon)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake)),
        }
        return d_loss, probs

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params["discriminator"])
    params, opt_state = _apply(config, params, opt_state, "discriminator", grads)
    return params, opt_state, {**metrics, "d_grad_norm": optax.tree.norm(grads)}


def vae_losses(
    config: ml_collections.ConfigDict,
    static: Static,
    vae_params: Any,
    d_params: Any,
    x: jax.Array,
    eps: jax.Array,
    z_prior: jax.Array,
) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
    """((encoder loss, decoder loss), metrics) of the batch, batch means; D is fixed."""
    s = config.vae_gan
    disc = nnx.merge(static.discriminator, d_params)
    model = nnx.merge(static.vae, vae_params)
    n = x.shape[0]
    h, mean, logvar = vae.forward(model, x, eps)
    x_recon, x_fake = vae.to_images(h), vae.to_images(model.decoder(z_prior))
    features, logits = disc.judge(jnp.concatenate([x, x_recon, x_fake]), s.feature_layer)
    llike = 0.5 * jnp.sum((features[n : 2 * n] - features[:n]) ** 2, axis=-1)
    prior = vae.kl_divergence(mean, logvar)
    g_adv = _bce_logits(logits[n : 2 * n], True) + _bce_logits(logits[2 * n :], True)
    enc = jnp.mean(s.beta * prior + llike)
    dec = jnp.mean(s.gamma * llike + g_adv)
    metrics = {"loss": enc + dec, "prior": jnp.mean(prior), "llike": jnp.mean(llike),
               "g_adv": jnp.mean(g_adv)}  # fmt: skip
    return (enc, dec), metrics


def vae_update(
    config: ml_collections.ConfigDict,
    static: Static,
    params: dict[str, Any],
    opt_state: dict[str, Any],
    x: jax.Array,
    eps: jax.Array,
    z_prior: jax.Array,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """One Adam step of the encoder on its loss and of the decoder on its own, D fixed: one
    forward pass, one backward pass per loss. Returns (params, opt_state, metrics), only "vae"
    changed."""

    def losses(vae_params):
        return vae_losses(config, static, vae_params, params["discriminator"], x, eps, z_prior)

    (enc, dec), vjp, metrics = jax.vjp(losses, params["vae"], has_aux=True)
    one, zero = jnp.ones_like(enc), jnp.zeros_like(dec)
    (g_enc,) = vjp((one, zero))
    (g_dec,) = vjp((zero, one))
    grads = jax.tree.map(lambda part, a, b: a if part == "encoder" else b,
                         _parts(g_enc), g_enc, g_dec)  # fmt: skip
    norms = {f"{part}_grad_norm": _norm_of(grads, part) for part in ("encoder", "decoder")}
    params, opt_state = _apply(config, params, opt_state, "vae", grads)
    return params, opt_state, {**metrics, **norms}


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
