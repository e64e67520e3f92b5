"""DDPM (Ho et al. 2020) as a method of the shared loop: the U-Net's train step and sampler.

The state is `state.TrainState`; `static` is the model's NNX graphdef. The train step takes the
whole training split (uint8, on the devices) and does everything on device: picks the batch of
step n (`batches.select_batch`), converts and flips it, draws timesteps, noise, dropout and label
dropout from `fold_in(state.rng, n)`, and updates parameters, Adam state and EMA. The sampler is
`config.sample`'s (`samplers.sample`, with classifier-free guidance for conditional models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from diffusion_jax import batches, diffusion, heldout, samplers
from diffusion_jax import state as state_lib
from diffusion_jax.batches import TrainData
from diffusion_jax.methods.base import Method, SampleFn, step_keys
from diffusion_jax.state import TrainState


def prepare_batch(
    config: ml_collections.ConfigDict,
    x: jax.Array,
    labels: jax.Array,
    flip_key: jax.Array,
    label_key: jax.Array,
) -> tuple[jax.Array, jax.Array | None]:
    """uint8 images -> model space, random horizontal flips (the W axis, rate 1/2) when
    `config.data.random_flip`, and for conditional models labels dropped to the null label
    (`num_classes`) at rate `config.train.label_dropout` (classifier-free guidance)."""
    x = batches.to_model_images(x, flip_key, config.data.random_flip)
    y = None
    if config.model.num_classes:
        drop = jax.random.bernoulli(label_key, config.train.label_dropout, (x.shape[0],))
        y = jnp.where(drop, config.model.num_classes, labels)
    return x, y


def train_step(
    state: TrainState,
    train_data: TrainData,
    *,
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    schedule: diffusion.Schedule,
    optimizer: optax.GradientTransformation,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update; returns the new state and this step's loss, grad norm and lr."""
    step = state.step
    data_key, step_key = step_keys(state.rng, step)
    loss_key, dropout_key, flip_key, label_key = jax.random.split(step_key, 4)

    x, labels = batches.select_batch(train_data, data_key, step, config.train.batch_size)
    if batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    x, y = prepare_batch(config, x, labels, flip_key, label_key)

    def loss_fn(params):
        model = nnx.merge(graphdef, params)

        def denoise(x_t, t):
            return model(x_t, t, y, train=True, rngs=nnx.Rngs(dropout=dropout_key))

        d = config.diffusion
        losses = diffusion.training_loss(
            schedule,
            denoise,
            x,
            loss_key,
            prediction=d.prediction,
            weighting=d.loss_weighting,
            gamma=float(d.min_snr_gamma),
        )
        return jnp.mean(losses)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.ema_update(config, step, state.ema_params, params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),  # before clipping
        "lr": jnp.asarray(state_lib.learning_rate(config)(step), jnp.float32),
    }
    new_state = state.replace(step=step + 1, params=params, ema_params=ema, opt_state=opt_state)
    return new_state, metrics


def _train_step(state, train_data, *, config, static, batch_sharding=None):
    return train_step(
        state,
        train_data,
        config=config,
        graphdef=static,
        schedule=state_lib.build_schedule(config),
        optimizer=state_lib.build_optimizer(config),
        batch_sharding=batch_sharding,
    )


def make_sampler(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    *,
    fast: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> SampleFn:
    """`config.sample`'s sampler (`fast`: DDIM in place of DDPM's T steps, for previews); the
    chain's x keeps `batch_sharding` at every network call."""
    settings = state_lib.sample_settings(config, fast=fast)
    schedule = state_lib.build_schedule(config)
    size, channels = config.data.image_size, config.data.channels

    def sample(params, keys, labels):
        denoise = state_lib.denoise_fn_for(config, graphdef, params, schedule, labels)

        def sharded_denoise(x, t):
            if batch_sharding is not None:
                x = jax.lax.with_sharding_constraint(x, batch_sharding)
            return denoise(x, t)

        shape = (keys.shape[0], size, size, channels)
        return samplers.sample(sharded_denoise, schedule, shape, keys, **settings).samples

    return sample


def _heldout(config, mesh, graphdef):
    return heldout.make_heldout_loss(config, mesh, graphdef, state_lib.build_schedule(config))


METHODS = {
    "ddpm": Method(
        name="ddpm",
        validate=lambda config: None,  # state.validate_config checks DDPM's settings
        init_state=state_lib._init_state,
        train_step=_train_step,
        sampler=make_sampler,
        num_classes=lambda config: int(config.model.num_classes),
        heldout=_heldout,
        best_metric="loss",
    )
}
