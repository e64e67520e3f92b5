"""The VAE-GAN's discriminator (`methods/vae_gan.py`), in Flax NNX: stride-2 4x4 convs with
leaky ReLU (0.2), one per entry of `widths`, and a dense layer to one logit; `judge` also returns
one conv layer's output, the feature space of Larsen et al.'s reconstruction error. The
VAE-GAN's encoder and decoder are `nets.vae.VAE`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class Discriminator(nnx.Module):
    """x [B, H, W, C] in [-1, 1] -> logit [B] of "x is a real image"."""

    def __init__(self, *, image_size: int, channels: int, widths: Sequence[int], rngs: nnx.Rngs):
        ins = (channels, *widths[:-1])
        self.convs = nnx.List(
            [nnx.Conv(a, b, (4, 4), strides=2, rngs=rngs) for a, b in zip(ins, widths, strict=True)]
        )
        size = image_size
        for _ in widths:
            size = -(-size // 2)  # "SAME" stride-2: ceil(size / 2)
        self.out = nnx.Linear(size * size * widths[-1], 1, rngs=rngs)

    def judge(self, x: jax.Array, feature_layer: int = -1) -> tuple[jax.Array, jax.Array]:
        """(conv layer `feature_layer`'s output after its leaky ReLU, flattened [B, features]
        (Python indexing: -1 is the last), logit [B]) of x, in one pass."""
        layer = feature_layer % len(self.convs)
        h, features = x, None
        for i, conv in enumerate(self.convs):
            h = jax.nn.leaky_relu(conv(h), 0.2)
            if i == layer:
                features = h.reshape(h.shape[0], -1)
        return features, self.out(h.reshape(h.shape[0], -1))[:, 0]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.judge(x)[1]
