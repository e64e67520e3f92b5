"""Ancestral DDPM, DDIM and classifier-free guidance; every sampler is one compiled loop.

Samplers take a denoise function ``fn(x_t [B,...] float, t [B] int32) -> eps`` rather than a
model, so EMA weights, bf16 and sharded calls reuse the same code. They are jittable with the
function closed over (``shape``, step counts and ``record_steps`` are static). Randomness is per
image: ``rng`` is one key per image (`image_keys`: ``fold_in(seed_key, global index)``), and
each image's initial and per-step noise derive from its key alone, so an image is the same
whatever the batch size or the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import (
    DenoiseFn,
    Schedule,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior,
)

SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("fixed_small", "fixed_large")
SPACINGS = ("uniform", "quadratic")


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


def _normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One N(0, I) draw of `shape[1:]` per key: row i comes from keys[i] alone."""
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(keys)


NoiseFn = Callable[[], jax.Array]  # this iteration's N(0, I) noise, drawn per image


def _run_chain(
    step: Callable[[jax.Array, jax.Array, NoiseFn], tuple[jax.Array, jax.Array]],
    shape: tuple[int, ...],
    rng: jax.Array,
    loop_ts: np.ndarray,
    record_steps: Sequence[int],
    num_timesteps: int,
) -> SampleOutput:
    """``x <- step(i, x, noise_fn)`` from x ~ N(0, I), in one fori_loop, recording snapshots.

    ``rng`` is one key per image ([B] keys, e.g. from `image_keys`) or a single key, which
    stands for ``image_keys(rng, B)``. Image b's initial noise comes from
    ``fold_in(key_b, 0)`` and its noise at iteration i from ``fold_in(fold_in(key_b, 1), i)``;
    ``noise_fn()`` draws the latter (a step that needs no noise does not call it).
    ``step`` returns ``(x_next, x0_pred)``. Snapshots go into a preallocated [S + 1, ...]
    buffer: every iteration writes in place (one dynamic_update_slice, no branch), iterations
    that are not recorded into the spare last slot, dropped at the end.
    """
    plan = _record_plan(loop_ts, record_steps, num_timesteps) if len(record_steps) else None
    keys = rng if _is_key_batch(rng, shape[0]) else image_keys(rng, shape[0])
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    x_init = _normal(fold(keys, 0), shape)
    loop_keys = fold(keys, 1)

    def noise_at(i) -> NoiseFn:
        return lambda: _normal(fold(loop_keys, i), shape)

    if plan is None:

        def body(i, x):
            return step(i, x, noise_at(i))[0]

        x = jax.lax.fori_loop(0, len(loop_ts), body, x_init)
        return SampleOutput(samples=jnp.clip(x, -1.0, 1.0))

    slot_of_iter, order, recorded = plan
    spare = int(order.max()) + 1
    slots = jnp.asarray(np.where(slot_of_iter < 0, spare, slot_of_iter))
    buf = jnp.zeros((spare + 1, *shape), jnp.float32)

    def body(i, carry):
        x, traj, x0s = carry
        x_next, x0 = step(i, x, noise_at(i))
        return x_next, traj.at[slots[i]].set(x), x0s.at[slots[i]].set(x0)

    x, traj, x0s = jax.lax.fori_loop(0, len(loop_ts), body, (x_init, buf, buf))
    return SampleOutput(
        samples=jnp.clip(x, -1.0, 1.0),
        trajectory=traj[order],
        x0_predictions=x0s[order],
        timesteps=jnp.asarray(recorded),
    )


def ddpm_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    variance: str = "fixed_small",
    clip_denoised: bool = True,
    record_steps: Sequence[int] = (),
) -> SampleOutput:
    """Ancestral sampling of Ho et al.: all T steps of p(x_{t-1} | x_t).

    The mean is the posterior mean q(x_{t-1} | x_t, x0_pred); the variance is the posterior one
    ("fixed_small", log clipped at t=0) or beta_t ("fixed_large"). No noise is added at t = 0.
    """
    s, num_t = schedule, schedule.num_timesteps
    if variance == "fixed_small":
        log_var = s.posterior_log_variance_clipped
    elif variance == "fixed_large":  # Ho et al. use posterior_variance[1] in place of beta_0
        log_var = jnp.log(jnp.concatenate([s.posterior_variance[1:2], s.betas[1:]]))
        log_var = log_var if num_t > 1 else jnp.log(s.betas)
    else:
        raise ValueError(f"unknown variance={variance!r}; use one of {VARIANCES}")
    shape = tuple(int(d) for d in shape)

    def step(i, x, noise_fn):
        t = num_t - 1 - i
        tb = jnp.full(shape[:1], t, jnp.int32)
        eps = denoise_fn(x, tb).astype(jnp.float32)
        x0 = predict_x0_from_eps(s, x, tb, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean, _, _ = q_posterior(s, x0, x, tb)
        std = jnp.where(t > 0, jnp.exp(0.5 * log_var[t]), 0.0)
        return mean + std * noise_fn(), x0

    return _run_chain(step, shape, rng, np.arange(num_t - 1, -1, -1), record_steps, num_t)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """Increasing int32 subsequence of ``num_steps`` distinct timesteps in [0, num_timesteps).

    "uniform": ``floor(k * T / S)``, i.e. ``range(0, T, T // S)`` of the DDIM code when S divides
    T. "quadratic": ``int(linspace(0, sqrt(0.8 T), S) ** 2)`` as in the DDIM code, with
    repeated small values bumped up by one so that exactly ``num_steps`` distinct steps remain.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps={num_steps} must be in [1, num_timesteps={num_timesteps}] for DDIM"
        )
    if spacing == "uniform":
        return (np.arange(num_steps, dtype=np.int64) * num_timesteps // num_steps).astype(np.int32)
    if spacing == "quadratic":
        if num_steps == num_timesteps:
            return np.arange(num_timesteps, dtype=np.int32)
        seq = (np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2).astype(np.int64)
        for k in range(1, num_steps):
            seq[k] = max(seq[k], seq[k - 1] + 1)
        assert seq[-1] < num_timesteps
        return seq.astype(np.int32)
    raise ValueError(f"unknown spacing={spacing!r}; use one of {SPACINGS}")


def ddim_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    num_steps: int = 100,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_denoised: bool = True,
    record_steps: Sequence[int] = (),
) -> SampleOutput:
    """DDIM (Song et al. 2021) on a subsequence of timesteps; eta=0 is deterministic.

    The chain starts from N(0, I) at the largest timestep of the subsequence. With
    ``clip_denoised`` the x_0 prediction is clipped and eps recomputed from it, so the update stays
    consistent. ``record_steps`` are mapped to the nearest timestep of the subsequence
    (``SampleOutput.timesteps`` says which).
    """
    s, num_t = schedule, schedule.num_timesteps
    seq = ddim_timesteps(num_t, num_steps, spacing)
    loop_ts = seq[::-1].copy()
    next_ts = np.append(loop_ts[1:], -1)  # -1 stands for "x_0", alpha_bar = 1
    t_arr, next_arr = jnp.asarray(loop_ts), jnp.asarray(next_ts)
    shape = tuple(int(d) for d in shape)

    def step(i, x, noise_fn):
        t, t_next = t_arr[i], next_arr[i]
        tb = jnp.full(shape[:1], t, jnp.int32)
        eps = denoise_fn(x, tb).astype(jnp.float32)
        x0 = predict_x0_from_eps(s, x, tb, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = predict_eps_from_x0(s, x, tb, x0)
        # 1 - alpha_bar from the float64-derived table: no float32 cancellation near t = 0.
        a, one_minus_a = s.alphas_cumprod[t], s.sqrt_one_minus_alphas_cumprod[t] ** 2
        tn, last = jnp.maximum(t_next, 0), t_next < 0
        a_next = jnp.where(last, 1.0, s.alphas_cumprod[tn])
        one_minus_a_next = jnp.where(last, 0.0, s.sqrt_one_minus_alphas_cumprod[tn] ** 2)
        sigma = eta * jnp.sqrt(one_minus_a_next / one_minus_a * (1.0 - a / a_next))
        direction = jnp.sqrt(jnp.maximum(one_minus_a_next - sigma**2, 0.0)) * eps
        x_next = jnp.sqrt(a_next) * x0 + direction
        if not (isinstance(eta, (int, float)) and eta == 0):  # eta = 0 draws no noise
            x_next = x_next + sigma * noise_fn()
        return x_next, x0

    return _run_chain(step, shape, rng, loop_ts, record_steps, num_t)


def classifier_free_guidance(
    cond_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    guidance: float,
    num_classes: int,
) -> DenoiseFn:
    """Denoise function eps_null + guidance * (eps_labels - eps_null) (Ho & Salimans 2022).

    ``guidance=1`` is the plain conditional model and ``0`` the unconditional one (a single
    forward each); otherwise both branches run as one batched forward of size 2B, interleaved
    (rows 2b and 2b + 1 are image b's conditional and null branch), so on a batch split over
    devices each device evaluates both branches of its own images: no collectives.
    The null label is ``num_classes`` (``UNet.null_label``).
    """
    if num_classes <= 0:
        raise ValueError(
            f"guidance needs a class-conditional model (num_classes > 0), got "
            f"num_classes={num_classes}"
        )
    labels = jnp.asarray(labels, jnp.int32)
    static = isinstance(guidance, (int, float))

    def denoise_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        null = jnp.full_like(labels, num_classes)
        if static and guidance == 1:
            return cond_fn(x, t, labels)
        if static and guidance == 0:
            return cond_fn(x, t, null)
        b = x.shape[0]
        pairs = jnp.stack([labels, null], axis=1).reshape(2 * b)
        eps = cond_fn(jnp.repeat(x, 2, axis=0), jnp.repeat(t, 2), pairs)
        eps = eps.reshape(b, 2, *eps.shape[1:])
        eps_cond, eps_null = eps[:, 0], eps[:, 1]
        return eps_null + guidance * (eps_cond - eps_null)

    return denoise_fn


def sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    eta: float = 0.0,
    variance: str = "fixed_small",
    spacing: str = "uniform",
    record_steps: Sequence[int] = (),
    clip_denoised: bool = True,
) -> SampleOutput:
    """Dispatch to ``ddpm_sample`` or ``ddim_sample`` (default DDIM steps: min(100, T))."""
    num_t = schedule.num_timesteps
    if sampler == "ddpm":
        if num_steps not in (None, num_t):
            raise ValueError(
                f"sampler='ddpm' runs all num_timesteps={num_t} steps but num_steps={num_steps}; "
                "use sampler='ddim' for fewer steps"
            )
        return ddpm_sample(
            denoise_fn,
            schedule,
            shape,
            rng,
            variance=variance,
            clip_denoised=clip_denoised,
            record_steps=record_steps,
        )
    if sampler == "ddim":
        steps = min(100, num_t) if num_steps is None else num_steps
        return ddim_sample(
            denoise_fn,
            schedule,
            shape,
            rng,
            num_steps=steps,
            eta=eta,
            spacing=spacing,
            clip_denoised=clip_denoised,
            record_steps=record_steps,
        )
    raise ValueError(f"unknown sampler={sampler!r}; use one of {SAMPLERS}")
