"""Analytic FLOP counts, so MFU does not depend on what a profiler or XLA chooses to count.

Convention: one multiply-add = 2 FLOPs; only convolutions and matrix products (attention's
QK^T and AV included) are counted, not normalisation, activations or the optimizer, which are
a few percent of the work. A training step is 3x the forward pass (forward, and a backward that
computes gradients for both activations and weights).

`unet_cost` walks the U-Net of `config.model` exactly as `diffusion_jax.nets.unet.UNet` builds it
(and counts its parameters too, which the tests compare with the real model's, proving the walk
matches the architecture). `jaxpr_flops` counts the same ops in any traced JAX function; the
FID Inception is counted with it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (activation and weight gradients)


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Per image: forward FLOPs (conv + matmul + attention) and the number of parameters."""

    forward_flops: int
    params: int

    @property
    def train_flops(self) -> int:
        return TRAIN_FLOPS_PER_FORWARD * self.forward_flops


class _Counter:
    def __init__(self) -> None:
        self.flops = 0
        self.params = 0

    def conv(self, res: int, cin: int, cout: int, k: int = 3) -> None:
        """k x k conv producing a res x res map (with bias)."""
        self.flops += 2 * res * res * k * k * cin * cout
        self.params += k * k * cin * cout + cout

    def dense(self, tokens: int, cin: int, cout: int) -> None:
        self.flops += 2 * tokens * cin * cout
        self.params += cin * cout + cout

    def norm(self, channels: int) -> None:
        self.params += 2 * channels  # GroupNorm scale and bias; FLOPs not counted

    def resnet(self, res: int, cin: int, cout: int, temb: int) -> None:
        self.norm(cin)
        self.conv(res, cin, cout)
        self.dense(1, temb, cout)
        self.norm(cout)
        self.conv(res, cout, cout)
        if cin != cout:
            self.dense(res * res, cin, cout)  # 1x1 "nin" shortcut

    def attention(self, res: int, c: int) -> None:
        n = res * res
        self.norm(c)
        for _ in range(4):  # q, k, v, proj_out
            self.dense(n, c, c)
        self.flops += 2 * (2 * n * n * c)  # QK^T and AV


def unet_cost(config: ml_collections.ConfigDict) -> ModelCost:
    """Forward FLOPs per image and parameter count of the U-Net of `config`."""
    m, res = config.model, int(config.data.image_size)
    ch, cin = int(m.ch), int(config.data.channels)
    ch_mult = [int(x) for x in m.ch_mult]
    attn = {int(r) for r in m.attn_resolutions}
    temb = 4 * ch if m.time_emb_dim is None else int(m.time_emb_dim)
    c = _Counter()
    c.dense(1, ch, temb)
    c.dense(1, temb, temb)
    if m.num_classes:
        c.params += (int(m.num_classes) + 1) * temb
    c.conv(res, cin, ch)

    skips, cur = [ch], ch
    for level, mult in enumerate(ch_mult):
        for _ in range(int(m.num_res_blocks)):
            c.resnet(res, cur, ch * mult, temb)
            cur = ch * mult
            if res in attn:
                c.attention(res, cur)
            skips.append(cur)
        if level != len(ch_mult) - 1:
            res = -(-res // 2)  # "SAME" stride-2 conv
            c.conv(res, cur, cur)
            skips.append(cur)

    c.resnet(res, cur, cur, temb)
    c.attention(res, cur)
    c.resnet(res, cur, cur, temb)

    for level, mult in reversed(list(enumerate(ch_mult))):
        for _ in range(int(m.num_res_blocks) + 1):
            c.resnet(res, cur + skips.pop(), ch * mult, temb)
            cur = ch * mult
            if res in attn:
                c.attention(res, cur)
        if level != 0:
            res *= 2
            c.conv(res, cur, cur)  # nearest x2, then conv

    c.norm(cur)
    c.conv(res, cur, cin)
    return ModelCost(forward_flops=c.flops, params=c.params)


def sample_step_flops(config: ml_collections.ConfigDict) -> int:
    """Forward FLOPs per image per sampler step (x2 when guidance runs both branches)."""
    forward = unet_cost(config).forward_flops
    guided = config.model.num_classes and float(config.sample.guidance) not in (0.0, 1.0)
    return 2 * forward if guided else forward


# ---------------------------------------------------------------------------------------------
# Counting in a traced function


def _conv_flops(eqn: Any) -> int:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    per_output = kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
    return 2 * math.prod(out) * per_output


def _dot_flops(eqn: Any) -> int:
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
    return 2 * math.prod(lhs) * math.prod(rhs_free)


def _sub_jaxprs(value: Any) -> list[Any]:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _count(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if name == "cond":  # one branch runs
            total += max((_count(j) for j in subs), default=0)
        else:  # loops count one trip, except scan whose length is known
            total += eqn.params.get("length", 1) * sum(_count(j) for j in subs)
    return total


def jaxpr_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Conv + dot_general FLOPs of `fn(*args)`; args may be `jax.ShapeDtypeStruct`s."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr)


@functools.cache
def inception_forward_flops() -> int:
    """FLOPs per 299x299 image of the FID Inception network (the network only: the resize to
    299 is two small matrix products, < 0.01% of this)."""
    from diffusion_jax.fid import inception

    params = {
        name: {
            "w": jax.ShapeDtypeStruct((s.kh, s.kw, s.cin, s.cout), jnp.float32),
            "b": jax.ShapeDtypeStruct((s.cout,), jnp.float32),
        }
        for name, s in inception.CONV_SPECS.items()
    }
    size = inception.INPUT_SIZE
    x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    return jaxpr_flops(inception.apply, params, x)
