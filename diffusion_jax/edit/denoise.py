"""Forward-process pictures, one-step and iterative denoising, generation, SDEdit, translation.

Pure functions of (denoise function, schedule, inputs, per-image keys); jit them with the
denoise function closed over (grids, ``stride`` and ``record`` are static).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import samplers
from diffusion_jax.diffusion import DenoiseFn, Schedule, predict_x0_from_eps, q_sample
from diffusion_jax.edit import loops, schedules

CondFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_t, t, labels) -> eps


def forward_process(
    schedule: Schedule, x0: jax.Array, timesteps: Sequence[int], keys: jax.Array
) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at each t: float32 [len(timesteps), B, ...].

    Image b uses one noise draw eps_b = N(0, I) from ``fold_in(key_b, 0)`` for every t, so the
    pictures show one trajectory of the forward process.
    """
    loops.check_keys(keys, x0.shape[0])
    for t in timesteps:
        if not 0 <= int(t) < schedule.num_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {schedule.num_timesteps})")
    x0 = jnp.asarray(x0, jnp.float32)
    eps = loops.normal(keys, x0.shape, loops.INIT)
    return jnp.stack(
        [q_sample(schedule, x0, jnp.full(x0.shape[:1], int(t), jnp.int32), eps) for t in timesteps]
    )


def one_step_denoise(
    denoise_fn: DenoiseFn, schedule: Schedule, x_t: jax.Array, t, *, clip: bool = True
) -> jax.Array:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) (clipped to [-1, 1])."""
    tb = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
    x0 = predict_x0_from_eps(schedule, x_t, tb, denoise_fn(x_t, tb).astype(jnp.float32))
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def iterative_denoise(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x_t: jax.Array,
    t_start: int,
    keys: jax.Array,
    *,
    stride: int = 30,
    eta: float = 1.0,
    clip_denoised: bool = True,
    record: bool = False,
) -> samplers.SampleOutput:
    """Denoise x_t from ``t_start`` over ``schedules.timesteps_from(t_start, stride)``."""
    ts = schedules.timesteps_from(int(t_start), stride, schedule.num_timesteps)
    return loops.denoise_loop(
        denoise_fn, schedule, x_t, ts, keys, eta=eta, clip_denoised=clip_denoised, record=record
    )


def generate(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    keys: jax.Array,
    *,
    stride: int = 30,
    eta: float = 1.0,
    record: bool = False,
) -> samplers.SampleOutput:
    """Samples from N(0, I) (``fold_in(key_b, 0)``) at the strided grid's top timestep."""
    shape = tuple(int(d) for d in shape)
    loops.check_keys(keys, shape[0])
    x = loops.normal(keys, shape, loops.INIT)
    ts = schedules.strided_timesteps(schedule.num_timesteps, stride)
    return loops.denoise_loop(denoise_fn, schedule, x, ts, keys, eta=eta, record=record)


def sdedit_start(
    num_timesteps: int, stride: int, i_start: int | None = None, strength: float | None = None
) -> int:
    """The start index into the strided grid from ``i_start`` or diffusers' ``strength``."""
    n = len(schedules.strided_timesteps(num_timesteps, stride))
    if (i_start is None) == (strength is None):
        raise ValueError("give exactly one of i_start and strength")
    if strength is not None:
        return schedules.start_index_from_strength(float(strength), n)
    return schedules.check_start_index(i_start, n)


def sdedit(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x0: jax.Array,
    keys: jax.Array,
    *,
    i_start: int | None = None,
    strength: float | None = None,
    stride: int = 30,
    eta: float = 1.0,
    record: bool = False,
) -> samplers.SampleOutput:
    """SDEdit (Meng et al. 2022): noise x0 to the grid's timestep ``i_start`` and denoise.

    The start is ``i_start`` (index into the strided grid, 0 = noisiest) or ``strength``
    (diffusers' convention, ``i_start = N - int(N * strength)``; see `schedules`). At
    i_start = N (strength 0) nothing is noised and the input comes back unchanged.
    The noise is ``fold_in(key_b, 0)``; pass a guided denoise function for class guidance.
    """
    grid = schedules.strided_timesteps(schedule.num_timesteps, stride)
    start = sdedit_start(schedule.num_timesteps, stride, i_start, strength)
    loops.check_keys(keys, x0.shape[0])
    x0 = jnp.asarray(x0, jnp.float32)
    if start == len(grid):
        return samplers.SampleOutput(samples=x0)
    t0 = int(grid[start])
    eps = loops.normal(keys, x0.shape, loops.INIT)
    x_t = q_sample(schedule, x0, jnp.full(x0.shape[:1], t0, jnp.int32), eps)
    return loops.denoise_loop(denoise_fn, schedule, x_t, grid[start:], keys, eta=eta, record=record)


def check_labels(labels, num_classes: int, what: str = "class") -> jax.Array:
    """int32 labels, each in [0, num_classes); concrete values are checked here."""
    if num_classes <= 0:
        raise ValueError(f"{what} guidance needs a class-conditional model (num_classes > 0)")
    labels = jnp.asarray(labels, jnp.int32)
    try:
        values = np.asarray(labels).ravel()
    except jax.errors.TracerArrayConversionError:  # traced: checked by the caller
        return labels
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(f"{what} {int(bad[0])} is outside [0, {num_classes})")
    return labels


def translate(
    cond_fn: CondFn,
    schedule: Schedule,
    x0: jax.Array,
    target: jax.Array,
    keys: jax.Array,
    *,
    guidance: float,
    num_classes: int,
    i_start: int | None = None,
    strength: float | None = None,
    stride: int = 30,
    eta: float = 1.0,
) -> samplers.SampleOutput:
    """Class-conditional image-to-image: SDEdit guided to ``target`` (one class per image) with
    classifier-free guidance (null label = num_classes, branches interleaved)."""
    target = check_labels(target, num_classes, "target class")
    fn = samplers.classifier_free_guidance(cond_fn, target, guidance, num_classes)
    return sdedit(
        fn, schedule, x0, keys, i_start=i_start, strength=strength, stride=stride, eta=eta
    )
