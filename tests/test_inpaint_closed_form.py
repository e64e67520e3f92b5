"""Inpainting's noise levels against their closed forms (issue 25): planted one-line bugs in
RePaint's climb and in the known region merged after each step left every test green.

With the whole image known (keep = 1) what the denoiser is fed never depends on its output, so
on Gaussian data x0 ~ N(m, s^2) (per pixel) the x_t it sees at timestep t is known exactly:

- after a step down to t the known region merged in is q(x_t | x0) = N(sqrt(abar_t) x0,
  (1 - abar_t) I): marginally N(sqrt(abar_t) m, abar_t s^2 + 1 - abar_t);
- after RePaint climbs from t to t' > t, x_t' = sqrt(abar_t' / abar_t) x_t +
  sqrt(1 - abar_t' / abar_t) z has the same marginal at t'.

Each x_t the denoiser is called with is checked against that mean and variance, with tolerances
of 6 standard errors of the sample (N pixels: the mean's error is sqrt(v / N), the variance's
v sqrt(2 / N)); a wrong timestep's abar, or a coefficient without (or with a second) square
root, is off by many times that. The exact test reproduces the known region's noise key by key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, samplers
from diffusion_jax.edit import loops
from diffusion_jax.edit.inpaint import inpaint, repaint

T, STRIDE = 100, 10  # grid 90, 80, ..., 0
M, S = 0.5, 0.3  # x0 ~ N(M, S^2) per pixel
B, H = 4096, 4  # 4096 images of 4x4x1: 65,536 pixels per timestep
SE = 6.0


@pytest.fixture(scope="module")
def schedule():
    return diffusion.make_schedule("linear", T)


def _gaussian_data(seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(M + S * rng.standard_normal((B, H, H, 1)), jnp.float32)


def _fed_to_the_denoiser(run) -> list[tuple[int, np.ndarray]]:
    """(t, x_t) of every call of the denoiser `run(denoise_fn)` makes, in call order."""
    seen: list[tuple[int, np.ndarray]] = []

    def record(x, t):
        seen.append((int(np.asarray(t).reshape(-1)[0]), np.asarray(x, np.float64)))

    def denoise_fn(x, t):
        jax.debug.callback(record, x, t, ordered=True)
        return jnp.zeros_like(x)  # eps = 0; irrelevant: the whole image is known

    jax.block_until_ready(run(denoise_fn))
    jax.effects_barrier()
    return seen


def _check_marginal(schedule, t: int, x: np.ndarray, where: str) -> None:
    a = float(np.asarray(schedule.alphas_cumprod, np.float64)[t])
    mean, var = np.sqrt(a) * M, a * S**2 + 1.0 - a
    n = x.size
    got_mean, got_var = float(x.mean()), float(x.var())
    assert abs(got_mean - mean) < SE * np.sqrt(var / n), (where, t, got_mean, mean)
    assert abs(got_var - var) < SE * var * np.sqrt(2.0 / n), (where, t, got_var, var)


def test_the_known_region_merged_after_each_step_is_x0_noised_to_that_step(schedule):
    x0 = _gaussian_data()
    keys = samplers.image_keys(jax.random.PRNGKey(1), B)
    keep = jnp.ones((1, H, H, 1), jnp.float32)
    seen = _fed_to_the_denoiser(
        lambda fn: inpaint(fn, schedule, x0, keep, keys, stride=STRIDE).samples
    )
    grid = list(range(90, -1, -STRIDE))
    assert [t for t, _ in seen] == grid
    for t, x in seen[1:]:  # the first is the initial N(0, I)
        _check_marginal(schedule, t, x, "inpaint merge")
    out = inpaint(lambda x, t: jnp.zeros_like(x), schedule, x0, keep, keys, stride=STRIDE)
    np.testing.assert_array_equal(out.samples, jnp.clip(x0, -1, 1))  # x0 itself at the end


def test_the_known_region_is_q_sample_of_the_steps_target_key_by_key(schedule):
    """Exact: the x_t fed to step k (k >= 1) is sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with
    t = grid[k] and eps the KNOWN stream's noise of iteration k - 1."""
    b = 8
    x0 = _gaussian_data()[:b]
    keys = samplers.image_keys(jax.random.PRNGKey(2), b)
    keep = jnp.ones((1, H, H, 1), jnp.float32)
    out = inpaint(
        lambda x, t: jnp.zeros_like(x), schedule, x0, keep, keys, stride=STRIDE, record=True
    )
    a = np.asarray(schedule.alphas_cumprod, np.float64)
    for k, t in enumerate(np.asarray(out.timesteps)[1:], start=1):
        eps = np.asarray(loops.normal(keys, x0.shape, loops.KNOWN, k - 1), np.float64)
        want = np.sqrt(a[t]) * np.asarray(x0, np.float64) + np.sqrt(1.0 - a[t]) * eps
        np.testing.assert_allclose(out.trajectory[k], want, atol=2e-5, err_msg=f"t={t}")


@pytest.mark.parametrize(("jump_length", "jump_count"), [(2, 3), (3, 2)])
def test_repaint_climbs_and_merges_keep_the_marginal_of_every_timestep(
    schedule, jump_length, jump_count
):
    x0 = _gaussian_data(seed=jump_length)
    keys = samplers.image_keys(jax.random.PRNGKey(3), B)
    keep = jnp.ones((1, H, H, 1), jnp.float32)
    seen = _fed_to_the_denoiser(
        lambda fn: repaint(
            fn, schedule, x0, keep, keys, stride=STRIDE, jump_length=jump_length,
            jump_count=jump_count,
        ).samples
    )  # fmt: skip
    ts = [t for t, _ in seen]
    climbs = [k for k in range(1, len(ts)) if ts[k] > ts[k - 1]]
    assert climbs, ts  # the plan climbs back: those x_t come from the re-noising
    assert ts[0] == 90 and ts[-1] == 0
    for k, (t, x) in enumerate(seen[1:], start=1):
        _check_marginal(schedule, t, x, "climb" if k in climbs else "merge")
