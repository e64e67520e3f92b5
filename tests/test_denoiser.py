"""The single-step denoiser method (diffusion_jax/methods/denoiser.py): its state, its train step
(recomputed from its documented keys and units), its EMA, its report's closed forms."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from train_utils import compilation_cache

from diffusion_jax import batches, data, samplers
from diffusion_jax.config import base_config
from diffusion_jax.errors import UserError
from diffusion_jax.methods import base, denoiser

METHOD = denoiser.METHODS["denoiser"]


def tiny_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    """A denoiser that trains in seconds on a CPU: MNIST 28x28, D = 4, batch 8, 8 steps."""
    c = base_config()
    c.method = "denoiser"
    c.denoiser = denoiser.settings()
    c.denoiser.hidden = 4
    c.denoiser.eval_images = 64
    c.denoiser.eval_sigmas = (0.0, 0.25, 0.5, 1.0)
    c.denoiser.figure_images = 3
    c.data.dataset = "mnist"
    c.data.data_dir = data_dir
    c.data.image_size = 28
    c.data.channels = 1
    c.train.batch_size = 8
    c.train.num_steps = 8
    c.train.lr = 3e-3
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.5  # visibly different from the parameters (the course uses 0)
    c.train.ema_warmup = False
    c.train.log_every = 2
    c.train.ckpt_every = 4
    c.train.sample_every = 0
    c.train.heldout_examples = 0
    c.train.best_metric = "loss"
    c.train.tensorboard = False
    c.sample.batch_size = 32
    return c


@pytest.fixture(scope="module", autouse=True)
def _cache():
    with compilation_cache():
        yield


@pytest.fixture(scope="module")
def fresh() -> tuple[nnx.GraphDef, denoiser.DenoiserState]:
    """(graphdef, state) of `tiny_config`, initialised eagerly (no minute-long compile)."""
    return METHOD.init_state(tiny_config())


@pytest.fixture(scope="module")
def step_fn(fresh):
    graphdef, _ = fresh
    return jax.jit(
        functools.partial(
            METHOD.train_step, config=tiny_config(), static=graphdef, batch_sharding=None
        )
    )


def _train_data(n: int = 8, seed: int = 0) -> batches.TrainData:
    rng = np.random.default_rng(seed)
    return batches.TrainData(
        images=jnp.asarray(rng.integers(0, 256, (1, n, 28, 28, 1), dtype=np.uint8)),
        labels=jnp.zeros((1, n), jnp.int32),
    )


# ---------------------------------------------------------------------------------------------
# State


def test_init_state_traces_to_the_eager_state(fresh):
    """init_state is pure and traceable (the loop jits and eval_shapes it): the traced shapes
    and graphdef are the eager ones. EMA = the init, running statistics (0, 1), step 0."""
    graphdef, state = fresh
    traced = {}

    def init():
        traced["static"], s = METHOD.init_state(tiny_config())
        return s

    shapes = jax.eval_shape(init)
    assert traced["static"] == graphdef
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.ema_params["params"], state.params)
    jax.tree.map(np.testing.assert_array_equal, state.ema_params["batch_stats"], state.model_state)
    means = [v for p, v in jax.tree.leaves_with_path(state.model_state) if "mean" in str(p)]
    variances = [v for p, v in jax.tree.leaves_with_path(state.model_state) if "var" in str(p)]
    assert len(means) == len(variances) == 17  # one BatchNorm per norm of the course U-Net
    assert all(np.all(m == 0) for m in means) and all(np.all(v == 1) for v in variances)
    # Adam sees the parameters only: its moments have the parameters' structure.
    adam = state.opt_state[1][0]
    assert jax.tree.structure(adam.mu) == jax.tree.structure(state.params)


# ---------------------------------------------------------------------------------------------
# Train step


def test_step_loss_is_the_course_objective_recomputed_from_its_keys(fresh, step_fn):
    """Step 0's loss is mean((net(x01 + sigma eps) - x01)^2) with x01 = (x + 1) / 2 in [0, 1],
    eps = normal(split(step_key)[0]) and the batch of `select_batch(data_key, 0)`, the
    network in train mode (batch statistics) at the initial parameters; the running
    statistics then move by PyTorch's momentum 0.1."""
    graphdef, state = fresh
    config, train_data = tiny_config(), _train_data()
    new_state, metrics = step_fn(state, train_data)
    data_key, step_key = base.step_keys(state.rng, state.step)
    noise_key, _ = jax.random.split(step_key)
    x, _ = batches.select_batch(train_data, data_key, state.step, config.train.batch_size)
    clean = (data.to_model_space(x) + 1) / 2
    assert float(clean.min()) >= 0 and float(clean.max()) <= 1
    noisy = clean + 0.5 * jax.random.normal(noise_key, clean.shape)
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    loss = jnp.mean((model(noisy, None, train=True) - clean) ** 2)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    stats = nnx.state(model, nnx.BatchStat)  # the reference model's updated running stats
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
        new_state.model_state,
        stats,
    )
    assert set(metrics) == {"loss", "grad_norm"} and float(metrics["grad_norm"]) > 0


def test_loss_decreases_and_ema_averages_params_and_statistics(fresh, step_fn):
    """On one fixed batch of 8 images (fresh noise each step) the loss falls; at every step
    ema = d * ema + (1 - d) * new for the parameters and the BatchNorm statistics alike."""
    _, state = fresh
    train_data = _train_data()
    d = float(tiny_config().train.ema_decay)
    losses = []
    for _ in range(24):
        before = state.ema_params
        state, metrics = step_fn(state, train_data)
        losses.append(float(metrics["loss"]))
        new = {"params": state.params, "batch_stats": state.model_state}
        for e, e0, p in zip(*map(jax.tree.leaves, (state.ema_params, before, new)), strict=True):
            np.testing.assert_allclose(e, d * e0 + (1 - d) * p, rtol=1e-6, atol=1e-7)
    assert int(state.step) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses


def test_sampler_refuses_with_a_user_error(fresh):
    assert METHOD.generates is False and METHOD.report is denoiser.report
    with pytest.raises(UserError, match="does not generate images"):
        METHOD.sampler(tiny_config(), fresh[0])


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("denoiser.sigma", -0.1, r"config.denoiser.sigma=-0.1 must be a finite number >= 0"),
        ("denoiser.hidden", 0, r"config.denoiser.hidden=0 must be a positive integer"),
        ("denoiser.eval_sigmas", (), r"config.denoiser.eval_sigmas=\(\) must be a non-empty"),
        ("denoiser.eval_sigmas", (0.5, -1.0), r"config.denoiser.eval_sigmas=\(0.5, -1.0\)"),
        ("denoiser.figure_images", 65, r"config.denoiser.figure_images=65 must be <= "),
        ("data.image_size", 32, r"config.data.image_size=32 must be 28"),
    ],
)
def test_validate_names_the_bad_setting(path, value, match):
    config = tiny_config()
    METHOD.validate(config)
    section, name = path.split(".")
    config[section][name] = value
    with pytest.raises(UserError, match=match):
        METHOD.validate(config)


def test_validate_without_settings():
    config = base_config()
    config.method = "denoiser"
    with pytest.raises(UserError, match=r"needs config.denoiser"):
        METHOD.validate(config)


def test_shipped_config_is_the_courses_recipe():
    from train_utils import load_config

    config = load_config("denoiser_mnist")
    METHOD.validate(config)
    assert config.method == "denoiser" and config.denoiser.sigma == 0.5
    assert config.denoiser.hidden == 128 and config.train.lr == 1e-4
    assert config.train.batch_size == 256
    assert config.train.num_steps == 5 * (60_000 // 256)  # 5 epochs of select_batch
    assert config.train.ema_decay == 0.0 and config.train.ema_halflife_images == 0.0
    for name in ("log_every", "ckpt_every"):
        assert config.train.num_steps % config.train[name] == 0


# ---------------------------------------------------------------------------------------------
# Report


@pytest.fixture(scope="module")
def reports(tiny_mnist_dir, fresh, tmp_path_factory) -> list[tuple[str, dict, dict]]:
    """The report of the initial EMA on the 64 random test images, with report batches of 32
    (two calls) and 64 (one): (workdir, returned dict, denoiser.json) each."""
    out = []
    for batch in (32, 64):
        config = tiny_config(tiny_mnist_dir)
        config.sample.batch_size = batch
        workdir = str(tmp_path_factory.mktemp(f"denoiser_report_{batch}"))
        returned = denoiser.report(config, workdir, fresh[1].ema_params, step=7)
        with open(os.path.join(workdir, "report", "denoiser.json")) as f:
            out.append((workdir, returned, json.load(f)))
    return out


def test_report_noisy_psnr_is_the_closed_form(reports):
    """Noisy inputs are x01 + sigma eps, unclipped: per-pixel E[(z - x)^2] = sigma^2, so the
    mean MSE is sigma^2 and the mean per-image PSNR 10 log10(1 / sigma^2) (its Jensen bias,
    ~10 / ln 10 / 784 = 0.006 dB, is far inside the tolerance). Bounds: 5 standard deviations
    of a mean of 64 * 784 squared normals (relative sd sqrt(2 / 50176)) and of 64 per-image
    PSNRs (sd 10 / ln 10 * sqrt(2 / 784) / 8 = 0.03 dB)."""
    levels = reports[0][2]["levels"]
    assert list(levels) == ["0", "0.25", "0.5", "1"]
    for s, v in levels.items():
        sigma = float(s)
        closed = 10 * np.log10(1 / sigma**2) if sigma else 120.0  # sigma 0: the 1e-12 cap
        assert v["psnr_noisy_closed_form_db"] == pytest.approx(closed, abs=1e-9)
        if sigma == 0:
            assert v["mse_noisy"] == 0 and v["psnr_noisy_db"] == 120.0
            continue
        assert v["mse_noisy"] == pytest.approx(sigma**2, rel=5 * np.sqrt(2 / (64 * 784)))
        assert v["psnr_noisy_db"] == pytest.approx(closed, abs=0.15)
    # One eps per image for every level: doubling sigma quarters every image's MSE exactly.
    gap = levels["0.25"]["psnr_noisy_db"] - levels["0.5"]["psnr_noisy_db"]
    assert gap == pytest.approx(10 * np.log10(4), abs=1e-4)


def test_report_records_outputs_and_is_batch_independent(reports):
    (workdir, returned, record), (_, _, record_64) = reports
    # Per-image noise: the noisy inputs are the same bits at any batch size. The network's
    # float32 outputs may differ by a few ulps between batch sizes (XLA:CPU picks its convolution
    # blocking by shape), so the denoised numbers agree to float32 precision, not bit for bit.
    assert record["levels"].keys() == record_64["levels"].keys()
    for level, v in record["levels"].items():
        w = record_64["levels"][level]
        assert v.keys() == w.keys()
        for k in v:
            if "denoised" in k:
                assert v[k] == pytest.approx(w[k], rel=1e-6), (level, k)
            else:
                assert v[k] == w[k], (level, k)
    assert set(record) == {
        "method", "step", "dataset", "split", "num_images", "train_sigma", "units",
        "noisy_clipped", "denoised_clipped", "psnr_cap_db", "levels",
    }  # fmt: skip
    assert (record["step"], record["num_images"], record["train_sigma"]) == (7, 64, 0.5)
    for v in record["levels"].values():
        assert set(v) == {
            "mse_noisy", "mse_denoised", "psnr_noisy_db", "psnr_denoised_db",
            "psnr_noisy_closed_form_db",
        }  # fmt: skip
        assert 0 <= v["mse_denoised"] <= 1  # clipped outputs of [0, 1] targets
        assert v["psnr_denoised_db"] >= 0
    report_dir = os.path.join(workdir, "report")
    assert returned["denoiser.json"] == os.path.join(report_dir, "denoiser.json")
    assert returned["psnr_db/0.5"] == record["levels"]["0.5"]["psnr_denoised_db"]
    with open(returned["denoiser.md"]) as f:
        table = f.read().splitlines()
    assert len([row for row in table if row.startswith("| 0")]) == 3  # 0, 0.25, 0.5
    assert table[-1].startswith("| 1 |")
    with Image.open(returned["denoiser_sigmas.png"]) as im:
        w, h = im.size
    assert w > 400 and h > 400  # 5 columns, 6 rows of labelled tiles


def test_report_denoised_is_the_eval_networks_clipped_output(reports, fresh, tiny_mnist_dir):
    """The denoised MSE at sigma is the eval-mode network (running statistics from
    ema_params) on x01 + sigma eps_i, clipped to [0, 1], eps_i from the image's key."""
    graphdef, state = fresh
    config = tiny_config(tiny_mnist_dir)
    split = data.load_split("mnist", "test", data_dir=tiny_mnist_dir, progress=False)
    clean = (data.to_model_space(split.images.reshape(-1, 28, 28, 1)[:64]) + 1) / 2
    stream = jax.random.fold_in(jax.random.PRNGKey(config.seed), denoiser.REPORT_STREAM)
    eps = samplers.image_normal(samplers.image_keys(stream, 64), clean.shape)
    model = nnx.merge(graphdef, state.ema_params["params"], state.ema_params["batch_stats"])
    out = np.clip(np.asarray(model(jnp.asarray(clean + 0.5 * eps), None)), 0, 1)
    mse = np.mean((out.astype(np.float64) - clean) ** 2, axis=(1, 2, 3))
    level = reports[0][2]["levels"]["0.5"]
    np.testing.assert_allclose(level["mse_denoised"], mse.mean(), rtol=1e-5)
    np.testing.assert_allclose(level["psnr_denoised_db"], np.mean(-10 * np.log10(mse)), rtol=1e-5)
