"""EMA by half-life in images (EDM's rule) and the fixed per-step decay it replaces."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import load_config

from diffusion_jax import state as state_lib
from diffusion_jax.config import base_config
from diffusion_jax.errors import UserError


def _config(batch: int, halflife: float, ratio: float = 0.0, **train):
    c = base_config()
    c.train.batch_size = batch
    c.train.ema_halflife_images = halflife
    c.train.ema_rampup_ratio = ratio
    for k, v in train.items():
        c.train[k] = v
    return c


def _decays(config, num_steps: int) -> np.ndarray:
    steps = jnp.arange(num_steps)
    decay = np.asarray(state_lib.ema_decay(config, steps), np.float64)
    return np.broadcast_to(decay, (num_steps,))


def test_halflife_decay_is_edms_formula():
    c = _config(256, 500_000.0, 0.05)
    for step in (0, 1, 10, 1000, 39_062, 100_000):
        seen = step * 256
        h = min(500_000.0, 0.05 * seen)
        want = 0.5 ** (256 / max(h, 1e-8))
        got = float(state_lib.ema_decay(c, jnp.int32(step)))
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-7), (step, got, want)
    assert float(state_lib.ema_decay(c, jnp.int32(0))) == 0.0  # step 0: EMA = parameters
    no_ramp = _config(256, 500_000.0, 0.0)
    assert math.isclose(
        float(state_lib.ema_decay(no_ramp, jnp.int32(0))), 0.5 ** (256 / 500_000), rel_tol=1e-6
    )


def test_halflife_is_measured_in_images_for_any_batch_size():
    """After N images the initial parameters weigh 0.5 ** (N / halflife), batch 64 or 256; an
    image seen H images ago weighs half of the newest one."""
    halflife, images = 20_000.0, 81_920  # a whole number of batches of 64 and 256
    weights = {}
    for batch in (64, 256):
        d = _decays(_config(batch, halflife), images // batch)
        weights[batch] = np.prod(d)
        # Relative weight of the update H images back vs the newest: the product of the
        # decays applied since then.
        back = int(halflife // batch)
        assert math.isclose(np.prod(d[-back:]), 0.5, rel_tol=0.02)
    assert math.isclose(weights[64], 0.5 ** (images / halflife), rel_tol=1e-4)
    assert math.isclose(weights[64], weights[256], rel_tol=1e-4)
    # A fixed per-step decay is not: 4x the batch forgets 4x slower in images.
    fixed = {b: 0.999 ** (images // b) for b in (64, 256)}
    assert fixed[256] > 2 * fixed[64]


def test_rampup_keeps_the_ema_young_for_any_batch_size():
    """With the ramp the half-life is 5% of the images seen: the initial parameters are
    forgotten at the same point (in images) for batch 64 and 256."""
    for batch in (64, 256):
        d = _decays(_config(batch, 500_000.0, 0.05), 200_000 // batch)
        # Weight left on everything seen before the last 10% of training: tiny.
        tail = int(0.1 * len(d))
        assert np.prod(d[-tail:]) < 0.5**1.5


def test_fixed_decay_and_warmup_unchanged():
    c = _config(128, 0.0, ema_decay=0.9999, ema_warmup=True)
    d = _decays(c, 5)
    np.testing.assert_allclose(d, [(1 + n) / (10 + n) for n in range(5)], rtol=1e-6)
    c.train.ema_warmup = False
    np.testing.assert_allclose(_decays(c, 3), 0.9999, rtol=1e-7)


@pytest.mark.parametrize(
    "field,value",
    [("ema_halflife_images", -1.0), ("ema_rampup_ratio", -0.1), ("lr", math.inf),
     ("ema_halflife_images", math.inf), ("time_budget_s", math.nan)],
)  # fmt: skip
def test_bad_ema_and_non_finite_settings_are_refused(field, value):
    config = load_config("tiny")
    config.train[field] = value
    with pytest.raises(UserError, match=f"config.train.{field}"):
        state_lib.validate_config(config)
