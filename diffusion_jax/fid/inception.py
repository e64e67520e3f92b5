"""The FID Inception-v3 (TF graph "inception-2015-12-05") as a pure JAX function, NHWC.

This is the network NVIDIA and pytorch-fid ported from TensorFlow, *not* torchvision's
Inception: its average pools ignore the zero padding (`count_include_pad=False`), and the pool
branch of the last E block (`mixed_10`) is a 3x3 MAX pool. Every block below was checked
against the TorchScript graph of `inception-2015-12-05_fid_torchscript.pt`.

Parameters are a flat dict `{conv_name: {"w": HWIO, "b": [cout]}}` with batch norm (no gamma,
eps 1e-3) folded into the convolution in float64 at load time, so a layer is conv + bias + ReLU.
Conv names are the TorchScript module paths under `net.layers` (e.g. `mixed_9.tower_conv`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-3
INPUT_SIZE = 299
FEATURE_DIM = 2048
_HIGHEST = jax.lax.Precision.HIGHEST

Params = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Shape and geometry of one conv+BN+ReLU layer (TorchScript `Conv2dLayer`)."""

    kh: int
    kw: int
    cin: int
    cout: int
    stride: int = 1
    valid: bool = False  # True: no padding; else "same" padding (kh // 2, kw // 2)

    @property
    def padding(self) -> tuple[int, int]:
        return (0, 0) if self.valid else (self.kh // 2, self.kw // 2)


def _block_a(p: str, cin: int, pool: int) -> dict[str, ConvSpec]:
    return {
        f"{p}.conv": ConvSpec(1, 1, cin, 64),
        f"{p}.tower.conv": ConvSpec(1, 1, cin, 48),
        f"{p}.tower.conv_1": ConvSpec(5, 5, 48, 64),
        f"{p}.tower_1.conv": ConvSpec(1, 1, cin, 64),
        f"{p}.tower_1.conv_1": ConvSpec(3, 3, 64, 96),
        f"{p}.tower_1.conv_2": ConvSpec(3, 3, 96, 96),
        f"{p}.tower_2.conv": ConvSpec(1, 1, cin, pool),
    }


def _block_c(p: str, c7: int) -> dict[str, ConvSpec]:
    return {
        f"{p}.conv": ConvSpec(1, 1, 768, 192),
        f"{p}.tower.conv": ConvSpec(1, 1, 768, c7),
        f"{p}.tower.conv_1": ConvSpec(1, 7, c7, c7),
        f"{p}.tower.conv_2": ConvSpec(7, 1, c7, 192),
        f"{p}.tower_1.conv": ConvSpec(1, 1, 768, c7),
        f"{p}.tower_1.conv_1": ConvSpec(7, 1, c7, c7),
        f"{p}.tower_1.conv_2": ConvSpec(1, 7, c7, c7),
        f"{p}.tower_1.conv_3": ConvSpec(7, 1, c7, c7),
        f"{p}.tower_1.conv_4": ConvSpec(1, 7, c7, 192),
        f"{p}.tower_2.conv": ConvSpec(1, 1, 768, 192),
    }


def _block_e(p: str, cin: int) -> dict[str, ConvSpec]:
    return {
        f"{p}.conv": ConvSpec(1, 1, cin, 320),
        f"{p}.tower_conv": ConvSpec(1, 1, cin, 384),
        f"{p}.tower_mixed_conv": ConvSpec(1, 3, 384, 384),
        f"{p}.tower_mixed_conv_1": ConvSpec(3, 1, 384, 384),
        f"{p}.tower_1_conv": ConvSpec(1, 1, cin, 448),
        f"{p}.tower_1_conv_1": ConvSpec(3, 3, 448, 384),
        f"{p}.tower_1_mixed_conv": ConvSpec(1, 3, 384, 384),
        f"{p}.tower_1_mixed_conv_1": ConvSpec(3, 1, 384, 384),
        f"{p}.tower_2_conv": ConvSpec(1, 1, cin, 192),
    }


def _all_specs() -> dict[str, ConvSpec]:
    specs = {
        "conv": ConvSpec(3, 3, 3, 32, stride=2, valid=True),
        "conv_1": ConvSpec(3, 3, 32, 32, valid=True),
        "conv_2": ConvSpec(3, 3, 32, 64),
        "conv_3": ConvSpec(1, 1, 64, 80),
        "conv_4": ConvSpec(3, 3, 80, 192, valid=True),
    }
    specs |= _block_a("mixed", 192, 32)
    specs |= _block_a("mixed_1", 256, 64)
    specs |= _block_a("mixed_2", 288, 64)
    specs |= {  # InceptionB
        "mixed_3.conv": ConvSpec(3, 3, 288, 384, stride=2, valid=True),
        "mixed_3.tower.conv": ConvSpec(1, 1, 288, 64),
        "mixed_3.tower.conv_1": ConvSpec(3, 3, 64, 96),
        "mixed_3.tower.conv_2": ConvSpec(3, 3, 96, 96, stride=2, valid=True),
    }
    for i, c7 in zip((4, 5, 6, 7), (128, 160, 160, 192), strict=True):
        specs |= _block_c(f"mixed_{i}", c7)
    specs |= {  # InceptionD
        "mixed_8.tower.conv": ConvSpec(1, 1, 768, 192),
        "mixed_8.tower.conv_1": ConvSpec(3, 3, 192, 320, stride=2, valid=True),
        "mixed_8.tower_1.conv": ConvSpec(1, 1, 768, 192),
        "mixed_8.tower_1.conv_1": ConvSpec(1, 7, 192, 192),
        "mixed_8.tower_1.conv_2": ConvSpec(7, 1, 192, 192),
        "mixed_8.tower_1.conv_3": ConvSpec(3, 3, 192, 192, stride=2, valid=True),
    }
    specs |= _block_e("mixed_9", 1280)
    specs |= _block_e("mixed_10", 2048)
    return specs


CONV_SPECS: dict[str, ConvSpec] = _all_specs()  # 94 layers, in graph order


def fold_batchnorm(raw: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Folds `BN(conv(x))` (no gamma unless given, eps 1e-3) into one conv: float64, then f32.

    `raw[name]` holds `weight` (OIHW, as stored by torch), `beta`, `mean`, `var` and optionally
    `gamma`. Returns `{name: {"w": HWIO float32, "b": float32}}`.
    """
    out = {}
    for name, spec in CONV_SPECS.items():
        t = raw[name]
        w = np.asarray(t["weight"], np.float64)
        if w.shape != (spec.cout, spec.cin, spec.kh, spec.kw):
            raise ValueError(f"{name}: weight shape {w.shape} does not match the FID Inception")
        scale = 1.0 / np.sqrt(np.asarray(t["var"], np.float64) + BN_EPS)
        if "gamma" in t:
            scale = scale * np.asarray(t["gamma"], np.float64)
        bias = np.asarray(t["beta"], np.float64) - np.asarray(t["mean"], np.float64) * scale
        w = w * scale[:, None, None, None]
        out[name] = {
            "w": np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32),
            "b": bias.astype(np.float32),
        }
    return out


def _conv(params: Params, name: str, x: jax.Array) -> jax.Array:
    spec = CONV_SPECS[name]
    ph, pw = spec.padding
    y = jax.lax.conv_general_dilated(
        x,
        params[name]["w"],
        window_strides=(spec.stride, spec.stride),
        padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    return jax.nn.relu(y + params[name]["b"])


def _max_pool(x: jax.Array, stride: int, pad: int) -> jax.Array:
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pads
    )


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average that divides by the number of real (unpadded) pixels, as TF does."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    return total / count


def _cat(*xs: jax.Array) -> jax.Array:
    return jnp.concatenate(xs, axis=-1)


def _seq(params: Params, prefix: str, n: int, x: jax.Array) -> jax.Array:
    """Runs `prefix.conv, prefix.conv_1, ..., prefix.conv_{n-1}` in order."""
    for i in range(n):
        x = _conv(params, f"{prefix}.conv" + (f"_{i}" if i else ""), x)
    return x


def _inception_a(p: Params, n: str, x: jax.Array) -> jax.Array:
    return _cat(
        _conv(p, f"{n}.conv", x),
        _seq(p, f"{n}.tower", 2, x),
        _seq(p, f"{n}.tower_1", 3, x),
        _conv(p, f"{n}.tower_2.conv", _avg_pool_exclude_pad(x)),
    )


def _inception_b(p: Params, n: str, x: jax.Array) -> jax.Array:
    return _cat(_conv(p, f"{n}.conv", x), _seq(p, f"{n}.tower", 3, x), _max_pool(x, 2, 0))


def _inception_c(p: Params, n: str, x: jax.Array) -> jax.Array:
    return _cat(
        _conv(p, f"{n}.conv", x),
        _seq(p, f"{n}.tower", 3, x),
        _seq(p, f"{n}.tower_1", 5, x),
        _conv(p, f"{n}.tower_2.conv", _avg_pool_exclude_pad(x)),
    )


def _inception_d(p: Params, n: str, x: jax.Array) -> jax.Array:
    return _cat(_seq(p, f"{n}.tower", 2, x), _seq(p, f"{n}.tower_1", 4, x), _max_pool(x, 2, 0))


def _inception_e(p: Params, n: str, x: jax.Array, max_pool_branch: bool) -> jax.Array:
    a = _conv(p, f"{n}.tower_conv", x)
    b = _conv(p, f"{n}.tower_1_conv_1", _conv(p, f"{n}.tower_1_conv", x))
    pooled = _max_pool(x, 1, 1) if max_pool_branch else _avg_pool_exclude_pad(x)
    return _cat(
        _conv(p, f"{n}.conv", x),
        _conv(p, f"{n}.tower_mixed_conv", a),
        _conv(p, f"{n}.tower_mixed_conv_1", a),
        _conv(p, f"{n}.tower_1_mixed_conv", b),
        _conv(p, f"{n}.tower_1_mixed_conv_1", b),
        _conv(p, f"{n}.tower_2_conv", pooled),
    )


def apply(params: Params, x: jax.Array) -> jax.Array:
    """Pool3 features `[N, 2048]` of `x`: `[N, 299, 299, 3]` float32, already normalised."""
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"Inception input must be [N, 299, 299, 3]; got {x.shape}")
    x = _conv(params, "conv", x)
    x = _conv(params, "conv_1", x)
    x = _conv(params, "conv_2", x)
    x = _max_pool(x, 2, 0)
    x = _conv(params, "conv_3", x)
    x = _conv(params, "conv_4", x)
    x = _max_pool(x, 2, 0)
    for name in ("mixed", "mixed_1", "mixed_2"):
        x = _inception_a(params, name, x)
    x = _inception_b(params, "mixed_3", x)
    for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = _inception_c(params, name, x)
    x = _inception_d(params, "mixed_8", x)
    x = _inception_e(params, "mixed_9", x, max_pool_branch=False)
    x = _inception_e(params, "mixed_10", x, max_pool_branch=True)
    # The graph's final 8x8 average pool over the 8x8 map: a mean over all positions.
    return jnp.mean(x, axis=(1, 2)).reshape(x.shape[0], FEATURE_DIM)
