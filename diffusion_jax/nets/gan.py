"""The networks of the GAN baselines, in Flax NNX: the course's MLP GAN and DCGAN.

`MLPGenerator` / `MLPDiscriminator`: the fully connected GAN of the course (Goodfellow et al.
2014 as usually taught): z -> 256 -> 512 -> 1024 -> H*W*C with LeakyReLU(0.2) and a tanh
output; the discriminator 1024 -> 512 -> 256 -> 1 with LeakyReLU(0.2) and optional dropout.

`DCGANGenerator` / `DCGANDiscriminator`: Radford et al. (2016) as in the PyTorch DCGAN tutorial,
sized for 28 px (MNIST: 7x7 -> 14 -> 28) or 32 px (CIFAR-10: 4x4 -> 8 -> 16 -> 32). The generator
projects z to s0 x s0 x (width * 2**(L-1)) (a bias-free dense layer, the same map as the
tutorial's 4x4 transposed conv of a 1x1 input), then L-1 transposed convs (4x4, stride 2) with
BatchNorm + ReLU halving the width, and a last transposed conv to C channels with tanh. The
discriminator mirrors it: L strided 4x4 convs doubling the width from `width`, BatchNorm on all
but the first, LeakyReLU(0.2), then one linear logit of the s0 x s0 features (the tutorial's
last 4x4 valid conv). Layers before BatchNorm have no bias.

Initialisation (DCGAN): every conv / dense kernel N(0, init_std), biases 0, BatchNorm scale
N(1, init_std) and bias 0. BatchNorm momentum 0.9 is PyTorch's 0.1 (running = 0.9 * running +
0.1 * batch), epsilon 1e-5; unlike PyTorch the running variance is the biased batch variance.

Every module's `__call__(x, *, train, rngs=None)`: `train` selects batch statistics (and updates
the running ones) vs running statistics, and turns dropout on (keys from `rngs`). Module state
is `nnx.Param` and `nnx.BatchStat` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

SIZES = {28: (7, 2), 32: (4, 3)}  # image size -> (first feature map size s0, stages L)
BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1
BN_EPSILON = 1e-5


def _normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=std)


def _scale_init(std: float) -> nnx.Initializer:
    """N(1, std): DCGAN's BatchNorm weight init."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return 1.0 + std * jax.random.normal(key, shape, dtype)

    return init


def _batch_norm(features: int, init_std: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        scale_init=_scale_init(init_std),
        rngs=rngs,
    )


def _linear(cin: int, cout: int, init_std: float, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
    return nnx.Linear(cin, cout, use_bias=bias, kernel_init=_normal(init_std), rngs=rngs)


def stages(image_size: int) -> tuple[int, int]:
    """(s0, L) of a DCGAN for `image_size`; ValueError for sizes other than 28 and 32."""
    if image_size not in SIZES:
        raise ValueError(f"DCGAN supports image sizes {tuple(SIZES)}, not {image_size}")
    return SIZES[image_size]


class MLPGenerator(nnx.Module):
    """z [B, latent] -> images [B, H, W, C] in [-1, 1]: Dense + LeakyReLU(0.2) per hidden width."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        widths: Sequence[int],
        *,
        init_std: float,
        rngs: nnx.Rngs,
    ):
        self.image_shape = tuple(image_shape)
        dims = (latent_dim, *widths)
        self.hidden = nnx.List(
            [_linear(a, b, init_std, rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        out = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.out = _linear(dims[-1], out, init_std, rngs)

    def __call__(self, z: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = z
        for layer in self.hidden:
            h = nnx.leaky_relu(layer(h), 0.2)
        return jnp.tanh(self.out(h)).reshape(z.shape[0], *self.image_shape)


class MLPDiscriminator(nnx.Module):
    """images [B, H, W, C] -> logits [B]: Dense + LeakyReLU(0.2) (+ dropout) per hidden width."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        widths: Sequence[int],
        *,
        dropout: float,
        init_std: float,
        rngs: nnx.Rngs,
    ):
        dims = (image_shape[0] * image_shape[1] * image_shape[2], *widths)
        self.hidden = nnx.List(
            [_linear(a, b, init_std, rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.dropout = nnx.Dropout(dropout, rngs=None)
        self.out = _linear(dims[-1], 1, init_std, rngs)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            h = nnx.leaky_relu(layer(h), 0.2)
            if self.dropout.rate > 0:
                h = self.dropout(h, deterministic=not train, rngs=rngs)
        return self.out(h)[:, 0]


class DCGANGenerator(nnx.Module):
    """z [B, latent] -> images [B, S, S, C] in [-1, 1] (S = 28 or 32)."""

    def __init__(
        self, latent_dim: int, image_size: int, channels: int, width: int, *, init_std, rngs
    ):
        s0, num_stages = stages(image_size)
        self.s0 = s0
        self.c0 = width * 2 ** (num_stages - 1)
        self.project = _linear(latent_dim, s0 * s0 * self.c0, init_std, rngs, bias=False)
        self.project_norm = _batch_norm(self.c0, init_std, rngs)
        ups, norms, c = [], [], self.c0
        for _ in range(num_stages - 1):
            ups.append(self._up(c, c // 2, init_std, rngs, bias=False))
            norms.append(_batch_norm(c // 2, init_std, rngs))
            c //= 2
        self.ups, self.norms = nnx.List(ups), nnx.List(norms)
        self.out = self._up(c, channels, init_std, rngs, bias=True)

    @staticmethod
    def _up(cin: int, cout: int, init_std: float, rngs: nnx.Rngs, *, bias: bool):
        # padding k - 1 - p = 2 on the dilated input: PyTorch's ConvTranspose2d(4, 2, padding=1)
        return nnx.ConvTranspose(
            cin,
            cout,
            (4, 4),
            strides=(2, 2),
            padding=((2, 2), (2, 2)),
            use_bias=bias,
            kernel_init=_normal(init_std),
            rngs=rngs,
        )

    def __call__(self, z: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.project(z).reshape(z.shape[0], self.s0, self.s0, self.c0)
        h = nnx.relu(self.project_norm(h, use_running_average=not train))
        for up, norm in zip(self.ups, self.norms, strict=True):
            h = nnx.relu(norm(up(h), use_running_average=not train))
        return jnp.tanh(self.out(h))


class DCGANDiscriminator(nnx.Module):
    """images [B, S, S, C] -> logits [B] (S = 28 or 32)."""

    def __init__(self, image_size: int, channels: int, width: int, *, init_std, rngs):
        s0, num_stages = stages(image_size)
        convs, norms, cin, cout = [], [], channels, width
        for i in range(num_stages):
            convs.append(
                nnx.Conv(
                    cin,
                    cout,
                    (4, 4),
                    strides=(2, 2),
                    padding=((1, 1), (1, 1)),  # PyTorch's Conv2d(4, 2, padding=1)
                    use_bias=i == 0,  # the first conv has no BatchNorm after it
                    kernel_init=_normal(init_std),
                    rngs=rngs,
                )
            )
            if i > 0:
                norms.append(_batch_norm(cout, init_std, rngs))
            cin, cout = cout, cout * 2
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.out = _linear(s0 * s0 * cin, 1, init_std, rngs)

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = nnx.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:], self.norms, strict=True):
            h = nnx.leaky_relu(norm(conv(h), use_running_average=not train), 0.2)
        return self.out(h.reshape(h.shape[0], -1))[:, 0]
