"""The chain runner every sampler shares: per-image keys, the compiled loop, snapshots.

A sampler is a ``step`` function and the timesteps its loop visits; `_run_chain` turns them into
one ``fori_loop`` from x ~ N(0, I). Randomness is per image: ``rng`` is one key per image
(`image_keys`: ``fold_in(seed_key, global index)``), and each image's initial and per-step noise
derive from its key alone, so an image is the same whatever the batch size or the number of
devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class SampleOutput:
    """Final samples plus optional snapshots of the chain.

    ``trajectory[k]`` is the state x_t fed to the denoiser at timestep ``timesteps[k]`` and
    ``x0_predictions[k]`` the x_0 it predicted there (clipped if ``clip_denoised``), in the order
    of ``record_steps``.
    """

    samples: jax.Array
    trajectory: jax.Array | None = None
    x0_predictions: jax.Array | None = None
    timesteps: jax.Array | None = None  # the timesteps actually recorded, int32 [S]


def _record_plan(
    loop_ts: np.ndarray, record_steps: Sequence[int], num_timesteps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map requested timesteps to loop iterations (nearest visited timestep).

    Returns ``slot_of_iter`` (buffer slot written at each iteration, -1 for none), ``order``
    (buffer slot of each requested step, so duplicates cost no extra memory) and the recorded
    timesteps.
    """
    slot_of_iter = np.full(len(loop_ts), -1, np.int32)
    order, recorded, n_slots = [], [], 0
    for r in record_steps:
        if not 0 <= int(r) < num_timesteps:
            raise ValueError(f"record_steps entry {r} is outside [0, {num_timesteps})")
        i = int(np.argmin(np.abs(loop_ts - int(r))))  # ties go to the earlier (noisier) step
        if slot_of_iter[i] < 0:
            slot_of_iter[i], n_slots = n_slots, n_slots + 1
        order.append(slot_of_iter[i])
        recorded.append(loop_ts[i])
    return slot_of_iter, np.asarray(order, np.int32), np.asarray(recorded, np.int32)


def image_keys(rng: jax.Array, num_images: int, start=0) -> jax.Array:
    """Keys of images ``start .. start + num_images - 1``: ``fold_in(rng, global index)``.

    Everything random about image i (its initial noise and every step's noise) comes from its
    key, so an image does not depend on the batch it is drawn in or the devices it runs on.
    """
    index = jnp.asarray(start, jnp.uint32) + jnp.arange(num_images, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)


def _is_key_batch(rng: jax.Array, batch: int) -> bool:
    rng = jnp.asarray(rng) if not hasattr(rng, "dtype") else rng
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim == 1 and rng.shape[0] == batch
    return rng.ndim == 2 and rng.shape[0] == batch


def image_normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One N(0, I) draw of `shape[1:]` per key: row i comes from keys[i] alone."""
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(keys)


NoiseFn = Callable[[], jax.Array]  # this iteration's N(0, I) noise, drawn per image
# step(i, x, memory, noise_fn) -> (x_next, memory_next, x0_pred)
Step = Callable[[jax.Array, jax.Array, Any, NoiseFn], tuple[jax.Array, Any, jax.Array]]


def chain_dtype(schedule) -> jnp.dtype:
    """The float dtype a chain runs in: the schedule's (float32 unless built otherwise)."""
    return jnp.dtype(schedule.sqrt_alphas_cumprod.dtype)


def _run_chain(
    step: Step,
    shape: tuple[int, ...],
    rng: jax.Array,
    loop_ts: np.ndarray,
    record_steps: Sequence[int],
    num_timesteps: int,
    *,
    memory: Any = (),
    dtype=jnp.float32,
) -> SampleOutput:
    """``x, memory <- step(i, x, memory, noise_fn)`` from x ~ N(0, I) in one fori_loop.

    ``loop_ts[i]`` is the timestep iteration i feeds to the denoiser. ``memory`` is any pytree a
    step carries to the next (multistep solvers keep their previous x_0 predictions in it).
    ``rng`` is one key per image ([B] keys, e.g. from `image_keys`) or a single key, which
    stands for ``image_keys(rng, B)``. Image b's initial noise comes from
    ``fold_in(key_b, 0)`` and its noise at iteration i from ``fold_in(fold_in(key_b, 1), i)``;
    ``noise_fn()`` draws the latter (a step that needs no noise does not call it). The chain
    runs in ``dtype`` (noise is drawn in float32 and cast, so it is the same in any dtype).
    Snapshots go into a preallocated [S + 1, ...] buffer: every iteration writes in place (one
    dynamic_update_slice, no branch), iterations that are not recorded into the spare last
    slot, dropped at the end.
    """
    plan = _record_plan(loop_ts, record_steps, num_timesteps) if len(record_steps) else None
    keys = rng if _is_key_batch(rng, shape[0]) else image_keys(rng, shape[0])
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    x_init = image_normal(fold(keys, 0), shape).astype(dtype)
    loop_keys = fold(keys, 1)

    def noise_at(i) -> NoiseFn:
        return lambda: image_normal(fold(loop_keys, i), shape).astype(dtype)

    if plan is None:

        def body(i, carry):
            x, mem = carry
            x_next, mem, _ = step(i, x, mem, noise_at(i))
            return x_next, mem

        x, _ = jax.lax.fori_loop(0, len(loop_ts), body, (x_init, memory))
        return SampleOutput(samples=jnp.clip(x, -1.0, 1.0))

    slot_of_iter, order, recorded = plan
    spare = int(order.max()) + 1
    slots = jnp.asarray(np.where(slot_of_iter < 0, spare, slot_of_iter))
    buf = jnp.zeros((spare + 1, *shape), dtype)

    def body(i, carry):
        x, mem, traj, x0s = carry
        x_next, mem, x0 = step(i, x, mem, noise_at(i))
        return x_next, mem, traj.at[slots[i]].set(x), x0s.at[slots[i]].set(x0)

    x, _, traj, x0s = jax.lax.fori_loop(0, len(loop_ts), body, (x_init, memory, buf, buf))
    return SampleOutput(
        samples=jnp.clip(x, -1.0, 1.0),
        trajectory=traj[order],
        x0_predictions=x0s[order],
        timesteps=jnp.asarray(recorded),
    )
