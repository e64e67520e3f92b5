"""The DDPM U-Net of Ho et al. (2020), in Flax NNX.

Follows the original TF model (``diffusion_tf/models/unet.py``): sinusoidal timestep embedding and
a two-layer MLP, wide residual blocks with the embedding added after the first conv, single-head
self-attention at chosen resolutions and in the middle, strided-conv downsampling, nearest +
conv upsampling, and skip connections concatenated on the way up. Initialisers are the paper's
variance-scaling (fan_avg, uniform), with the last layer of every residual branch and the output
conv initialised (almost) to zero so every block starts as the identity.

Dropout keys are passed into ``__call__`` rather than stored, so the module state is parameters
only and the train step can derive keys functionally (``rngs=nnx.Rngs(dropout=key)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _init(scale: float = 1.0) -> nnx.Initializer:
    """The paper's ``default_init``: scale 0 means 1e-10 (zero-ish but not degenerate)."""
    return nnx.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sinusoidal embedding of integer timesteps, float32 [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _group_norm(channels: int, num_groups: int, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    if channels % num_groups:
        raise ValueError(
            f"num_groups={num_groups} does not divide {channels} channels; choose num_groups "
            "dividing every channel count (ch * ch_mult and the concatenated skip widths)"
        )
    return nnx.GroupNorm(channels, num_groups=num_groups, epsilon=1e-6, dtype=dtype, rngs=rngs)


def _conv(cin: int, cout: int, rngs: nnx.Rngs, *, stride: int = 1, scale=1.0, dtype) -> nnx.Conv:
    """3x3 conv, "SAME" padding (TF semantics, so stride 2 maps 14 -> 7 like the original)."""
    init = _init(scale)
    return nnx.Conv(cin, cout, (3, 3), strides=stride, kernel_init=init, dtype=dtype, rngs=rngs)


def _dense(cin: int, cout: int, rngs: nnx.Rngs, *, scale: float = 1.0, dtype) -> nnx.Linear:
    return nnx.Linear(cin, cout, kernel_init=_init(scale), dtype=dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
    """GroupNorm-SiLU-conv, + Dense(SiLU(temb)), GroupNorm-SiLU-Dropout-conv(zero), + shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        temb_dim: int,
        *,
        dropout: float,
        num_groups: int,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.norm1 = _group_norm(cin, num_groups, dtype, rngs)
        self.conv1 = _conv(cin, cout, rngs, dtype=dtype)
        self.temb_proj = _dense(temb_dim, cout, rngs, dtype=dtype)
        self.norm2 = _group_norm(cout, num_groups, dtype, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=None)
        self.conv2 = _conv(cout, cout, rngs, scale=0.0, dtype=dtype)
        # 1x1 "network in network" shortcut when the width changes, as in the paper.
        self.nin_shortcut = _dense(cin, cout, rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x: jax.Array, temb: jax.Array, *, train: bool, rngs) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.temb_proj(nnx.silu(temb))[:, None, None, :]
        h = self.dropout(nnx.silu(self.norm2(h)), deterministic=not train, rngs=rngs)
        h = self.conv2(h)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


ATTENTION = ("xla", "cudnn")


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(C)) over keys, float32 [B, Lq, Lk] for any input dtype.

    The logits are accumulated and kept in float32 (`preferred_element_type`): rounding them to
    bf16 first moves the weights by 1% at a logit spread of 1 and 17% at 9.
    """
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits * (q.shape[-1] ** -0.5), axis=-1)


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions, residual, output projection zero-init.

    `attention="xla"`: logits, softmax and the weighted sum of values in float32 whatever the
    compute dtype (exact weights; the two attention matmuls are ~3% of the CIFAR-10 U-Net's
    FLOPs). `"cudnn"`: `jax.nn.dot_product_attention`'s cuDNN flash kernel (GPUs, bf16 only),
    which keeps float32 statistics but feeds bf16 weights to the second matmul.
    """

    def __init__(
        self, channels: int, *, num_groups: int, dtype, rngs: nnx.Rngs, attention: str = "xla"
    ):
        self.norm = _group_norm(channels, num_groups, dtype, rngs)
        self.q = _dense(channels, channels, rngs, dtype=dtype)
        self.k = _dense(channels, channels, rngs, dtype=dtype)
        self.v = _dense(channels, channels, rngs, dtype=dtype)
        self.proj_out = _dense(channels, channels, rngs, scale=0.0, dtype=dtype)
        self.attention = attention

    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        h = self.norm(x).reshape(b, hh * ww, c)
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.attention == "cudnn":
            out = jax.nn.dot_product_attention(
                q[:, :, None], k[:, :, None], v[:, :, None], implementation="cudnn"
            )[:, :, 0]
        else:
            w = attention_weights(q, k)
            out = jnp.einsum("bqk,bkc->bqc", w, v.astype(jnp.float32)).astype(v.dtype)
        h = self.proj_out(out)
        return x + h.reshape(b, hh, ww, c)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class UNet(nnx.Module):
    """Epsilon-prediction U-Net: ``model(x [B,H,W,C] in [-1,1], t [B] int32) -> eps`` (float32).

    ``num_classes > 0`` adds a learned label embedding (``num_classes + 1`` rows; the last row is
    the "null" label used for classifier-free guidance) to the timestep embedding.
    ``dtype="bfloat16"`` computes in bf16 while keeping float32 parameters; attention logits and
    weights stay float32 (``attention``: see `AttnBlock`).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_groups: int = 32,
        time_emb_dim: int | None = None,
        num_classes: int = 0,
        dtype: str = "float32",
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        if not ch_mult or min(in_channels, ch, num_res_blocks, num_groups, *ch_mult) < 1:
            raise ValueError(
                f"in_channels={in_channels}, ch={ch}, num_res_blocks={num_res_blocks}, "
                f"num_groups={num_groups} and every ch_mult={ch_mult} entry must be >= 1"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r} is not supported; use one of {ATTENTION}")
        if attention == "cudnn" and dtype != "bfloat16":
            raise ValueError("attention='cudnn' (flash attention) needs dtype='bfloat16'")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0 (0 = unconditional)")
        _check_resolutions(image_size, ch_mult, attn_resolutions)
        cdtype = _DTYPES[dtype]
        temb_dim = 4 * ch if time_emb_dim is None else int(time_emb_dim)
        self.image_size, self.in_channels, self.ch = image_size, in_channels, ch
        self.num_classes, self.dropout_rate, self.dtype = num_classes, dropout, dtype
        block = dict(dropout=dropout, num_groups=num_groups, dtype=cdtype, rngs=rngs)
        attn = dict(num_groups=num_groups, dtype=cdtype, rngs=rngs, attention=attention)

        self.temb_dense0 = _dense(ch, temb_dim, rngs, dtype=cdtype)
        self.temb_dense1 = _dense(temb_dim, temb_dim, rngs, dtype=cdtype)
        self.label_emb = (
            nnx.Embed(num_classes + 1, temb_dim, dtype=cdtype, rngs=rngs) if num_classes else None
        )
        self.conv_in = _conv(in_channels, ch, rngs, dtype=cdtype)

        # Down path; `skips` tracks the width of every activation pushed onto the skip stack.
        skips, cur, res = [ch], ch, image_size
        down: list[nnx.Module] = []
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                down.append(ResnetBlock(cur, ch * mult, temb_dim, **block))
                cur = ch * mult
                if res in attn_resolutions:
                    down.append(AttnBlock(cur, **attn))
                skips.append(cur)
            if level != len(ch_mult) - 1:
                down.append(_conv(cur, cur, rngs, stride=2, dtype=cdtype))
                skips.append(cur)
                res //= 2
        self.down = nnx.List(down)

        self.mid = nnx.List(
            [
                ResnetBlock(cur, cur, temb_dim, **block),
                AttnBlock(cur, **attn),
                ResnetBlock(cur, cur, temb_dim, **block),
            ]
        )

        up: list[nnx.Module] = []
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                up.append(ResnetBlock(cur + skips.pop(), ch * mult, temb_dim, **block))
                cur = ch * mult
                if res in attn_resolutions:
                    up.append(AttnBlock(cur, **attn))
            if level != 0:
                up.append(Upsample(cur, dtype=cdtype, rngs=rngs))
                res *= 2
        assert not skips
        self.up = nnx.List(up)

        self.norm_out = _group_norm(cur, num_groups, cdtype, rngs)
        self.conv_out = _conv(cur, in_channels, rngs, scale=0.0, dtype=cdtype)

    @property
    def null_label(self) -> int:
        """Label index meaning "no class" (classifier-free guidance's unconditional branch)."""
        return self.num_classes

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        if train and self.dropout_rate > 0 and rngs is None:
            raise ValueError("train=True with dropout > 0 needs rngs=nnx.Rngs(dropout=key)")
        if y is not None and not self.num_classes:
            raise ValueError("labels y were passed to an unconditional model (num_classes=0)")
        cdtype = _DTYPES[self.dtype]
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])

        temb = self.temb_dense0(timestep_embedding(t, self.ch))
        temb = self.temb_dense1(nnx.silu(temb))
        if self.label_emb is not None:
            if y is None:
                y = jnp.full(x.shape[:1], self.null_label, jnp.int32)
            temb = temb + self.label_emb(y)

        kw = dict(train=train, rngs=rngs)
        hs = [self.conv_in(x.astype(cdtype))]
        for layer in self.down:
            if isinstance(layer, ResnetBlock):
                hs.append(layer(hs[-1], temb, **kw))
            elif isinstance(layer, AttnBlock):
                hs[-1] = layer(hs[-1])
            else:  # strided-conv downsample
                hs.append(layer(hs[-1]))

        h = self.mid[0](hs[-1], temb, **kw)
        h = self.mid[1](h)
        h = self.mid[2](h, temb, **kw)

        for layer in self.up:
            if isinstance(layer, ResnetBlock):
                h = layer(jnp.concatenate([h, hs.pop()], axis=-1), temb, **kw)
            else:  # attention or upsample
                h = layer(h)
        assert not hs

        h = self.conv_out(nnx.silu(self.norm_out(h)))
        return h.astype(jnp.float32)


def _check_resolutions(image_size: int, ch_mult: tuple[int, ...], attn: tuple[int, ...]) -> None:
    factor = 2 ** (len(ch_mult) - 1)
    if image_size < 1 or image_size % factor:
        raise ValueError(
            f"image_size={image_size} must be divisible by 2**(len(ch_mult)-1)={factor} "
            f"(ch_mult={ch_mult} downsamples {len(ch_mult) - 1} times)"
        )
    resolutions = [image_size // 2**i for i in range(len(ch_mult))]
    missing = sorted(set(attn) - set(resolutions))
    if missing:
        raise ValueError(
            f"attn_resolutions={attn}: {missing} never occur; with image_size={image_size} and "
            f"ch_mult={ch_mult} the resolutions are {resolutions}"
        )


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (works on ``nnx.eval_shape`` models too)."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
