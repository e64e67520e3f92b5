"""Samplers: DDPM, DDIM, DPM-Solver++ and classifier-free guidance; each one compiled loop.

What belongs here: the reverse processes that turn noise into images given a denoise function,
one module per sampler over the one loop of `chain` (the sampler modules import `chain`, never
each other: an import-linter contract), and nothing of models, training, data or files.

Samplers take a denoise function ``fn(x_t [B,...] float, t [B] int32) -> eps`` rather than a
model, so EMA weights, bf16, guidance and sharded calls reuse the same code. They are jittable
with the function closed over (``shape``, step counts and ``record_steps`` are static).
Randomness is per image (`image_keys`): an image is the same whatever the batch size or the
number of devices.

Modules: `chain` (the loop every sampler runs, per-image keys, snapshots), `ddpm`, `ddim`,
`dpm_solver`, `guidance`. `sample` dispatches on the sampler's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from diffusion_jax.diffusion import DenoiseFn, Schedule
from diffusion_jax.samplers.chain import SampleOutput, image_keys, image_normal
from diffusion_jax.samplers.ddim import SPACINGS, ddim_sample, ddim_step, ddim_timesteps
from diffusion_jax.samplers.ddpm import VARIANCES, ddpm_sample
from diffusion_jax.samplers.dpm_solver import (
    DPM_SPACINGS,
    dpm_solver_coefficients,
    dpm_solver_sample,
    dpm_solver_timesteps,
)
from diffusion_jax.samplers.guidance import classifier_free_guidance

# name -> (order, stochastic) of the DPM-Solver++ variants
DPM_SOLVERS = {"dpm++2m": (2, False), "dpm++3m": (3, False), "dpm++2m_sde": (2, True)}
SAMPLERS = ("ddpm", "ddim", *DPM_SOLVERS)
DEFAULT_STEPS = {"ddim": 100, **dict.fromkeys(DPM_SOLVERS, 20)}  # capped at T

__all__ = [
    "image_normal",
    "ddim_step",
    "DEFAULT_STEPS",
    "DPM_SOLVERS",
    "DPM_SPACINGS",
    "SAMPLERS",
    "SPACINGS",
    "VARIANCES",
    "SampleOutput",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "default_spacing",
    "dpm_solver_coefficients",
    "dpm_solver_sample",
    "dpm_solver_timesteps",
    "image_keys",
    "min_steps",
    "sample",
    "spacings",
    "visited_timesteps",
]


def _known(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler={sampler!r}; use one of {SAMPLERS}")


def spacings(sampler: str) -> tuple[str, ...]:
    """The timestep spacings ``sampler`` accepts. DDPM visits every timestep; its spacings are
    DDIM's, which its fast previews (DDIM) use."""
    _known(sampler)
    return DPM_SPACINGS if sampler in DPM_SOLVERS else SPACINGS


def default_spacing(sampler: str) -> str:
    """The spacing None stands for: "logsnr" for DPM-Solver++ (Lu et al.'s choice for pixel
    models), "uniform" for DDIM (and DDPM's DDIM previews)."""
    _known(sampler)
    return "logsnr" if sampler in DPM_SOLVERS else "uniform"


def min_steps(sampler: str) -> int:
    """Fewest network calls ``sampler`` runs with: its order for the multistep solvers."""
    _known(sampler)
    return DPM_SOLVERS[sampler][0] if sampler in DPM_SOLVERS else 1


def _steps(sampler: str, num_steps: int | None, num_t: int) -> int:
    if sampler == "ddpm":
        if num_steps not in (None, num_t):
            raise ValueError(
                f"sampler='ddpm' runs all num_timesteps={num_t} steps but num_steps={num_steps}; "
                "use sampler='ddim' or a DPM-Solver++ for fewer steps"
            )
        return num_t
    return min(DEFAULT_STEPS[sampler], num_t) if num_steps is None else num_steps


def _spacing(sampler: str, spacing: str | None) -> str:
    spacing = default_spacing(sampler) if spacing is None else spacing
    if sampler != "ddpm" and spacing not in spacings(sampler):
        raise ValueError(
            f"spacing={spacing!r} is not a spacing of sampler={sampler!r}; use one of "
            f"{spacings(sampler)}"
        )
    return spacing


def visited_timesteps(
    schedule: Schedule,
    *,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    spacing: str | None = None,
    **sample_kwargs,
) -> np.ndarray:
    """The timesteps the chain feeds to the network, in loop order (noisiest first); its length
    is the number of network calls (guidance doubles the forward batch, not the calls).

    Takes `sample`'s keywords (those that do not change the grid are ignored), so
    ``visited_timesteps(schedule, **settings)`` describes ``sample(..., **settings)``.
    """
    del sample_kwargs
    _known(sampler)
    num_t = schedule.num_timesteps
    steps, spacing = _steps(sampler, num_steps, num_t), _spacing(sampler, spacing)
    if sampler == "ddpm":
        return np.arange(num_t - 1, -1, -1, dtype=np.int32)
    if sampler == "ddim":
        return ddim_timesteps(num_t, steps, spacing)[::-1].copy()
    return dpm_solver_timesteps(schedule, steps, spacing)[::-1].copy()


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
    spacing: str | None = None,
    record_steps: Sequence[int] = (),
    clip_denoised: bool = True,
    lower_order_final: bool | None = None,
) -> SampleOutput:
    """Dispatch on ``sampler`` (`SAMPLERS`); ``num_steps`` is the number of network calls.

    Defaults: DDIM min(100, T) steps, DPM-Solver++ min(20, T); ``spacing`` None is the
    sampler's default (`default_spacing`). ``eta`` is DDIM's noise and ``variance`` DDPM's;
    ``lower_order_final`` applies to DPM-Solver++ (None: on below 15 steps).
    """
    _known(sampler)
    num_t = schedule.num_timesteps
    steps = _steps(sampler, num_steps, num_t)
    if sampler == "ddpm":
        return ddpm_sample(
            denoise_fn,
            schedule,
            shape,
            rng,
            variance=variance,
            clip_denoised=clip_denoised,
            record_steps=record_steps,
        )
    spacing = _spacing(sampler, spacing)
    if sampler == "ddim":
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
    order, stochastic = DPM_SOLVERS[sampler]
    if not (isinstance(eta, (int, float)) and eta == 0):
        raise ValueError(
            f"eta={eta} is DDIM's noise; sampler={sampler!r} has none to set: use eta=0"
            + ("" if stochastic else " (or sampler='dpm++2m_sde' for a stochastic DPM-Solver++)")
        )
    return dpm_solver_sample(
        denoise_fn,
        schedule,
        shape,
        rng,
        num_steps=steps,
        order=order,
        spacing=spacing,
        stochastic=stochastic,
        lower_order_final=lower_order_final,
        clip_denoised=clip_denoised,
        record_steps=record_steps,
    )
