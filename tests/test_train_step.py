"""Properties of the train step that a one-line bug would break (issue 17; docs/MUTATIONS.md).

Each test checks a property with a known exact or statistical answer: the EMA after k real train
steps against its closed form, the timestep distribution against U{0..T-1} (chi-square), the
label-dropout and flip rates against binomial bounds, and the flip axis exactly.

Statistical tests use fixed keys, so they are deterministic; each bound is set so that a correct
implementation would fail it with probability below ALPHA = 1e-6 over the choice of key, so a
seed change cannot make them flake either.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from train_utils import compilation_cache, tiny_config

from diffusion_jax import data, diffusion, train
from diffusion_jax import state as state_lib

ALPHA = 1e-6  # false-alarm probability of every statistical assertion below


@pytest.fixture(scope="module", autouse=True)
def _cache():
    with compilation_cache():
        yield


def _binomial_bounds(n: int, p: float) -> tuple[float, float]:
    """[lo, hi] holding a Binomial(n, p) count with probability >= 1 - ALPHA (two-sided)."""
    return stats.binom.ppf(ALPHA / 2, n, p), stats.binom.isf(ALPHA / 2, n, p)


# ---------------------------------------------------------------------------------------------
# EMA


def _micro_config(**overrides):
    """The tiny config shrunk further (8x8 grey images, one U-Net level of 8 channels, batch 4)
    so the real train step compiles in seconds."""
    config = tiny_config("unused", data__image_size=8, **overrides)
    config.model.ch = 8
    config.model.ch_mult = (1,)
    config.model.time_emb_dim = 16
    config.train.batch_size = 4
    return config


def test_ema_equals_its_closed_form_after_k_steps():
    """After k real train steps, ema_k = w_0 p_0 + sum_j w_j p_j, where p_j are the parameters
    after update j, w_j = (1 - d_{j-1}) * prod_{i >= j} d_i, w_0 = prod d_i and d_i is the
    library's decay at update i: the recursion ema <- d * ema + (1 - d) * (the parameters after
    this update), started at p_0.

    ema_decay=0.15 with the warm-up gives decays min(0.15, (1+n)/(10+n)) = 0.1, 0.15, 0.15: one
    compile covers the warm-up and the config.train.ema_decay path, and (1 - d) is large, so
    averaging the wrong parameters is far outside the tolerance.
    """
    k = 3
    config = _micro_config(train__ema_decay=0.15, train__ema_warmup=True)
    graphdef, state = state_lib.init_train_state(config)
    rng = np.random.default_rng(0)
    train_data = train.TrainData(
        images=jnp.asarray(rng.integers(0, 256, (1, 16, 8, 8, 1), dtype=np.uint8)),
        labels=jnp.zeros((1, 16), jnp.int32),
    )
    step = jax.jit(
        functools.partial(
            train.train_step,
            config=config,
            graphdef=graphdef,
            schedule=state_lib.build_schedule(config),
            optimizer=state_lib.build_optimizer(config),
        )
    )
    params = [state.params]  # p_0 (= the initial EMA), p_1, ..., p_k
    emas = [state.ema_params]
    for _ in range(k):
        state, _ = step(state, train_data)
        params.append(state.params)
        emas.append(state.ema_params)
    assert int(state.step) == k
    d = [float(state_lib.ema_decay(config, i)) for i in range(k)]  # decay of update i (step i)

    def weights(n: int) -> np.ndarray:  # ema_n = sum_j weights(n)[j] * p_j
        w = np.zeros(n + 1)
        w[0] = np.prod(d[:n])
        for j in range(1, n + 1):
            w[j] = (1.0 - d[j - 1]) * np.prod(d[j:n])
        return w

    def leaves(tree) -> list[np.ndarray]:
        return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]

    def combine(w: np.ndarray, trees: list) -> list[np.ndarray]:  # sum_j w_j * trees[j]
        per_leaf = zip(*map(leaves, trees), strict=True)
        return [sum(wj * x for wj, x in zip(w, xs, strict=True)) for xs in per_leaf]

    for n in range(1, k + 1):
        w = weights(n)
        assert w.sum() == pytest.approx(1.0)
        expected = combine(w, params[: n + 1])
        for got, want in zip(leaves(emas[n]), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        # The same weights on the parameters from before each update (a stale EMA) must differ
        # by far more than the tolerance, or this check could not tell the two apart.
        stale = combine(w, params[:1] + params[:n])
        gap = max(np.abs(a - b).max() for a, b in zip(expected, stale, strict=True))
        assert gap > 1e-5, "the parameters barely moved: this check would not see a stale EMA"
        # And one step of the recursion, with the decay the library reports for update n - 1.
        for e, e_prev, p in zip(*map(leaves, (emas[n], emas[n - 1], params[n])), strict=True):
            np.testing.assert_allclose(e, d[n - 1] * e_prev + (1 - d[n - 1]) * p, atol=1e-6)


def test_the_train_step_weights_its_loss_as_the_config_says():
    """config.diffusion.loss_weighting and min_snr_gamma reach the loss of the real train step:
    min-SNR with a gamma above every SNR of the schedule is L_simple (every eps weight is 1), one
    far below every SNR scales each example's loss by gamma / SNR <= 2e-6 here (T = 100)."""
    base = _micro_config()
    graphdef, state = state_lib.init_train_state(base)
    rng = np.random.default_rng(1)
    train_data = train.TrainData(
        images=jnp.asarray(rng.integers(0, 256, (1, 16, 8, 8, 1), dtype=np.uint8)),
        labels=jnp.zeros((1, 16), jnp.int32),
    )

    def step_loss(**diffusion_settings) -> float:
        config = _micro_config(**{f"diffusion__{k}": v for k, v in diffusion_settings.items()})
        step = functools.partial(
            train.train_step,
            config=config,
            graphdef=graphdef,
            schedule=state_lib.build_schedule(config),
            optimizer=state_lib.build_optimizer(config),
        )
        return float(jax.jit(step)(state, train_data)[1]["loss"])

    uniform = step_loss(loss_weighting="uniform")
    assert uniform > 0.1  # an untrained network: the eps-MSE is about 1
    assert step_loss(loss_weighting="min_snr", min_snr_gamma=1e12) == pytest.approx(
        uniform, rel=1e-6
    )
    tiny = step_loss(loss_weighting="min_snr", min_snr_gamma=1e-6)
    assert 0 < tiny < 2e-6 * uniform


# ---------------------------------------------------------------------------------------------
# Timesteps


def _drawn_timesteps(schedule: diffusion.Schedule, n: int, key: jax.Array) -> np.ndarray:
    """The t that `training_loss` draws for n examples: with x0 = 0, prediction x0 and a denoise
    function returning t as the image, the per-example loss is exactly t^2."""

    def denoise(x_t, t):
        return jnp.broadcast_to(t.astype(jnp.float32)[:, None, None, None], x_t.shape)

    loss = jax.jit(
        lambda k: diffusion.training_loss(
            schedule, denoise, jnp.zeros((n, 1, 1, 1)), k, prediction="x0"
        )
    )(key)
    t = np.rint(np.sqrt(np.asarray(loss, np.float64))).astype(np.int64)
    np.testing.assert_array_equal(t.astype(np.float64) ** 2, np.asarray(loss))  # exact squares
    return t


@pytest.mark.parametrize("num_timesteps, n", [(2, 20_000), (100, 200_000), (1000, 1_000_000)])
def test_timesteps_cover_0_to_T_minus_1_uniformly(num_timesteps, n):
    schedule = diffusion.make_schedule("linear", num_timesteps)
    t = _drawn_timesteps(schedule, n, jax.random.PRNGKey(17))
    assert t.min() == 0 and t.max() == num_timesteps - 1
    counts = np.bincount(t, minlength=num_timesteps)
    assert counts.size == num_timesteps  # nothing outside [0, T)
    chi2 = stats.chisquare(counts).statistic  # against n / T per timestep
    limit = stats.chi2.isf(ALPHA, num_timesteps - 1)
    assert chi2 < limit, f"chi-square {chi2:.1f} >= {limit:.1f}: counts {counts}"


def test_tiny_config_timesteps_reach_T_minus_1():
    """The schedule the train step gets from a config draws up to config's T - 1 too."""
    config = tiny_config("unused")
    schedule = state_lib.build_schedule(config)
    t = _drawn_timesteps(schedule, 50_000, jax.random.PRNGKey(3))
    assert set(t.tolist()) == set(range(config.diffusion.num_timesteps))


# ---------------------------------------------------------------------------------------------
# prepare_batch: label dropout and flips

_KEYS = 8  # independent (flip_key, label_key) pairs, each for a batch of _BATCH
_BATCH = 2500


def _prepare_many(config, x: jax.Array, labels: jax.Array, seed: int):
    """prepare_batch over _KEYS key pairs; returns images [_KEYS * B, ...] and labels."""
    keys = jax.random.split(jax.random.PRNGKey(seed), (_KEYS, 2))
    fn = jax.jit(jax.vmap(lambda k: train.prepare_batch(config, x, labels, k[0], k[1])))
    images, y = fn(keys)
    images = np.asarray(images).reshape(-1, *x.shape[1:])
    return images, None if y is None else np.asarray(y).reshape(-1)


def _labels(n: int, num_classes: int) -> jax.Array:
    return jnp.arange(n, dtype=jnp.int32) % num_classes


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_label_dropout_rate_is_binomial(rate):
    config = tiny_config("unused", model__num_classes=10, train__label_dropout=rate)
    x = jnp.zeros((_BATCH, 2, 2, 1), jnp.uint8)
    labels = _labels(_BATCH, 10)
    _, y = _prepare_many(config, x, labels, seed=1)
    original = np.tile(np.asarray(labels), _KEYS)
    dropped = y == 10  # the null label
    np.testing.assert_array_equal(y[~dropped], original[~dropped])  # the rest are untouched
    lo, hi = _binomial_bounds(y.size, rate)
    assert lo <= dropped.sum() <= hi, (dropped.sum(), lo, hi)
    # Drops are drawn per example: each batch's rate varies, never all-or-nothing.
    per_key = dropped.reshape(_KEYS, _BATCH).mean(axis=1)
    assert np.all((per_key > 0) & (per_key < 1)), per_key


@pytest.mark.parametrize("rate, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_label_dropout_none_or_all(rate, expected):
    config = tiny_config("unused", model__num_classes=10, train__label_dropout=rate)
    labels = _labels(_BATCH, 10)
    _, y = _prepare_many(config, jnp.zeros((_BATCH, 2, 2, 1), jnp.uint8), labels, seed=2)
    assert np.mean(y == 10) == expected
    if rate == 0.0:
        np.testing.assert_array_equal(y, np.tile(np.asarray(labels), _KEYS))


def test_unconditional_models_get_no_labels():
    config = tiny_config("unused")  # num_classes = 0
    _, y = _prepare_many(config, jnp.zeros((_BATCH, 2, 2, 1), jnp.uint8), _labels(_BATCH, 10), 3)
    assert y is None


def _asymmetric_batch(n: int) -> np.ndarray:
    """n copies of a 3x4x2 uint8 image whose pixels are all distinct, so the original, its
    W-mirror and its H-mirror are three different images."""
    image = (np.arange(3 * 4 * 2, dtype=np.uint8) * 7).reshape(1, 3, 4, 2)
    return np.repeat(image, n, axis=0)


def _classify_flips(out: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    model = lambda a: np.asarray(data.to_model_space(a))
    same = lambda ref: np.all(out == model(ref)[:1], axis=(1, 2, 3))
    return {
        "original": same(x),
        "w_mirror": same(x[:, :, ::-1, :]),
        "h_mirror": same(x[:, ::-1, :, :]),
        "hw_mirror": same(x[:, ::-1, ::-1, :]),
    }


def test_flips_mirror_width_at_rate_one_half():
    config = tiny_config("unused", data__random_flip=True)
    x = _asymmetric_batch(_BATCH)
    out, _ = _prepare_many(config, jnp.asarray(x), _labels(_BATCH, 10), seed=4)
    kinds = _classify_flips(out, x)
    assert not kinds["h_mirror"].any() and not kinds["hw_mirror"].any()  # never the H axis
    assert np.all(kinds["original"] ^ kinds["w_mirror"])  # each output is exactly one of two
    flips = int(kinds["w_mirror"].sum())
    lo, hi = _binomial_bounds(out.shape[0], 0.5)
    assert lo <= flips <= hi, (flips, lo, hi)
    per_key = kinds["w_mirror"].reshape(_KEYS, _BATCH).mean(axis=1)
    assert np.all((per_key > 0) & (per_key < 1)), per_key  # per example, not per batch


def test_no_flips_when_random_flip_is_off():
    config = tiny_config("unused", data__random_flip=False)
    x = _asymmetric_batch(_BATCH)
    out, _ = _prepare_many(config, jnp.asarray(x), _labels(_BATCH, 10), seed=5)
    assert _classify_flips(out, x)["original"].all()


def test_flips_and_label_drops_are_drawn_independently():
    """With both at rate 1/2, a flip and a drop coincide for about half the examples: the two
    draws do not share a key (sharing one makes them coincide always)."""
    config = tiny_config(
        "unused", data__random_flip=True, model__num_classes=10, train__label_dropout=0.5
    )
    x = _asymmetric_batch(_BATCH)
    out, y = _prepare_many(config, jnp.asarray(x), _labels(_BATCH, 10), seed=6)
    flipped, dropped = _classify_flips(out, x)["w_mirror"], y == 10
    lo, hi = _binomial_bounds(y.size, 0.5)
    assert lo <= int((flipped == dropped).sum()) <= hi
