"""Inpainting: known-region replacement (score_sde, the course) and RePaint's resampling.

Mask convention, once for the whole package: ``keep`` masks are 1 where the input is kept (the
known pixels) and 0 where new content is generated. `as_keep_mask(mask, fill=True)` converts a
mask written the other way (1 = fill, as diffusers' inpainting pipelines take it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import samplers
from diffusion_jax.diffusion import DenoiseFn, Schedule
from diffusion_jax.edit import loops, schedules

SHAPES = ("centre", "half", "strokes")


def as_keep_mask(mask, x_shape, *, fill: bool = False) -> jax.Array:
    """Checked float32 keep mask broadcastable to ``x_shape`` ([B or 1, H, W, 1 or C], or
    [H, W]); values must be exactly 0 or 1. ``fill=True``: the mask marks the region to fill."""
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None, :, :, None]
    b, h, w, c = x_shape
    if (
        m.ndim != 4
        or m.shape[1:3] != (h, w)
        or m.shape[0] not in (1, b)
        or m.shape[3] not in (1, c)
    ):
        raise ValueError(
            f"mask shape {np.asarray(mask).shape} does not fit images {tuple(x_shape)}: use "
            f"[{h}, {w}] or [1 or {b}, {h}, {w}, 1 or {c}]"
        )
    values = np.unique(m)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"mask values must be 0 or 1, got {values[:5].tolist()}")
    m = m.astype(np.float32)
    return jnp.asarray(1.0 - m if fill else m)


def builtin_mask(shape: str, size: int, *, index: int = 0, seed: int = 0) -> np.ndarray:
    """A keep mask float32 [size, size] (1 = keep): "centre" fills the centre square of side
    size / 2, "half" the bottom half, "strokes" 4 random brush strokes (width ~size / 9) drawn
    from NumPy's generator seeded by (seed, index): each image its own."""
    m = np.ones((size, size), np.float32)
    if shape == "centre":
        a = size // 4
        m[a : size - a, a : size - a] = 0
    elif shape == "half":
        m[size // 2 :] = 0
    elif shape == "strokes":
        rng = np.random.default_rng([seed, index])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        width = max(1.0, size / 9)
        for _ in range(4):
            p0, p1 = rng.uniform(0.15 * size, 0.85 * size, (2, 2))
            d = p1 - p0
            u = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
            dist = np.hypot(yy - p0[0] - u * d[0], xx - p0[1] - u * d[1])
            m[dist <= width / 2] = 0
    else:
        raise ValueError(f"unknown mask shape {shape!r}; use one of {SHAPES}")
    return m


def inpaint(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x0: jax.Array,
    keep: jax.Array,
    keys: jax.Array,
    *,
    stride: int = 4,
    eta: float = 1.0,
    record: bool = False,
) -> samplers.SampleOutput:
    """Generate the region ``keep == 0`` around the known pixels of ``x0``.

    Starts from N(0, I) at the strided grid's top; after every step to t' the kept region is
    replaced by x0 forward-noised to t' (fresh noise per step), and by x0 itself at the end, so
    the kept pixels come back exactly.
    """
    ts = schedules.strided_timesteps(schedule.num_timesteps, stride)
    loops.check_keys(keys, x0.shape[0])
    x0 = jnp.asarray(x0, jnp.float32)
    x = loops.normal(keys, x0.shape, loops.INIT)
    return loops.denoise_loop(
        denoise_fn, schedule, x, ts, keys, eta=eta, record=record, known=x0, keep=keep
    )


def repaint(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x0: jax.Array,
    keep: jax.Array,
    keys: jax.Array,
    *,
    stride: int = 4,
    jump_length: int = 10,
    jump_count: int = 10,
    eta: float = 1.0,
) -> samplers.SampleOutput:
    """RePaint (Lugmayr et al. 2022): `inpaint` with resampling on the strided grid.

    The descent climbs back ``jump_length`` grid levels ``jump_count - 1`` times at every
    multiple of ``jump_length`` (`schedules.repaint_plan`); a climb from t to t' > t re-noises
    x_t' = sqrt(abar_t' / abar_t) x_t + sqrt(1 - abar_t' / abar_t) z, harmonising the generated
    region with the known one. Defaults: the paper's j = r = 10 on 250 levels (stride 4 of
    T = 1000). jump_length = jump_count = 1 is `inpaint` exactly (same noise).
    """
    grid = schedules.strided_timesteps(schedule.num_timesteps, stride)[::-1].copy()  # ascending
    plan = schedules.repaint_plan(len(grid), jump_length, jump_count)
    loops.check_keys(keys, x0.shape[0])
    x0 = jnp.asarray(x0, jnp.float32)
    shape = x0.shape
    level_t = np.append(grid, -1)  # level -1 -> index len(grid) -> t = -1
    t_from = jnp.asarray(level_t[plan[:, 0]])
    t_to = jnp.asarray(level_t[plan[:, 1]])
    up = jnp.asarray(plan[:, 1] > plan[:, 0])

    def down(i, x):
        t, tn = t_from[i], t_to[i]
        x_next, _ = loops.denoise_step(
            denoise_fn, schedule, x, t, tn, loops.normal(keys, shape, loops.STEP, i), eta=eta
        )
        kn = loops.noised_known(schedule, x0, tn, loops.normal(keys, shape, loops.KNOWN, i))
        return keep * kn + (1.0 - keep) * x_next

    def renoise(i, x):
        a, _ = loops.abar(schedule, t_from[i])
        a_to, _ = loops.abar(schedule, t_to[i])
        ratio = a_to / a
        z = loops.normal(keys, shape, loops.RENOISE, i)
        return jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * z

    def body(i, x):
        return jax.lax.cond(up[i], renoise, down, i, x)

    x = loops.normal(keys, shape, loops.INIT)
    x = jax.lax.fori_loop(0, len(plan), body, x)
    return samplers.SampleOutput(samples=jnp.clip(x, -1.0, 1.0))
