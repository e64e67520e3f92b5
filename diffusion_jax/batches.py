"""The training split on the devices and the batch of step n: one data pipeline for every method.

`TrainData` holds the whole split (uint8) on the devices; `select_batch` picks step n's global
batch from a key and the step alone (see DESIGN.md "Data order"), so every method (DDPM, GAN,
VAE, ...) sees the same images in the same order for the same seed, on any number of devices.
`to_model_images` converts and flips them.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import data


@flax.struct.dataclass
class TrainData:
    """The training split on the devices: shard s of `num_shards` is row s of both arrays."""

    images: jax.Array  # uint8 [num_shards, shard_size, H, W, C], split over processes
    labels: jax.Array  # int32 [num_shards, shard_size]

    @property
    def shard_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_shards(self) -> int:
        return int(self.images.shape[0])


def select_batch(
    train_data: TrainData, data_key: jax.Array, step: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """The global batch of `step`: shard s contributes rows `perm_s[i*b:(i+1)*b]`, where
    `perm_s = permutation(fold_in(fold_in(data_key, epoch), s))` and b = batch / num_shards.

    Depends only on the key, the step and the number of shards, never on the devices.
    """
    n, size = train_data.num_shards, train_data.shard_size
    b = batch_size // n
    steps_per_epoch = size // b
    epoch, i = step // steps_per_epoch, step % steps_per_epoch
    epoch_key = jax.random.fold_in(data_key, epoch)

    def rows(s, shard_images, shard_labels):
        perm = jax.random.permutation(jax.random.fold_in(epoch_key, s), size)
        idx = jax.lax.dynamic_slice_in_dim(perm, i * b, b)
        return shard_images[idx], shard_labels[idx]

    x, y = jax.vmap(rows)(jnp.arange(n), train_data.images, train_data.labels)
    return x.reshape(n * b, *x.shape[2:]), y.reshape(n * b)


def to_model_images(x: jax.Array, flip_key: jax.Array, random_flip: bool) -> jax.Array:
    """uint8 images -> model space [-1, 1], with random horizontal flips (the W axis, rate 1/2,
    drawn per example from `flip_key`) when `random_flip`."""
    x = data.to_model_space(x)
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x
