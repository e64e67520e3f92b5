"""The held-out loss: a low-variance, deterministic measure of a model during training (VDM).

The training loss of one log window is noisy, dominated by which timesteps were drawn. The
held-out loss is the eps-MSE of a model on the first `config.train.heldout_examples` images of
the test split, each at every timestep of a fixed grid (`config.train.heldout_timesteps`
centres of equal bins of [0, T)), with noise fixed per (image, grid point). Same parameters,
same number, on any device count; it picks the checkpoint kept in `workdir/best` when periodic
FID is off (`config.train.best_metric="auto"`).

It is the unweighted eps-MSE whatever the training's `config.diffusion.loss_weighting` (and
whatever the prediction: outputs are converted to eps), so runs trained under different
weightings or parameterisations are compared on one number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import data, diffusion, parallel, samplers

HELDOUT_STREAM = 4  # fold_in(PRNGKey(config.seed), HELDOUT_STREAM) seeds the held-out noise
HeldoutLoss = Callable[[nnx.State], np.ndarray]


def timestep_grid(num_timesteps: int, count: int) -> np.ndarray:
    """`count` timesteps at the centres of equal bins of [0, num_timesteps), int32."""
    count = min(int(count), int(num_timesteps))
    centres = (np.arange(count) + 0.5) * num_timesteps / count
    return np.minimum(centres.astype(np.int64), num_timesteps - 1).astype(np.int32)


def heldout_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The first `heldout_examples` test images (uint8) and labels, on the host."""
    images, labels = data.read_split(config.data, "test")
    n = int(config.train.heldout_examples)
    if n > len(images):
        logging.info("Held-out loss: the test split has %d images (< %d); using all of them.",
                     len(images), n)  # fmt: skip
    return images[:n], labels[:n]


def make_heldout_loss(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    graphdef: nnx.GraphDef,
    schedule: diffusion.Schedule,
) -> HeldoutLoss | None:
    """`fn(params) -> [grid, n]` held-out eps-MSEs (host) of the n images at each timestep of
    the grid, compiled once; None when switched off. The loop logs their mean and spread
    (`metrics.heldout_scalars`).

    Class-conditional models see the images' true labels. Every process must call it (the
    images are replicated and the batch is split over all devices when it divides).
    """
    if not config.train.heldout_examples:
        return None
    images, labels = heldout_images(config)
    n = len(images)
    grid = jnp.asarray(
        timestep_grid(config.diffusion.num_timesteps, config.train.heldout_timesteps)
    )
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), HELDOUT_STREAM)
    prediction = config.diffusion.prediction
    conditional = bool(config.model.num_classes)
    replicated = parallel.replicated(mesh)
    split = parallel.batch_sharding(mesh) if n % parallel.num_devices(mesh) == 0 else replicated
    noise_shape = (n, *images.shape[1:])

    def loss(params, x_uint8, y):
        model = nnx.merge(graphdef, params)
        x = jax.lax.with_sharding_constraint(data.to_model_space(x_uint8), split)
        y = jax.lax.with_sharding_constraint(y, split) if conditional else None

        def at(j):
            t = jnp.full((n,), grid[j], jnp.int32)
            keys = samplers.image_keys(jax.random.fold_in(key, j), n)
            keys = jax.lax.with_sharding_constraint(keys, split)
            noise = samplers.image_normal(keys, noise_shape)

            def eps_fn(x_t, t):
                return diffusion.eps_from_output(schedule, x_t, t, model(x_t, t, y), prediction)

            # Unweighted (not training_loss's weights): comparable across loss weightings.
            return diffusion.loss_at(schedule, eps_fn, x, t, noise)

        return jax.lax.map(at, jnp.arange(len(grid)))

    compiled = jax.jit(loss, in_shardings=(replicated, replicated, replicated),
                       out_shardings=replicated)  # fmt: skip
    x_dev = parallel.global_array(images, replicated, images.shape)
    y_dev = parallel.global_array(labels.astype(np.int32), replicated, labels.shape)

    def heldout_loss(params: nnx.State) -> np.ndarray:
        return parallel.process_allgather(compiled(params, x_dev, y_dev))

    return heldout_loss
