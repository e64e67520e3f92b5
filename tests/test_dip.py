"""Deep Image Prior (diffusion_jax.methods.dip) and the DIP-as-prior experiment (dip_prior).

DIP runs on synthetic smooth images (sinusoids in [0.2, 0.8], so clipping the noisy target
hardly matters) with a one-scale skip net at 16 px: a few compiles shared by the tests through
`_stepper`. dip_prior's core runs on a point-mass oracle (eps exact for a known x0), which
every DDPM restoration must turn back into x0.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_jax import batches, checkpoint, dip_prior, methods, pixels, samplers
from diffusion_jax.config import from_sibling
from diffusion_jax.diffusion import make_schedule
from diffusion_jax.errors import CheckpointError, UserError
from diffusion_jax.methods import dip
from diffusion_jax.nets import skipnet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config() -> ml_collections.ConfigDict:
    """configs/dip.py (MNIST 28x28) with 2 images and a one-scale net of 4 channels."""
    c = from_sibling(str(CONFIGS / "dip.py"), "dip")
    c.dip.indices = "0-1"
    c.dip.input_channels = 4
    c.dip.channels_down = (4,)
    c.dip.channels_up = (4,)
    c.dip.channels_skip = (2,)
    c.dip.need1x1_up = False
    c.train.batch_size = 2
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.ckpt_every = 2
    return c


def small_config(indices: str = "0-2", **dip_settings) -> ml_collections.ConfigDict:
    """16 px, one scale of 8 channels, output EMA weight 0.9 (a short memory for short runs)."""
    c = tiny_config()
    c.data.image_size = 16
    c.dip.indices = indices
    c.dip.channels_down = (8,)
    c.dip.channels_up = (8,)
    c.dip.exp_weight = 0.9
    for k, v in dip_settings.items():
        c.dip[k] = v
    return c


def smooth_images(n: int = 4, size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    x = np.stack([0.5 + 0.3 * np.sin(2.5 * xx + k) * np.cos(2 * yy - k) for k in range(n)])
    return np.round(x * 255).astype(np.uint8)[..., None]


def train_data(x: np.ndarray) -> batches.TrainData:
    return batches.TrainData(images=jnp.asarray(x[None]), labels=jnp.zeros((1, len(x)), jnp.int32))


@functools.cache
def _compiled(config_json: str):
    config = ml_collections.ConfigDict(json.loads(config_json))
    graphdef, _ = dip.init_state(config)
    init = jax.jit(lambda: dip.init_state(config)[1])
    step = jax.jit(functools.partial(dip.train_step, config=config, static=graphdef))
    return init, step


def _stepper(config):
    return _compiled(config.to_json())


def run(config, data: batches.TrainData, steps: int):
    """The state after each step and the metrics of each step."""
    init, step = _stepper(config)
    state = init()
    states, metrics = [], []
    for _ in range(steps):
        state, m = step(state, data)
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


@pytest.fixture(scope="module")
def smooth_run():
    config = small_config()
    states, metrics = run(config, train_data(smooth_images()), 60)
    return config, states, metrics


# --- DIP --------------------------------------------------------------------------------------


def test_dip_restores_a_smooth_noisy_image(smooth_run):
    config, states, metrics = smooth_run
    e = jax.device_get(states[-1].ema_params)
    noisy = pixels.psnr(e["noisy"], e["clean"])
    restored = pixels.psnr(e["restored"], e["clean"])
    assert np.all(np.abs(noisy - 20.2) < 0.6)  # sigma 25/255: 20 log10(255 / 25) = 20.2 dB
    assert np.all(restored > noisy + 3.0), (noisy, restored)
    # metrics are the means over images of the same quantities
    assert metrics[-1]["psnr_ema"] == pytest.approx(float(np.mean(restored)), abs=1e-3)
    assert metrics[-1]["psnr_noisy"] == pytest.approx(float(np.mean(noisy)), abs=1e-3)
    assert all(m["psnr_noisy"] == metrics[0]["psnr_noisy"] for m in metrics)  # a fixed target
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 3  # down to about sigma^2 = 0.0096
    assert all(v.dtype == np.float32 and v.shape == () for v in metrics[0].values())
    assert set(metrics[0]) == {"loss", "psnr_noisy", "psnr", "psnr_ema", "grad_norm"}


def test_output_ema_is_the_originals_recursion(smooth_run):
    config, states, metrics = smooth_run
    w = config.dip.exp_weight
    outs = [np.asarray(s.ema_params["last"], np.float64) for s in states]
    clean = np.asarray(states[-1].ema_params["clean"], np.float64)
    ema = outs[0]  # out_avg starts at the first output
    best, best_psnr, best_step = ema, pixels.psnr(ema, clean), np.ones(len(ema), int)
    for n, out in enumerate(outs[1:], start=2):
        ema = w * ema + (1 - w) * out
        p = pixels.psnr(ema, clean)
        better = p > best_psnr
        best = np.where(better[:, None, None, None], ema, best)
        best_psnr, best_step = np.where(better, p, best_psnr), np.where(better, n, best_step)
        if n in (2, 10, 60):
            np.testing.assert_allclose(states[n - 1].out_ema["outputs"], ema, atol=1e-5)
    final = jax.device_get(states[-1])
    np.testing.assert_array_equal(final.ema_params["restored"], final.out_ema["outputs"])
    np.testing.assert_allclose(final.ema_params["best"], best, atol=1e-5)
    np.testing.assert_array_equal(final.ema_params["best_step"], best_step)
    np.testing.assert_allclose(final.ema_params["best_psnr"], best_psnr, atol=1e-3)
    # the loss is the MSE to the noisy target in [0, 1] pixel units (model space / 4)
    noisy = np.asarray(final.ema_params["noisy"], np.float64)
    mse = np.mean((outs[-1] - noisy) ** 2, axis=(1, 2, 3)) / 4
    assert metrics[-1]["loss"] == pytest.approx(float(np.mean(mse)), rel=1e-4)


def test_image_noise_input_and_network_depend_on_the_image_alone():
    """Image 1's noise n, input z and network init are the same whether K = 3 or K = 1."""
    x = jnp.asarray(smooth_images(), jnp.float32) / 127.5 - 1
    three, one = small_config("0-2"), small_config("1")
    np.testing.assert_array_equal(
        dip.noisy_targets(three, x[:3])[1], dip.noisy_targets(one, x[1:2])[0]
    )
    np.testing.assert_array_equal(dip.network_inputs(three)[1], dip.network_inputs(one)[0])
    p3, p1 = _stepper(three)[0]().params, _stepper(one)[0]().params
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[0]), p3, p1)
    # and distinct images get distinct draws
    n = np.asarray(dip.noisy_targets(three, jnp.zeros((3, 16, 16, 1))))
    assert not np.allclose(n[0], n[1])


def test_images_are_optimised_independently():
    """Image 1's trajectory alone (K = 1) equals its trajectory among three; changing image 2
    leaves images 0 and 1 untouched."""
    data = smooth_images()
    states, _ = run(small_config("0-2"), train_data(data), 4)
    alone, _ = run(small_config("1"), train_data(data), 4)
    changed = data.copy()
    changed[2] = 255 - changed[2]
    other, _ = run(small_config("0-2"), train_data(changed), 4)
    for s, a, o in zip(states, alone, other, strict=True):
        # K = 3 and K = 1 run different matmul kernels: float32 rounding apart, nothing more
        np.testing.assert_allclose(s.ema_params["last"][1], a.ema_params["last"][0], atol=2e-5)
        np.testing.assert_allclose(s.out_ema["outputs"][1], a.out_ema["outputs"][0], atol=2e-5)
        np.testing.assert_array_equal(s.ema_params["last"][:2], o.ema_params["last"][:2])
    # image 2 itself did change (its first output, before any update, is the same)
    assert not np.allclose(states[-1].ema_params["last"][2], other[-1].ema_params["last"][2])
    # the kernels too; not the biases of convs that feed a norm: the norm removes them, their
    # gradient is rounding noise, and Adam turns noise into steps of size lr (as in PyTorch)
    a3, a1 = (jax.tree_util.tree_flatten_with_path(s[-1].params)[0] for s in (states, alone))
    kernels = [(p, a, b) for (p, a), (_, b) in zip(a3, a1, strict=True) if "kernel" in str(p)]
    assert len(kernels) == 5
    for path, a, b in kernels:
        np.testing.assert_allclose(a[1], b[0], atol=2e-5, err_msg=str(path))


def test_per_network_norms():
    tree = {"a": jnp.asarray([[3.0, 0.0], [0.0, 0.0]]), "b": jnp.asarray([[4.0], [1.0]])}
    np.testing.assert_allclose(dip.per_network_norms(tree), [5.0, 1.0])


def test_network_shapes_and_upsampling():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 3))
    for mode in ("bilinear", "nearest"):  # PyTorch's align_corners=False = jax.image.resize
        ref = jax.image.resize(x, (2, 14, 10, 3), mode)
        np.testing.assert_allclose(skipnet.upsample2(x, mode), ref, atol=1e-6)
    c = from_sibling(str(CONFIGS / "dip.py"), "dip")  # 28 -> 14 -> 7 -> 4 px and back (crop)
    graphdef, state = jax.eval_shape(lambda: dip.init_state(c))
    assert state.out_ema["outputs"].shape == (8, 28, 28, 1)
    out = jax.eval_shape(lambda p, z: dip.apply(graphdef, p, z), state.params,
                         jax.ShapeDtypeStruct((8, 28, 28, 32), jnp.float32))  # fmt: skip
    assert out.shape == (8, 28, 28, 1)
    size = sum(int(np.prod(p.shape[1:])) for p in jax.tree.leaves(state.params))  # per network
    assert 80_000 < size < 100_000


def test_init_is_pytorchs_default():
    c = small_config()
    params = jax.tree.map(lambda p: p[0], _stepper(c)[0]().params)
    flat = {
        tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    kernel = flat[("body", "up", "kernel", "value")]
    bias = flat[("body", "up", "bias", "value")]
    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert np.abs(bias).max() <= bound and np.abs(bias).std() > 0
    np.testing.assert_array_equal(flat[("body", "norm_up", "scale", "value")], 1.0)
    np.testing.assert_array_equal(flat[("body", "norm_up", "bias", "value")], 0.0)


@pytest.mark.parametrize(
    "setting, value, match",
    [
        ("dip.indices", "3,3", "repeats"),
        ("dip.indices", "0-70000", r"must lie in 0..9999 \(mnist/test\)"),
        ("dip.split", "validation", r"is not one of \('train', 'test'\)"),
        ("dip.indices", "a-b", "give image indices"),
        ("dip.noise_sigma", 0.0, "noise_sigma"),
        ("dip.exp_weight", 1.0, "exp_weight"),
        ("dip.kernel_up", 2, "must be odd"),
        ("dip.channels_skip", (4, 4), "one entry per scale"),
        ("dip.channels_down", (4,) * 5, "too many scales"),  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
        ("dip.upsample", "bicubic", "upsample"),
        ("data.random_flip", True, "random_flip"),
        ("data.num_shards", 2, "num_shards"),
    ],
)
def test_validate_names_the_bad_setting(setting, value, match):
    c = tiny_config()
    group, name = setting.split(".")
    c[group][name] = value
    if name == "channels_down" and len(value) == 5:
        c.dip.channels_up, c.dip.channels_skip = value, value
    with pytest.raises(UserError, match=match):
        dip.validate(c)


def test_configs_validate():
    for name in ("dip", "dip_fashion_mnist", "dip_cifar10"):
        c = from_sibling(str(CONFIGS / "dip.py"), name)
        dip.validate(c)
        assert c.method == "dip" and len(dip.indices(c)) == 8
        # held-out images by default: the loop loads the test split for DIP, "train" for DDPM
        assert c.dip.split == "test" and methods.get(c).data_split(c) == "test"
    dip.validate(tiny_config())
    c = tiny_config()
    c.dip.split = "train"
    dip.validate(c)
    assert methods.get(c).data_split(c) == "train"
    ddpm = from_sibling(str(CONFIGS / "mnist_cond_cpu.py"), "mnist_cond_cpu")
    assert methods.get(ddpm).data_split(ddpm) == "train"


def test_multi_shard_data_and_sampling_are_user_errors():
    c = small_config()
    init, step = _stepper(c)
    two = batches.TrainData(
        images=jnp.zeros((2, 4, 16, 16, 1), jnp.uint8), labels=jnp.zeros((2, 4), jnp.int32)
    )
    graphdef, _ = dip.init_state(c)
    with pytest.raises(UserError, match="one data shard"):
        dip.train_step(init(), two, config=c, static=graphdef)
    with pytest.raises(UserError, match="does not generate"):
        dip.sampler(c, graphdef)
    assert dip.METHODS["dip"].generates is False and dip.METHODS["dip"].report is dip.report


def test_report_writes_images_psnr_and_curve(smooth_run, tmp_path):
    config, states, _ = smooth_run
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step, p in ((25, 21.0), (50, 24.5), (75, 23.0)):
            f.write(json.dumps({"step": step, "psnr": p + 0.5, "psnr_ema": p}) + "\n")
    e = states[-1].ema_params
    out = dip.report(config, str(tmp_path), e, 60)
    with np.load(out["npz"]) as z:
        np.testing.assert_array_equal(z["restored"], np.asarray(e["restored"]))
        np.testing.assert_array_equal(z["clean"], np.asarray(e["clean"]))
        np.testing.assert_allclose(z["psnr_restored"], pixels.psnr(e["restored"], e["clean"]))
        assert z["indices"].tolist() == [0, 1, 2]
        assert float(z["sigma_model"]) == pytest.approx(50 / 255)
        assert (str(z["dataset"]), str(z["split"])) == ("mnist", "test")
    summary = json.loads(Path(out["json"]).read_text())
    source = (summary["dataset"], summary["split"], summary["indices"])
    assert source == ("mnist", "test", [0, 1, 2])
    assert summary["logged_peak"] == {"step": 50, "psnr_ema_db": 24.5}
    assert out["psnr_restored"] == pytest.approx(summary["psnr_db"]["restored"])
    for key in ("figure", "psnr_curve"):
        assert os.path.getsize(out[key]) > 1000
    with pytest.raises(UserError, match="has not run a step"):
        dip.report(config, str(tmp_path), e, 0)


# --- DIP as a prior for DDPM --------------------------------------------------------------------

T = 1000
S = make_schedule("linear", T)


def point_mass(x0):
    def fn(x, t):
        a = S.alphas_cumprod[t][:, None, None, None]
        return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

    return fn


def test_matched_timestep():
    abar = np.asarray(S.alphas_cumprod, np.float64)
    ratio = np.sqrt((1 - abar) / abar)
    t = dip_prior.matched_timestep(S, 50 / 255)
    assert abs(ratio[t] - 50 / 255) <= min(
        abs(ratio[t - 1] - 50 / 255), abs(ratio[t + 1] - 50 / 255)
    )
    assert 50 < t < 65  # linear betas: abar_t ~ 1 - (1e-4 t + 1e-5 t^2)


def test_matched_timestep_of_the_measured_residual():
    """t* follows the noise the input carries, r = y - x (`dip_prior.residual`), in closed form:
    without clipping it is the nominal sigma's; clipped at black pixels only max(0, sigma n) is
    left (weaker, with a positive mean), so t* is smaller."""
    sigma = 50 / 255
    signs = np.where(np.indices((4, 8, 8, 1)).sum(0) % 2 == 0, 1.0, -1.0)  # mean 0, std 1
    grey = np.zeros(signs.shape)
    r = dip_prior.residual(np.clip(grey + sigma * signs, -1, 1), grey)
    assert r["std"] == pytest.approx(sigma, rel=1e-12) and r["mean"] == pytest.approx(0, abs=1e-12)
    nominal = dip_prior.matched_timestep(S, sigma)
    assert dip_prior.matched_timestep(S, r["std"]) == nominal
    black = np.full(signs.shape, -1.0)  # r = sigma on half the pixels, 0 on the other half
    r = dip_prior.residual(np.clip(black + sigma * signs, -1, 1), black)
    assert r["std"] == pytest.approx(sigma / 2) and r["mean"] == pytest.approx(sigma / 2)
    assert dip_prior.matched_timestep(S, r["std"]) == dip_prior.matched_timestep(S, sigma / 2)
    # Gaussian noise, DIP's own target (clip_noisy): half-normal residual at the black pixels
    c = small_config("0-63")  # noise_sigma 25/255: sigma_model = 50/255
    x = jnp.full((64, 16, 16, 1), -1.0).at[:, :, 8:].set(0.0)  # half black, half mid-grey
    r = dip_prior.residual(np.asarray(dip.noisy_targets(c, x)), np.asarray(x))
    # black: E r = sigma / sqrt(2 pi), E r^2 = sigma^2 / 2; grey: E r = 0, E r^2 = sigma^2
    mean = sigma / np.sqrt(2 * np.pi) / 2
    assert r["mean"] == pytest.approx(mean, rel=0.1)
    assert r["std"] == pytest.approx(np.sqrt(0.75 * sigma**2 - mean**2), rel=0.03)
    assert dip_prior.matched_timestep(S, r["std"]) < nominal - 5  # ~47 against 56


def test_restore_returns_the_clean_image_under_an_oracle():
    rng = np.random.default_rng(0)
    clean = jnp.asarray(rng.uniform(-0.9, 0.9, (3, 8, 8, 1)), jnp.float32)
    noisy = clean + 0.2 * jnp.asarray(rng.normal(size=clean.shape), jnp.float32)
    dip_out = clean + 0.05 * jnp.asarray(rng.normal(size=clean.shape), jnp.float32)
    keys = samplers.image_keys(jax.random.PRNGKey(0), 3)
    t_matched = (dip_prior.matched_timestep(S, 0.2), 30)
    out = jax.jit(
        lambda n, d, k: dip_prior.restore(
            point_mass(clean), S, n, d, k, t_matched=t_matched, t_starts=(25, 100), stride=10
        )
    )(noisy, dip_out, keys)
    assert out["sdedit_dip"].shape == (2, 3, 8, 8, 1)
    assert out["iterative"].shape == out["one_step"].shape == (2, 3, 8, 8, 1)
    for name, x in out.items():
        np.testing.assert_allclose(x, np.broadcast_to(clean, x.shape), atol=1e-4, err_msg=name)
    assert np.all(pixels.psnr(np.asarray(out["iterative"]), np.asarray(clean)) > 60)


def _fake_dip_report(
    workdir: Path, size: int, split: str | None = "test", dataset: str | None = "mnist"
) -> None:
    """A DIP report (`methods.dip.report`'s npz); split / dataset None: a report without them."""
    (workdir / "report").mkdir(parents=True)
    x = np.zeros((2, size, size, 1), np.float32)
    source = {k: v for k, v in (("split", split), ("dataset", dataset)) if v is not None}
    np.savez(workdir / "report" / "dip.npz", clean=x, noisy=x, restored=x,
             sigma_model=np.float32(50 / 255), indices=np.arange(2), **source)  # fmt: skip


def _dip_prior_config(dip_workdir: Path, **settings) -> ml_collections.ConfigDict:
    config = from_sibling(str(CONFIGS / "mnist_cond_cpu.py"), "mnist_cond_cpu")
    config.dip_prior.dip_workdir = str(dip_workdir)
    for key, value in settings.items():
        config.dip_prior[key] = value
    return config


def test_dip_prior_user_errors(tmp_path):
    """--mode=dip_prior (`dip_prior.run`, the DDPM run's config and workdir) refuses each
    mistake with a UserError before any weights are read, and writes nothing."""
    workdir = tmp_path / "nope"

    def fails(dip_workdir, match, **settings):
        with pytest.raises(UserError, match=re.escape(match)):
            dip_prior.run(_dip_prior_config(dip_workdir, **settings), str(workdir))

    fails("", "needs the DIP run")
    fails(tmp_path / "missing", "is not a folder")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "run the DIP report first")
    _fake_dip_report(tmp_path / "small", 16)
    fails(tmp_path / "small", "The DIP images are 16x16")
    _fake_dip_report(tmp_path / "ok", 28)
    fails(tmp_path / "ok", "config.dip_prior.t_starts=(1000,)", t_starts=(1000,))
    fails(tmp_path / "ok", "config.dip_prior.t_starts=(25, 2.5)", t_starts=(25, 2.5))
    fails(tmp_path / "ok", "config.dip_prior.dip_output='first'", dip_output="first")
    fails(tmp_path / "ok", "config.dip_prior.stride=0", stride=0)
    fails(tmp_path / "ok", f"--workdir={workdir} is not a folder")
    assert not workdir.exists()
    dip_config = from_sibling(str(CONFIGS / "dip.py"), "dip")
    with pytest.raises(UserError, match="is not one"):
        dip_prior.run(dip_config, str(tmp_path))


def test_dip_prior_refuses_images_the_ddpm_trained_on(tmp_path):
    """The DIP images must be held out: of the DDPM's dataset, not of the split it trained on
    (DDPM: train). Refused before any weights are read, with the command that makes such
    images; the test split passes (the run then stops at the missing DDPM workdir)."""
    workdir = tmp_path / "nope"

    def outcome(name, **report):
        _fake_dip_report(tmp_path / name, 28, **report)
        with pytest.raises(UserError) as info:
            dip_prior.run(_dip_prior_config(tmp_path / name), str(workdir))
        return str(info.value)

    rerun = "--config.data.dataset=mnist --config.dip.split=test"
    message = outcome("train", split="train")
    assert "come from the train split of mnist, which the DDPM was trained on" in message
    assert rerun in message
    old = outcome("old", split=None)  # written before config.dip.split: DIP read train images
    assert "from before config.dip.split" in old and rerun in old
    other = outcome("fashion", dataset="fashion_mnist")
    assert "are of fashion_mnist, but the DDPM was trained on mnist" in other and rerun in other
    assert "does not say which dataset" in outcome("unknown", dataset=None)
    assert f"--workdir={workdir} is not a folder" in outcome("held_out", split="test")
    assert not workdir.exists()


def test_a_dip_checkpoint_names_its_images():
    """Restoring DIP's weights (its report) under another split, indices or noise than it was
    trained with is refused; a checkpoint from before config.dip.split fitted train images."""
    saved = {"config": {"method": "dip", "data": {"dataset": "mnist"}, "dip": {"indices": "0-1"}}}

    def asked(**dip_settings):
        settings = {"indices": "0-1", "split": "test", **dip_settings}
        return {"config": {"method": "dip", "data": {"dataset": "mnist"}, "dip": settings}}

    with pytest.raises(CheckpointError, match=re.escape("Use the checkpoint's settings "
                                                        "(--config.dip.split=train)")):  # fmt: skip
        checkpoint.check_same_meaning(saved, asked(), "w")
    checkpoint.check_same_meaning(saved, asked(split="train"), "w")
    new = {"config": asked()["config"]}
    checkpoint.check_same_meaning(new, asked(), "w")
    with pytest.raises(CheckpointError, match="config.dip.indices: checkpoint '0-1', now '2-3'"):
        checkpoint.check_same_meaning(new, asked(indices="2-3"), "w")


def test_the_former_dip_prior_command_names_the_mode(capsys):
    """`python -m diffusion_jax.dip_prior ...` stops (exit 2) with the equivalent --mode command."""
    old = ["--dip_workdir", "W1", "--ddpm_config=c.py", "--ddpm_workdir", "W2", "--out", "D"]
    assert dip_prior.main([*old, "--t_starts", "25,50", "--seed=3"]) == 2
    err = capsys.readouterr().err
    assert (
        "python -m diffusion_jax.main --mode=dip_prior --config.dip_prior.dip_workdir=W1 "
        "--config=c.py --workdir=W2 '--config.dip_prior.t_starts=(25,50,)' --config.seed=3"
    ) in err


def test_dip_prior_is_a_mode_of_the_cli():
    from diffusion_jax import main

    assert main.MODES["dip_prior"].__name__ == "_dip_prior"
    assert dip_prior.OUTPUT_DIR in main.WORKDIR_FOLDERS
