"""Timestep plans of the editing loops (NumPy, static): strided grids, SDEdit's start, RePaint.

The strided grid of stride s over T timesteps is ``[k s for k = K .. 0]`` with ``K s < T``, noisiest
first: for T = 1000 and s = 30 the 34 timesteps 990, 960, ..., 30, 0 (the course's
``range(990, -1, -30)``). Two conventions pick SDEdit's start on a grid of N timesteps:

- ``i_start`` (the course's): the index into the grid; 0 starts at the noisiest timestep, larger
  values start less noisy and keep more of the input (i_start = N: no noise, the input back).
- ``strength`` (diffusers' ``StableDiffusionImg2ImgPipeline``): diffusers runs the last
  ``int(N * strength)`` of its N timesteps, i.e. ``i_start = N - int(N * strength)``. strength 1
  starts at the noisiest timestep (i_start 0), strength 0 is the input back. For T = 1000, s = 30
  (N = 34): i_start 1, 3, 5, 7, 10, 20 (t = 960, 900, 840, 780, 690, 390) are the strengths
  33/34, 31/34, ..., 14/34 (0.97, 0.91, 0.85, 0.79, 0.71, 0.41).
"""

from __future__ import annotations

import numpy as np


def strided_timesteps(num_timesteps: int, stride: int) -> np.ndarray:
    """int32 ``[K s, (K - 1) s, ..., s, 0]`` with K s < num_timesteps (noisiest first)."""
    if not 1 <= stride <= num_timesteps:
        raise ValueError(f"stride={stride} must be in [1, num_timesteps={num_timesteps}]")
    return np.arange(0, num_timesteps, stride, dtype=np.int32)[::-1].copy()


def timesteps_from(t_start: int, stride: int, num_timesteps: int) -> np.ndarray:
    """``t_start`` followed by the strided grid's timesteps below it (noisiest first).

    For a ``t_start`` on the grid this is the grid's tail from ``t_start``; any other start
    (e.g. t = 500 with stride 30) joins the grid at its next timestep (500, 480, 450, ...).
    """
    if not 0 <= t_start < num_timesteps:
        raise ValueError(f"t_start={t_start} must be in [0, {num_timesteps})")
    grid = strided_timesteps(num_timesteps, stride)
    return np.concatenate([[t_start], grid[grid < t_start]]).astype(np.int32)


def start_index_from_strength(strength: float, num_steps: int) -> int:
    """diffusers' convention: ``i_start = num_steps - int(num_steps * strength)``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    return num_steps - min(int(num_steps * strength), num_steps)


def check_start_index(i_start: int, num_steps: int) -> int:
    if not 0 <= int(i_start) <= num_steps:
        raise ValueError(
            f"i_start={i_start} must be in [0, {num_steps}] (the strided grid has {num_steps} "
            "timesteps; 0 is the noisiest, the grid's length returns the input)"
        )
    return int(i_start)


def repaint_plan(num_levels: int, jump_length: int, jump_count: int) -> np.ndarray:
    """RePaint's ``get_schedule_jump`` on grid levels 0..num_levels-1 (level 0 = t 0).

    Returns int32 [S, 2] pairs (from_level, to_level): to = from - 1 is a denoising step (to = -1:
    to x_0), to = from + 1 a forward re-noising step. Whenever the descent reaches a level
    ``k * jump_length`` (< num_levels - jump_length) it climbs back ``jump_length`` levels,
    ``jump_count - 1`` times, as in Lugmayr et al. (2022). j = r = 1 is the plain descent.
    """
    if jump_length < 1 or jump_count < 1:
        raise ValueError(f"jump_length={jump_length} and jump_count={jump_count} must be >= 1")
    jumps = {j: jump_count - 1 for j in range(0, num_levels - jump_length, jump_length)}
    t, seq = num_levels, []
    while t >= 1:
        t -= 1
        seq.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                seq.append(t)
    seq.append(-1)
    return np.stack([seq[:-1], seq[1:]], axis=1).astype(np.int32)
