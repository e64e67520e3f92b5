"""The small MNIST U-Net of the CS180/280A diffusion course ("Project 5, part B"), in Flax NNX.

Many users first meet diffusion through this course and reproduce its model; this module is that
architecture, usable both as DDPM's network (`config.model.arch = "course"`, see
`state.build_model`) and as the single-step denoiser of `methods/denoiser.py`.

Blocks (D = `hidden`; every conv is followed by a norm and exact GELU, like `torch.nn.GELU()`):

    Conv        conv 3x3, stride 1, padding 1            (H, W)   -> (H, W)
    DownConv    conv 3x3, stride 2, padding 1            (H, W)   -> (H/2, W/2)
    UpConv      transposed conv 4x4, stride 2, padding 1 (H, W)   -> (2H, 2W)
    Flatten     average pool 7x7, GELU (no norm)         (7, 7)   -> (1, 1)
    Unflatten   transposed conv 7x7, stride 7            (1, 1)   -> (7, 7)
    ConvBlock   Conv, Conv;  DownBlock  DownConv, ConvBlock;  UpBlock  UpConv, ConvBlock
    FCBlock     Linear, GELU, Linear                      (the conditioning signals)

The U-Net, for 28x28 inputs only (7x7 is hard-wired into Flatten/Unflatten, as in the course):

    x0 = ConvBlock(C -> D)(x)                      28x28xD
    x1 = DownBlock(D -> D)(x0)                     14x14xD
    x2 = DownBlock(D -> 2D)(x1)                    7x7x2D
    h  = Unflatten(2D)(Flatten(x2))                7x7x2D
    h  = c1 * h + t1                               (conditioning, when on)
    h  = UpBlock(4D -> D)(concat(x2, h))           14x14xD
    h  = c2 * h + t2                               (conditioning, when on)
    h  = UpBlock(2D -> D)(concat(x1, h))           28x28xD
    h  = ConvBlock(2D -> D)(concat(x0, h))         28x28xD
    out = conv 3x3 (D -> C)(h)

Time conditioning (`num_timesteps > 0`): the integer timestep t in [0, T) is normalised to
t / (T - 1) in [0, 1] and fed through FCBlock(1 -> 2D) (t1) and FCBlock(1 -> D) (t2), both in
float32 under any compute dtype (bf16 would merge neighbouring timesteps). Class
conditioning (`num_classes > 0`): a one-hot vector c through FCBlock(K -> 2D) (c1) and
FCBlock(K -> D) (c2), multiplying the features. The null label `num_classes` (classifier-free
guidance's unconditional branch, and `y=None`) is the all-zero vector, as in the course. Without
time conditioning t1 = t2 = 0; without classes c1 = c2 = 1.

`__call__(x, t, y=None, *, train=False, rngs=None)` has the signature and semantics of
`diffusion_jax.nets.unet.UNet` (x [B, 28, 28, C], t int [B] or scalar, y int [B] in
[0, num_classes]; float32 out), so DDPM's train step, samplers and guidance use it unchanged.
The single-step denoiser (no conditioning) takes `t=None`.

Normalisation. The course uses BatchNorm (`norm="batch"`: momentum 0.1 in PyTorch's convention,
eps 1e-5; running statistics are `nnx.BatchStat`s, updated when `train=True`; flax keeps the
biased batch variance where PyTorch's running variance is unbiased). DDPM's train step and its
EMA-only checkpoint contract carry parameters alone, so the DDPM option uses GroupNorm
(`norm="group"`) instead: a documented deviation from the course. `norm="none"` drops the norm.

Initialisation is PyTorch's default (weights and biases uniform in +-1/sqrt(fan_in), with
PyTorch's fan-in of a transposed conv, out_channels * k * k), so training from scratch starts
where the course's does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "group", "none")
IMAGE_SIZE = 28  # the only size the architecture takes (28 -> 14 -> 7 -> 1)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU() is the exact (erf) form


def _bias_init(fan_in: int) -> nnx.Initializer:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# uniform(+-sqrt(3 * scale / fan)) = uniform(+-1/sqrt(fan)): PyTorch's kaiming_uniform(a=sqrt(5))
_FAN_IN = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_FAN_OUT = nnx.initializers.variance_scaling(1 / 3, "fan_out", "uniform")


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        kernel_init=_FAN_IN,
        bias_init=_bias_init(cin * k * k),
        dtype=dtype,
        rngs=rngs,
    )


def _conv_transpose(cin: int, cout: int, k: int, stride: int, pad: int, dtype, rngs: nnx.Rngs):
    """PyTorch's ConvTranspose2d(cin, cout, k, stride, pad) output size: (H - 1) * s - 2p + k.

    lax pads the stride-dilated input by k - 1 - p on each side; the kernel is not flipped
    (`transpose_kernel=False`), a reparametrisation of PyTorch's that learns the same maps.
    PyTorch's fan-in of a transposed conv is cout * k * k: flax's fan-out of a (k, k, cin, cout)
    kernel.
    """
    q = k - 1 - pad
    return nnx.ConvTranspose(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=((q, q), (q, q)),
        kernel_init=_FAN_OUT,
        bias_init=_bias_init(cout * k * k),
        dtype=dtype,
        rngs=rngs,
    )


def _linear(cin: int, cout: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        cin, cout, kernel_init=_FAN_IN, bias_init=_bias_init(cin), dtype=dtype, rngs=rngs
    )


class _Norm(nnx.Module):
    """BatchNorm, GroupNorm or nothing; BatchNorm uses batch statistics when `train`."""

    def __init__(self, channels: int, norm: str, num_groups: int, dtype, rngs: nnx.Rngs):
        self.kind = norm
        if norm == "batch":  # PyTorch's momentum 0.1 is flax's 0.9
            self.norm = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)
        elif norm == "group":
            if channels % num_groups:
                raise ValueError(
                    f"num_groups={num_groups} does not divide {channels} channels (GroupNorm "
                    "needs a divisor of hidden and 2 * hidden)"
                )
            self.norm = nnx.GroupNorm(channels, num_groups=num_groups, epsilon=1e-5, dtype=dtype,
                                      rngs=rngs)  # fmt: skip
        else:
            self.norm = None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "batch":
            return self.norm(x, use_running_average=not train)
        return x if self.norm is None else self.norm(x)


class Conv(nnx.Module):
    """conv 3x3 (stride 1, padding 1), norm, GELU: keeps the resolution."""

    def __init__(self, cin: int, cout: int, *, norm: str, num_groups: int, dtype, rngs):
        self.conv = _conv(cin, cout, 3, 1, 1, dtype, rngs)
        self.norm = _Norm(cout, norm, num_groups, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return _gelu(self.norm(self.conv(x), train))


class DownConv(nnx.Module):
    """conv 3x3, stride 2, padding 1, norm, GELU: halves the resolution (28 -> 14 -> 7)."""

    def __init__(self, cin: int, cout: int, *, norm: str, num_groups: int, dtype, rngs):
        self.conv = _conv(cin, cout, 3, 2, 1, dtype, rngs)
        self.norm = _Norm(cout, norm, num_groups, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return _gelu(self.norm(self.conv(x), train))


class UpConv(nnx.Module):
    """transposed conv 4x4, stride 2, padding 1, norm, GELU: doubles the resolution."""

    def __init__(self, cin: int, cout: int, *, norm: str, num_groups: int, dtype, rngs):
        self.conv = _conv_transpose(cin, cout, 4, 2, 1, dtype, rngs)
        self.norm = _Norm(cout, norm, num_groups, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return _gelu(self.norm(self.conv(x), train))


class Flatten(nnx.Module):
    """Average pool 7x7 -> 1x1, GELU (no parameters)."""

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return _gelu(jnp.mean(x, axis=(1, 2), keepdims=True))


class Unflatten(nnx.Module):
    """transposed conv 7x7, stride 7 (1x1 -> 7x7), norm, GELU."""

    def __init__(self, channels: int, *, norm: str, num_groups: int, dtype, rngs):
        self.conv = _conv_transpose(channels, channels, 7, 7, 0, dtype, rngs)
        self.norm = _Norm(channels, norm, num_groups, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return _gelu(self.norm(self.conv(x), train))


class ConvBlock(nnx.Module):
    """Conv(cin -> cout), Conv(cout -> cout)."""

    def __init__(self, cin: int, cout: int, **kw):
        self.conv1 = Conv(cin, cout, **kw)
        self.conv2 = Conv(cout, cout, **kw)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.conv2(self.conv1(x, train), train)


class DownBlock(nnx.Module):
    """DownConv(cin -> cout), ConvBlock(cout -> cout)."""

    def __init__(self, cin: int, cout: int, **kw):
        self.down = DownConv(cin, cout, **kw)
        self.block = ConvBlock(cout, cout, **kw)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.block(self.down(x, train), train)


class UpBlock(nnx.Module):
    """UpConv(cin -> cout), ConvBlock(cout -> cout)."""

    def __init__(self, cin: int, cout: int, **kw):
        self.up = UpConv(cin, cout, **kw)
        self.block = ConvBlock(cout, cout, **kw)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.block(self.up(x, train), train)


class FCBlock(nnx.Module):
    """Linear(cin -> cout), GELU, Linear(cout -> cout): [B, cin] -> [B, cout]."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = _linear(cin, cout, dtype, rngs)
        self.fc2 = _linear(cout, cout, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(_gelu(self.fc1(x)))


class CourseUNet(nnx.Module):
    """The course's U-Net: unconditional, time-conditioned and/or class-conditioned (see above).

    `num_timesteps` T > 0 turns on time conditioning (t / (T - 1)); `num_classes` K > 0 class
    conditioning (labels in [0, K], K = null). Parameters are float32; `dtype` is the compute
    dtype (the output is float32).
    """

    def __init__(
        self,
        *,
        image_size: int = IMAGE_SIZE,
        in_channels: int = 1,
        hidden: int = 64,
        num_timesteps: int = 0,
        num_classes: int = 0,
        norm: str = "group",
        num_groups: int = 8,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if image_size != IMAGE_SIZE:
            raise ValueError(
                f"image_size={image_size}: the course U-Net takes {IMAGE_SIZE}x{IMAGE_SIZE} "
                "images only (its Flatten/Unflatten are 7x7 after two stride-2 downsamplings)"
            )
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not one of {NORMS}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
        for name, value in (("in_channels", in_channels), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if norm == "group" and num_groups < 1:
            raise ValueError(f"num_groups={num_groups} must be >= 1")
        if num_timesteps < 0 or num_classes < 0:
            raise ValueError(
                f"num_timesteps={num_timesteps} and num_classes={num_classes} must be >= 0 "
                "(0 = no time / no class conditioning)"
            )
        self.in_channels, self.hidden = in_channels, hidden
        self.num_timesteps, self.num_classes, self.dtype = num_timesteps, num_classes, dtype
        cdtype = _DTYPES[dtype]
        d = hidden
        kw = dict(norm=norm, num_groups=num_groups, dtype=cdtype, rngs=rngs)
        self.conv_in = ConvBlock(in_channels, d, **kw)
        self.down1 = DownBlock(d, d, **kw)
        self.down2 = DownBlock(d, 2 * d, **kw)
        self.flatten = Flatten()
        self.unflatten = Unflatten(2 * d, **kw)
        self.up1 = UpBlock(4 * d, d, **kw)
        self.up2 = UpBlock(2 * d, d, **kw)
        self.conv_mid = ConvBlock(2 * d, d, **kw)
        self.conv_out = _conv(d, in_channels, 3, 1, 1, cdtype, rngs)
        fc = dict(dtype=cdtype, rngs=rngs)
        # The time layers compute in float32 whatever the compute dtype: bf16 holds only 507
        # distinct values of t / (T - 1) for T = 1000 (t = 998 and 999 were the same input).
        self.fc1_t = FCBlock(1, 2 * d, dtype=jnp.float32, rngs=rngs) if num_timesteps else None
        self.fc2_t = FCBlock(1, d, dtype=jnp.float32, rngs=rngs) if num_timesteps else None
        self.fc1_c = FCBlock(num_classes, 2 * d, **fc) if num_classes else None
        self.fc2_c = FCBlock(num_classes, d, **fc) if num_classes else None

    def time_embeddings(self, t: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        """FCBlock outputs (t1 [B, 2D], t2 [B, D]) of t / (T - 1), in float32."""
        t = jnp.broadcast_to(jnp.asarray(t), (batch,)).astype(jnp.float32)
        tn = (t / max(self.num_timesteps - 1, 1))[:, None]
        return self.fc1_t(tn), self.fc2_t(tn)

    @property
    def null_label(self) -> int:
        """Label index meaning "no class" (the all-zero one-hot vector)."""
        return self.num_classes

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | None,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,  # no dropout here: accepted for `unet.UNet`'s signature
    ) -> jax.Array:
        del rngs
        if x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, self.in_channels):
            raise ValueError(
                f"x has shape {x.shape}; the course U-Net takes [B, {IMAGE_SIZE}, {IMAGE_SIZE}, "
                f"{self.in_channels}]"
            )
        if y is not None and not self.num_classes:
            raise ValueError("labels y were passed to an unconditional model (num_classes=0)")
        if self.num_timesteps and t is None:
            raise ValueError("a time-conditioned course U-Net (num_timesteps > 0) needs t")
        cdtype = _DTYPES[self.dtype]
        batch = x.shape[0]
        c1 = c2 = t1 = t2 = None
        if self.num_timesteps:
            t1, t2 = (e.astype(cdtype)[:, None, None, :] for e in self.time_embeddings(t, batch))
        if self.num_classes:
            if y is None:
                y = jnp.full((batch,), self.null_label, jnp.int32)
            c = jax.nn.one_hot(y, self.num_classes, dtype=cdtype)  # y = K (null): all zeros
            c1, c2 = self.fc1_c(c)[:, None, None, :], self.fc2_c(c)[:, None, None, :]

        def condition(h, c, t):
            h = h if c is None else c * h
            return h if t is None else h + t

        x0 = self.conv_in(x.astype(cdtype), train)
        x1 = self.down1(x0, train)
        x2 = self.down2(x1, train)
        h = condition(self.unflatten(self.flatten(x2, train), train), c1, t1)
        h = condition(self.up1(jnp.concatenate([x2, h], axis=-1), train), c2, t2)
        h = self.up2(jnp.concatenate([x1, h], axis=-1), train)
        h = self.conv_mid(jnp.concatenate([x0, h], axis=-1), train)
        return self.conv_out(h).astype(jnp.float32)
