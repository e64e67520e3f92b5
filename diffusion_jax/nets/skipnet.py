"""Deep Image Prior's "skip" encoder-decoder (Ulyanov et al. 2018; `methods/dip.py`), in Flax NNX.

Per scale (finest first): a skip branch (conv, norm, leaky ReLU; absent where its channels are
0) beside a down path (a stride-2 conv and a conv, each with norm and leaky ReLU), the deeper
scales and a 2x upsampling; the two are centre-cropped and concatenated on the channels, then
norm, conv, norm and leaky ReLU (and an optional 1x1 conv). The output is a 1x1 conv and a
sigmoid. The norms are the original's BatchNorm in training mode on a batch of one image:
`nnx.GroupNorm` with one group per channel (eps 1e-5), no running statistics. The convs pad
(k - 1) / 2 pixels (reflect or zero) and are computed as im2col matmuls (`_Conv`); they are
built with zero parameters, which `init_params` draws (PyTorch's default init).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

LEAKY_SLOPE = 0.2  # the original's LeakyReLU
NORM_EPS = 1e-5  # PyTorch BatchNorm2d's eps


class SkipNetSettings(Protocol):
    """What the net reads of its settings (`config.dip`, see `methods.dip.settings`)."""

    input_channels: int
    channels_down: Sequence[int]
    channels_up: Sequence[int]
    channels_skip: Sequence[int]
    kernel_down: int
    kernel_up: int
    kernel_skip: int
    need1x1_up: bool
    upsample: str  # "bilinear" or "nearest"
    pad: str  # "reflect" or "zero"


class _Conv(nnx.Module):
    """k x k conv with (k - 1) / 2 pixels of reflect or zero padding on every side (PyTorch's
    symmetric padding: stride 2 maps 28 -> 14 -> 7 -> 4). Built with zero parameters;
    `init_params` draws them (PyTorch's default U(+-1/sqrt(fan_in)) for kernel and bias).

    Computed as patches @ kernel (im2col: k*k shifted slices concatenated on the channels) so
    that under `jax.vmap` over K networks it is one batched matmul; XLA:CPU runs the grouped
    convolution that vmap makes of `lax.conv` ~15x slower than K separate ones.

    Biases of convs that feed a norm are kept (the original's need_bias) though the norm
    removes them: their gradient is float rounding noise, which Adam turns into steps of size
    lr, so they wander without changing any output (as in PyTorch).
    """

    def __init__(self, cin: int, cout: int, k: int, pad: str, stride: int = 1):
        self.kernel = nnx.Param(jnp.zeros((k, k, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.k, self.stride, self.mode = k, stride, "reflect" if pad == "reflect" else "constant"

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.k, self.stride
        p = (k - 1) // 2
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=self.mode)
        h, w = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
        cols = [
            x[:, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s, :]
            for i in range(k)
            for j in range(k)
        ]
        patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
        kernel = self.kernel[...]
        kernel = kernel.reshape(-1, kernel.shape[-1])
        return patches @ kernel + self.bias[...]


def _norm(c: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """BatchNorm of a batch of one image in training mode = per-channel norm over its pixels."""
    return nnx.GroupNorm(c, num_groups=c, epsilon=NORM_EPS, rngs=rngs)


def _act(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _crop_concat(a: jax.Array, b: jax.Array) -> jax.Array:
    """Channel concat, centre-cropping both to the smaller size (the original's Concat)."""
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])

    def crop(x):
        dh, dw = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
        return x[:, dh : dh + h, dw : dw + w]

    return jnp.concatenate([crop(a), crop(b)], axis=-1)


def _up_axis(x: jax.Array, axis: int, mode: str) -> jax.Array:
    """2x along `axis`: nearest, or bilinear with half-pixel centres and clamped edges (PyTorch's
    align_corners=False = `jax.image.resize`): out[2i] = 3/4 x[i] + 1/4 x[i-1], out[2i+1] =
    3/4 x[i] + 1/4 x[i+1]."""
    if mode == "nearest":
        return jnp.repeat(x, 2, axis=axis)
    n = x.shape[axis]
    edge = [(0, 0)] * x.ndim
    edge[axis] = (1, 1)
    xp = jnp.pad(x, edge, mode="edge")
    prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
    even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1 :])


def upsample2(x: jax.Array, mode: str) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C] ("bilinear" or "nearest"), separable."""
    return _up_axis(_up_axis(x, 1, mode), 2, mode)


class _Scale(nnx.Module):
    """One scale of the skip net: skip branch || (down, deeper scales, upsample), then up."""

    def __init__(self, cfg: SkipNetSettings, i: int, cin: int, rngs: nnx.Rngs):
        down, up, skip = cfg.channels_down, cfg.channels_up, cfg.channels_skip
        last = i == len(down) - 1
        self.upsample = cfg.upsample
        has_skip = bool(skip[i])
        self.skip_conv = _Conv(cin, skip[i], cfg.kernel_skip, cfg.pad) if has_skip else None
        self.skip_norm = _norm(skip[i], rngs) if has_skip else None
        self.down1 = _Conv(cin, down[i], cfg.kernel_down, cfg.pad, stride=2)
        self.norm_d1 = _norm(down[i], rngs)
        self.down2 = _Conv(down[i], down[i], cfg.kernel_down, cfg.pad)
        self.norm_d2 = _norm(down[i], rngs)
        self.deeper = None if last else _Scale(cfg, i + 1, down[i], rngs)
        k = down[i] if last else up[i + 1]
        self.norm_cat = _norm(skip[i] + k, rngs)
        self.up = _Conv(skip[i] + k, up[i], cfg.kernel_up, cfg.pad)
        self.norm_up = _norm(up[i], rngs)
        one = bool(cfg.need1x1_up)
        self.up1x1_conv = _Conv(up[i], up[i], 1, cfg.pad) if one else None
        self.up1x1_norm = _norm(up[i], rngs) if one else None

    def __call__(self, x: jax.Array) -> jax.Array:
        d = _act(self.norm_d1(self.down1(x)))
        d = _act(self.norm_d2(self.down2(d)))
        if self.deeper is not None:
            d = self.deeper(d)
        d = upsample2(d, self.upsample)
        if self.skip_conv is not None:
            d = _crop_concat(_act(self.skip_norm(self.skip_conv(x))), d)
        y = _act(self.norm_up(self.up(self.norm_cat(d))))
        if self.up1x1_conv is not None:
            y = _act(self.up1x1_norm(self.up1x1_conv(y)))
        return y


class SkipNet(nnx.Module):
    """The original's `skip` encoder-decoder: float32 [B, H, W, input_channels] -> [B, H, W, C]
    in (0, 1) (a sigmoid)."""

    def __init__(self, cfg: SkipNetSettings, out_channels: int, rngs: nnx.Rngs):
        self.body = _Scale(cfg, 0, cfg.input_channels, rngs)
        self.out = _Conv(cfg.channels_up[0], out_channels, 1, cfg.pad)

    def __call__(self, z: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.out(self.body(z)))


def init_params(abstract: nnx.State, key: jax.Array) -> nnx.State:
    """One network's parameters: every conv's kernel and bias U(+-1/sqrt(fan_in)) (PyTorch's
    default, fan_in = k * k * cin of the conv), every norm at scale 1 and shift 0.

    All the uniforms come from one draw of `key`, cut in the parameters' (sorted path) order:
    one random op instead of one per tensor, which XLA:CPU compiles seconds faster.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in leaves]
    fans = {n[:-2]: math.prod(leaf.shape[:-1]) for n, (_, leaf) in zip(names, leaves, strict=True)
            if n[-2] == "kernel"}  # fmt: skip
    sizes = [
        math.prod(leaf.shape) if n[:-2] in fans else 0
        for n, (_, leaf) in zip(names, leaves, strict=True)
    ]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    out, offset = [], 0
    for n, (_, leaf), size in zip(names, leaves, sizes, strict=True):
        if size:  # a conv's kernel or bias
            bound = 1.0 / math.sqrt(fans[n[:-2]])
            out.append(u[offset : offset + size].reshape(leaf.shape) * bound)
            offset += size
        else:  # a norm's scale or shift
            fill = 1.0 if n[-2] == "scale" else 0.0
            out.append(jnp.full(leaf.shape, fill, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
