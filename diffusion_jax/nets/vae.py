"""The VAE's networks (`methods/vae.py`, and the VAE side of `methods/vae_gan.py`), in Flax NNX.

The encoder maps an image x [B, H, W, C] in [-1, 1] to the mean and log-variance of a diagonal
Gaussian q(z|x) over `latent_dim` dimensions: stride-2 4x4 convs with SiLU, one per entry of
`widths`, then a dense layer. The decoder mirrors it: a dense layer to the smallest feature map,
one stride-2 4x4 transposed conv per width (SiLU), a 3x3 conv to the image's channels; it returns
logits `h` (the method reads the image as `tanh(h)`). `image_size / 2**len(widths)` must be an
integer (`levels_ok`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


def levels_ok(image_size: int, widths: Sequence[int]) -> bool:
    """Whether `image_size` px images halve evenly once per entry of `widths` (at least one)."""
    n = len(widths)
    return n > 0 and image_size % (2**n) == 0


class Encoder(nnx.Module):
    """x [B, H, W, C] in [-1, 1] -> (mean, logvar) [B, latent_dim] of q(z | x)."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        widths: Sequence[int],
        latent_dim: int,
        rngs: nnx.Rngs,
    ):
        if not levels_ok(image_size, widths):
            raise ValueError(f"{image_size} px images do not halve {len(widths)} times")
        ins = (channels, *widths[:-1])
        self.convs = nnx.List(
            [nnx.Conv(a, b, (4, 4), strides=2, rngs=rngs) for a, b in zip(ins, widths, strict=True)]
        )
        base = image_size // 2 ** len(widths)
        self.out = nnx.Linear(base * base * widths[-1], 2 * latent_dim, rngs=rngs)
        self.latent_dim = latent_dim

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for conv in self.convs:
            h = nnx.silu(conv(h))
        h = self.out(h.reshape(h.shape[0], -1))
        return h[:, : self.latent_dim], h[:, self.latent_dim :]


class Decoder(nnx.Module):
    """z [B, latent_dim] -> logits h [B, H, W, C]; the image is `tanh(h)`."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        widths: Sequence[int],
        latent_dim: int,
        rngs: nnx.Rngs,
    ):
        if not levels_ok(image_size, widths):
            raise ValueError(f"{image_size} px images do not halve {len(widths)} times")
        self.base = image_size // 2 ** len(widths)
        self.top = widths[-1]
        self.inp = nnx.Linear(latent_dim, self.base * self.base * self.top, rngs=rngs)
        ins = tuple(reversed(widths))
        outs = (*ins[1:], widths[0])
        self.deconvs = nnx.List(
            [
                nnx.ConvTranspose(a, b, (4, 4), strides=2, padding="SAME", rngs=rngs)
                for a, b in zip(ins, outs, strict=True)
            ]
        )
        self.out = nnx.Conv(widths[0], channels, (3, 3), rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = nnx.silu(self.inp(z)).reshape(z.shape[0], self.base, self.base, self.top)
        for deconv in self.deconvs:
            h = nnx.silu(deconv(h))
        return self.out(h)


class VAE(nnx.Module):
    """The encoder and the decoder (one module: one graphdef, one parameter tree)."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        widths: Sequence[int],
        latent_dim: int,
        rngs: nnx.Rngs,
    ):
        kwargs = dict(image_size=image_size, channels=channels, widths=tuple(widths),
                      latent_dim=latent_dim, rngs=rngs)  # fmt: skip
        self.encoder = Encoder(**kwargs)
        self.decoder = Decoder(**kwargs)
