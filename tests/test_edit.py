"""The editing toolbox (diffusion_jax.edit) against exact noise predictors (no training).

A point-mass oracle knows x0 exactly: eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t),
so every denoiser must return x0; a Gaussian oracle (data N(mu, sigma^2)) has a non-trivial
posterior, so the noise streams matter. Class-conditional oracles put class y at mu_y and the
null label at the mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import edit, samplers
from diffusion_jax.diffusion import make_schedule

T = 1000
S = make_schedule("linear", T)
B, H, W, C = 4, 8, 8, 1
RNG = jax.random.key(0)
KEYS = samplers.image_keys(RNG, B)


def images(seed=1, b=B):
    return jnp.asarray(np.random.default_rng(seed).uniform(-0.9, 0.9, (b, H, W, C)), jnp.float32)


def point_mass(x0):
    def fn(x, t):
        a = S.alphas_cumprod[t][:, None, None, None]
        return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

    return fn


def gaussian(mu=0.3, sigma=0.5):
    def fn(x, t):
        a = S.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * sigma**2 + 1 - a)

    return fn


K = 3
MUS = jnp.asarray(np.random.default_rng(7).uniform(-0.8, 0.8, (K, H, W, C)), jnp.float32)
MUS = jnp.concatenate([MUS, MUS.mean(0, keepdims=True)])  # row K: the null label


def class_oracle(sigma=0.4):
    """Class y: data N(mu_y, sigma^2) per pixel (null label K: the classes' mean)."""

    def cond_fn(x, t, y):
        a = S.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MUS[y]) / (a * sigma**2 + 1 - a)

    return cond_fn


# --- grids and conventions -------------------------------------------------------------------


def test_strided_grid_and_sdedit_start_conventions():
    grid = edit.strided_timesteps(1000, 30)
    assert grid[0] == 990 and grid[-1] == 0 and len(grid) == 34 and np.all(np.diff(grid) == -30)
    assert [int(grid[i]) for i in (1, 3, 5, 7, 10, 20)] == [960, 900, 840, 780, 690, 390]
    assert edit.timesteps_from(500, 30, 1000).tolist()[:3] == [500, 480, 450]
    assert edit.timesteps_from(750, 30, 1000).tolist() == grid[grid <= 750].tolist()
    # diffusers: the last int(N * strength) of N steps run, i.e. i_start = N - int(N * strength)
    assert edit.start_index_from_strength(1.0, 34) == 0
    assert edit.start_index_from_strength(0.0, 34) == 34
    assert edit.start_index_from_strength(0.5, 34) == 17
    assert edit.sdedit_start(1000, 30, strength=31 / 34) == 3
    with pytest.raises(ValueError, match="i_start=35 must be in"):
        edit.sdedit_start(1000, 30, i_start=35)
    with pytest.raises(ValueError, match="strength"):
        edit.sdedit_start(1000, 30, strength=1.5)


def test_repaint_plan():
    plain = edit.repaint_plan(20, 1, 1)
    assert plain.tolist() == [[k, k - 1] for k in range(19, -1, -1)]
    plan = edit.repaint_plan(20, 5, 3)
    assert plan[0].tolist() == [19, 18] and plan[-1].tolist() == [0, -1]
    assert np.all(np.abs(plan[:, 1] - plan[:, 0]) == 1)
    ups = int(np.sum(plan[:, 1] > plan[:, 0]))
    assert ups == 3 * 2 * 5  # jump points 0, 5, 10 (< 20 - 5), each climbing 5 levels twice
    assert np.array_equal(plan[1:, 0], plan[:-1, 1])  # a connected walk


# --- denoising -------------------------------------------------------------------------------


def test_forward_process_uses_one_noise_per_image():
    x0 = images()
    xt = edit.forward_process(S, x0, (250, 500, 750), KEYS)
    assert xt.shape == (3, B, H, W, C)
    a = float(S.alphas_cumprod[500])
    eps = (xt[1] - np.sqrt(a) * x0) / np.sqrt(1 - a)
    eps_750 = (xt[2] - np.sqrt(float(S.alphas_cumprod[750])) * x0) / float(
        S.sqrt_one_minus_alphas_cumprod[750]
    )
    np.testing.assert_allclose(eps, eps_750, atol=2e-4)
    one = edit.forward_process(S, x0[2:3], (500,), samplers.image_keys(RNG, 1, start=2))
    np.testing.assert_allclose(one[0, 0], xt[1, 2], atol=1e-6)  # per-image keys


@pytest.mark.parametrize("t", [250, 500, 750])
def test_one_step_and_iterative_denoising_recover_x0(t):
    x0 = images()
    fn = point_mass(x0)
    x_t = edit.forward_process(S, x0, (t,), KEYS)[0]
    np.testing.assert_allclose(edit.one_step_denoise(fn, S, x_t, t), x0, atol=1e-4)
    out = jax.jit(lambda x, k: edit.iterative_denoise(fn, S, x, t, k, stride=30, record=True))(
        x_t, KEYS
    )
    np.testing.assert_allclose(out.samples, x0, atol=1e-4)
    ts = edit.timesteps_from(t, 30, T)
    assert out.trajectory.shape == (len(ts), B, H, W, C)
    assert out.timesteps.tolist() == ts.tolist()
    np.testing.assert_allclose(out.trajectory[0], x_t, atol=1e-6)


def test_iterative_denoising_of_gaussian_data_matches_the_posterior():
    """On N(mu, sigma^2) data, stride 1 (the ancestral chain) samples p(x0 | x_t) exactly."""
    mu, sigma, t, n = 0.1, 0.3, 300, 4096
    x0 = mu + sigma * jax.random.normal(jax.random.key(3), (n, 1, 1, 1))
    keys = samplers.image_keys(jax.random.key(4), n)
    x_t = edit.forward_process(S, x0, (t,), keys)[0]
    out = edit.iterative_denoise(
        gaussian(mu, sigma), S, x_t, t, keys, stride=1, clip_denoised=False
    )
    a = float(S.alphas_cumprod[t])
    post_var = 1 / (1 / sigma**2 + a / (1 - a))
    resid = np.asarray(out.samples - (post_var * (mu / sigma**2 + np.sqrt(a) * x_t / (1 - a))))
    assert abs(resid.mean()) < 5 * np.sqrt(post_var / n)
    assert abs(resid.var() / post_var - 1) < 5 * np.sqrt(2 / n)


def test_blur_lowers_mse_on_a_smooth_noisy_image():
    yy, xx = np.mgrid[0:28, 0:28] / 28.0
    smooth = np.sin(2 * np.pi * yy) * np.cos(2 * np.pi * xx)
    clean = jnp.asarray(np.tile(smooth[None, :, :, None], (2, 1, 1, 3)), jnp.float32)
    noisy = clean + 0.3 * jax.random.normal(jax.random.key(1), clean.shape)
    blurred = edit.gaussian_blur(noisy, 5, 2.0)
    assert float(jnp.mean((blurred - clean) ** 2)) < 0.3 * float(jnp.mean((noisy - clean) ** 2))
    np.testing.assert_allclose(edit.gaussian_blur(jnp.full((1, 9, 9, 1), 0.7)), 0.7, atol=1e-6)
    assert abs(edit.gaussian_kernel(7, 1.0).sum() - 1) < 1e-6
    with pytest.raises(ValueError, match="odd"):
        edit.gaussian_kernel(4, 1.0)


# --- SDEdit and translation ----------------------------------------------------------------


def test_sdedit_at_zero_strength_returns_the_input():
    x0 = images()
    fn = gaussian()
    np.testing.assert_array_equal(edit.sdedit(fn, S, x0, KEYS, strength=0.0).samples, x0)
    np.testing.assert_array_equal(edit.sdedit(fn, S, x0, KEYS, i_start=34).samples, x0)
    full = edit.sdedit(fn, S, x0, KEYS, strength=1.0)  # starts at t = 990: the input is gone
    assert float(jnp.abs(full.samples - x0).mean()) > 0.1


def test_sdedit_keeps_more_of_the_input_at_later_starts_and_is_per_image():
    x0 = images()
    fn = gaussian(0.0, 0.6)
    errs = [
        float(jnp.mean((edit.sdedit(fn, S, x0, KEYS, i_start=i).samples - x0) ** 2))
        for i in (1, 10, 20, 30)
    ]
    assert errs == sorted(errs, reverse=True), errs
    one = edit.sdedit(fn, S, x0[1:2], samplers.image_keys(RNG, 1, start=1), i_start=10)
    np.testing.assert_allclose(
        one.samples[0], edit.sdedit(fn, S, x0, KEYS, i_start=10).samples[1], atol=1e-6
    )


def test_translation_moves_the_image_to_the_target_class():
    cond = class_oracle(sigma=0.05)
    x0 = jnp.broadcast_to(MUS[0], (B, H, W, C))
    target = jnp.full((B,), 2)
    out = edit.translate(cond, S, x0, target, KEYS, guidance=2.0, num_classes=K, i_start=5)
    to_target = float(jnp.abs(out.samples - MUS[2]).mean())
    assert to_target < 0.5 * float(jnp.abs(x0 - MUS[2]).mean())
    with pytest.raises(ValueError, match=r"target class 3 is outside \[0, 3\)"):
        edit.translate(cond, S, x0, jnp.full((B,), 3), KEYS, guidance=2.0, num_classes=K, i_start=5)
    with pytest.raises(ValueError, match="class-conditional"):
        edit.translate(cond, S, x0, target, KEYS, guidance=2.0, num_classes=0, i_start=5)


# --- inpainting ------------------------------------------------------------------------------


def test_inpainting_keeps_the_known_region_exactly_and_recovers_the_rest():
    x0 = images()
    keep = edit.as_keep_mask(edit.builtin_mask("centre", H), x0.shape)
    out = edit.inpaint(point_mass(x0), S, x0, keep, KEYS, stride=30)
    np.testing.assert_allclose(out.samples, x0, atol=1e-4)  # the oracle knows the hole too
    other = edit.inpaint(gaussian(), S, x0, keep, KEYS, stride=30).samples  # knows nothing
    known = np.asarray(keep, bool).repeat(B, 0)
    np.testing.assert_array_equal(np.asarray(other)[known], np.asarray(x0)[known])
    assert float(jnp.abs(other - x0).max()) > 0.1  # ... and the hole is generated


def test_repaint_with_unit_jumps_is_plain_replacement_and_keeps_the_known_region():
    x0 = images()
    keep = edit.as_keep_mask(edit.builtin_mask("half", H), x0.shape)
    fn = gaussian()
    plain = edit.inpaint(fn, S, x0, keep, KEYS, stride=20).samples
    rp = edit.repaint(fn, S, x0, keep, KEYS, stride=20, jump_length=1, jump_count=1).samples
    np.testing.assert_allclose(rp, plain, atol=1e-6)
    rp10 = jax.jit(lambda k: edit.repaint(fn, S, x0, keep, k, stride=4).samples)(KEYS)
    known = np.asarray(keep, bool).repeat(B, 0)
    np.testing.assert_array_equal(np.asarray(rp10)[known], np.asarray(x0)[known])
    assert float(jnp.abs(rp10 - plain).max()) > 1e-3  # resampling changes the generated part
    np.testing.assert_allclose(
        edit.repaint(point_mass(x0), S, x0, keep, KEYS, stride=20, jump_length=3, jump_count=3)
        .samples, x0, atol=1e-4,
    )  # fmt: skip


def test_masks_builtin_conventions_and_errors():
    m = edit.builtin_mask("centre", 28)
    assert m.shape == (28, 28) and m[14, 14] == 0 and m[0, 0] == 1 and m.sum() == 28 * 28 - 14 * 14
    assert edit.builtin_mask("half", 28)[20].sum() == 0 and edit.builtin_mask("half", 28)[5].all()
    s0, s1 = (edit.builtin_mask("strokes", 28, index=i) for i in (0, 1))
    assert 0 < (s0 == 0).mean() < 0.6 and not np.array_equal(s0, s1)
    fill = edit.as_keep_mask(1 - m, (2, 28, 28, 3), fill=True)
    np.testing.assert_array_equal(np.asarray(fill)[0, :, :, 0], m)
    with pytest.raises(ValueError, match="does not fit"):
        edit.as_keep_mask(np.ones((27, 28)), (2, 28, 28, 3))
    with pytest.raises(ValueError, match="0 or 1"):
        edit.as_keep_mask(np.full((28, 28), 0.5), (2, 28, 28, 3))
    with pytest.raises(ValueError, match="unknown mask shape"):
        edit.builtin_mask("circle", 28)


# --- illusions -------------------------------------------------------------------------------


def test_anagram_with_identical_views_and_classes_is_plain_guidance():
    cond = class_oracle()
    y = jnp.asarray([0, 1, 2, 1])
    cfg = samplers.classifier_free_guidance(cond, y, 3.0, K)
    ana = edit.anagram_fn(cond, ["identity", "identity"], [y, y], guidance=3.0, num_classes=K)
    a = edit.generate(ana, S, (B, H, W, C), KEYS, stride=30).samples
    b = edit.generate(cfg, S, (B, H, W, C), KEYS, stride=30).samples
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", ["vflip", "rot180", "negate", "hflip"])
def test_anagram_is_symmetric_under_an_involutive_view(name):
    """A_{a,b}(v x) = v^-1 A_{b,a}(x): what makes the view of the image show class b."""
    cond = class_oracle()
    v, v_inv = edit.VIEWS[name]
    ya, yb = jnp.asarray([0, 1, 2, 0]), jnp.asarray([2, 2, 1, 1])
    x, t = images(5), jnp.full((B,), 400)
    ab = edit.anagram_fn(cond, ["identity", name], [ya, yb], guidance=2.0, num_classes=K)
    ba = edit.anagram_fn(cond, ["identity", name], [yb, ya], guidance=2.0, num_classes=K)
    np.testing.assert_allclose(ab(v(x), t), v_inv(ba(x, t)), atol=1e-5)


def test_anagram_views_invert():
    x = images(6)
    for name, (v, v_inv) in edit.VIEWS.items():
        np.testing.assert_array_equal(v_inv(v(x)), x, err_msg=name)
    with pytest.raises(ValueError, match="unknown view"):
        edit.anagram_fn(class_oracle(), ["spin"], [jnp.zeros(B, int)], guidance=1.0, num_classes=K)


def test_hybrid_with_equal_classes_is_plain_guidance():
    cond = class_oracle()
    y = jnp.asarray([2, 0, 1, 2])
    cfg = samplers.classifier_free_guidance(cond, y, 3.0, K)
    hyb = edit.hybrid_fn(cond, y, y, guidance=3.0, num_classes=K)
    x, t = images(8), jnp.full((B,), 600)
    np.testing.assert_allclose(hyb(x, t), cfg(x, t), atol=1e-5)
    a = edit.generate(hyb, S, (B, H, W, C), KEYS, stride=30).samples
    b = edit.generate(cfg, S, (B, H, W, C), KEYS, stride=30).samples
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_hybrid_splits_frequencies_between_the_classes():
    cond = class_oracle()
    lo, hi = jnp.zeros(B, jnp.int32), jnp.ones(B, jnp.int32)
    x, t = images(9), jnp.full((B,), 300)
    hyb = edit.hybrid_fn(cond, lo, hi, guidance=1.0, num_classes=K)(x, t)
    e_lo, e_hi = cond(x, t, lo), cond(x, t, hi)
    low = edit.gaussian_blur(e_lo, 7, 1.0)  # the low frequencies of class 0's estimate
    high = e_hi - edit.gaussian_blur(e_hi, 7, 1.0)  # and the rest of class 1's
    np.testing.assert_allclose(hyb, low + high, atol=1e-5)
    assert float(jnp.abs(hyb - e_lo).mean()) > 1e-2 and float(jnp.abs(hyb - e_hi).mean()) > 1e-2
    with pytest.raises(ValueError, match="outside"):
        edit.hybrid_fn(cond, lo, hi + 5, guidance=1.0, num_classes=K)
