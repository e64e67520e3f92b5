"""The single-step denoiser of the CS180/280A course ("Project 5, part B", part 1).

The course's unconditional U-Net (`nets.course_unet.CourseUNet`, with BatchNorm as in the course) is
trained to map a noisy digit z = x + sigma * eps back to x in one forward pass, with the mean
squared error, at the one noise level `config.denoiser.sigma` (0.5). It generates nothing
(`generates=False`): `--mode=sample` runs its `report` instead, which measures MSE and PSNR of
the denoised output at several noise levels on test images and draws them.

Units of sigma. As in the course, images are in [0, 1] here and sigma is relative to that: the
network sees z = (x + 1) / 2 + sigma * eps, where x is the pipeline's model-space image in
[-1, 1] (`data.to_model_space`), and predicts (x + 1) / 2. So sigma = 0.5 is the course's
sigma = 0.5 (it would be 1.0 on [-1, 1] images), and the loss and the MSEs of the report are in
the course's units: its numbers compare directly. Noisy inputs are never clipped (the course
does not clip them either); the denoised output is clipped to [0, 1] for the report's MSE and
PSNR only (the target lies in [0, 1], so clipping can only lower the error).

State. `params` are the U-Net's parameters (what Adam sees), `model_state` the BatchNorm running
statistics (`nnx.BatchStat`, momentum 0.1 in PyTorch's convention), updated by every train step
outside the optimizer. `ema_params = {"params", "batch_stats"}` is the EMA (`state.ema_decay`)
of both: the report evaluates with it, BatchNorm on its running statistics. With
`config.train.ema_decay = 0` (the course has no EMA; configs/denoiser_mnist.py) it equals the
trained model exactly.

Randomness. Step n draws its noise (and flips, when on) from `step_keys(state.rng, n)`; its batch
is `batches.select_batch`, the one data order of every method. The report's noise is fixed per
test image (`samplers.image_keys`): image i gets one eps_i, scaled by each sigma, so its
numbers depend neither on the batch size nor on the devices.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from diffusion_jax import batches, data, images, parallel, pixels, records, samplers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.methods.base import REPORT_DIR, Method, step_keys
from diffusion_jax.nets.course_unet import IMAGE_SIZE, CourseUNet

REPORT_STREAM = 0x64656E  # fold_in(PRNGKey(config.seed), REPORT_STREAM): the report's noise
PSNR_CAP_MSE = 1e-12  # per-image MSE floor: a noiseless image (sigma 0) reads 120 dB, not inf


def settings() -> ml_collections.ConfigDict:
    """`config.denoiser`: the course's part 1 settings (its D, sigma and evaluation levels)."""
    s = ml_collections.ConfigDict()
    s.sigma = 0.5  # training noise std, in [0, 1] pixel units (the course's; see module doc)
    s.hidden = 128  # D of the course U-Net (the course's denoiser uses 128)
    s.eval_images = 1000  # the report: MSE/PSNR on the first this many test images
    s.eval_sigmas = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # ... at these noise levels ([0, 1] units)
    s.figure_images = 5  # rows (test digits) of report/denoiser_sigmas.png
    return s


@flax.struct.dataclass
class DenoiserState:
    step: jax.Array  # int32 scalar
    rng: jax.Array  # raw uint32[2] key
    params: nnx.State  # the U-Net's nnx.Param leaves (what Adam trains)
    ema_params: dict  # {"params": EMA of params, "batch_stats": EMA of model_state}
    opt_state: optax.OptState
    model_state: nnx.State  # BatchNorm running statistics (nnx.BatchStat), not trained by Adam


# ---------------------------------------------------------------------------------------------
# Settings


def _fail(name: str, value: Any, requirement: str) -> UserError:
    return UserError(f"config.{name}={value!r} {requirement}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_level(value: Any) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and math.isfinite(value) and value >= 0


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise `UserError` naming the first bad `config.denoiser` (or image size) setting."""
    if "denoiser" not in config:
        raise UserError(
            "config.method='denoiser' needs config.denoiser: set it to "
            "diffusion_jax.methods.denoiser.settings() (see configs/denoiser_mnist.py)."
        )
    d = config.denoiser
    if not _is_level(d.sigma):
        raise _fail("denoiser.sigma", d.sigma, "must be a finite number >= 0 ([0, 1] units)")
    for name in ("hidden", "eval_images", "figure_images"):
        value = d[name]
        if not (_is_int(value) and value > 0):
            raise _fail(f"denoiser.{name}", value, "must be a positive integer")
    if d.figure_images > d.eval_images:
        raise _fail(
            "denoiser.figure_images",
            d.figure_images,
            f"must be <= config.denoiser.eval_images={d.eval_images} (it shows the first ones)",
        )
    levels = tuple(d.eval_sigmas)
    if not levels or not all(_is_level(s) for s in levels):
        raise _fail(
            "denoiser.eval_sigmas",
            levels,
            "must be a non-empty tuple of numbers >= 0 ([0, 1] units)",
        )
    size = config.data.image_size
    if size != IMAGE_SIZE:
        raise _fail(
            "data.image_size",
            size,
            f"must be {IMAGE_SIZE}: the denoiser is the course's 28x28 MNIST U-Net",
        )
    _positive_batch(config, "sample.batch_size")


def _positive_batch(config: ml_collections.ConfigDict, name: str) -> None:
    section, key = name.split(".")
    value = config[section][key]
    if not (_is_int(value) and value > 0):
        raise _fail(name, value, "must be a positive integer")


# ---------------------------------------------------------------------------------------------
# Model and state


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> CourseUNet:
    """The course's unconditional U-Net with BatchNorm, width `config.denoiser.hidden`."""
    return CourseUNet(
        image_size=config.data.image_size,
        in_channels=config.data.channels,
        hidden=config.denoiser.hidden,
        num_timesteps=0,
        num_classes=0,
        norm="batch",
        rngs=rngs,
    )


def graphdef_of(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The static structure of `build_model` (no memory, no compute)."""
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef


def init_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, DenoiserState]:
    """(graphdef, fresh state): PyTorch-default init, running stats (0, 1), EMA = the init."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    model = build_model(config, nnx.Rngs(params=init_key))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    ema = {"params": params, "batch_stats": stats}
    ema = jax.tree.map(jnp.copy, ema)  # its own buffers: the loop donates the state
    state = DenoiserState(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        ema_params=ema,
        opt_state=state_lib.build_optimizer(config).init(params),
        model_state=stats,
    )
    return graphdef, state


def to_unit(x: jax.Array) -> jax.Array:
    """Model space [-1, 1] -> the course's [0, 1] pixel units."""
    return (x + 1.0) / 2.0


def train_step(
    state: DenoiserState,
    train_data: batches.TrainData,
    *,
    config: ml_collections.ConfigDict,
    static: nnx.GraphDef,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[DenoiserState, dict[str, jax.Array]]:
    """One Adam update of mean((net(x + sigma * eps) - x)^2), x in [0, 1]; BatchNorm statistics
    from this batch (then the running ones updated), EMA of parameters and statistics."""
    step = state.step
    data_key, step_key = step_keys(state.rng, step)
    noise_key, flip_key = jax.random.split(step_key)
    x, _ = batches.select_batch(train_data, data_key, step, config.train.batch_size)
    if batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
    clean = to_unit(batches.to_model_images(x, flip_key, config.data.random_flip))
    noisy = clean + config.denoiser.sigma * jax.random.normal(noise_key, clean.shape, clean.dtype)

    def loss_fn(params, model_state):  # model_state an argument: BatchNorm updates it here
        model = nnx.merge(static, params, model_state, copy=True)
        loss = jnp.mean((model(noisy, None, train=True) - clean) ** 2)
        return loss, nnx.state(model, nnx.BatchStat)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, stats), grads = grad_fn(state.params, state.model_state)
    optimizer = state_lib.build_optimizer(config)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = {"params": params, "batch_stats": stats}
    ema = state_lib.ema_update(config, step, state.ema_params, new)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(
        step=step + 1, params=params, ema_params=ema, opt_state=opt_state, model_state=stats
    )
    return new_state, metrics


def sampler(
    config: ml_collections.ConfigDict,
    static: Any,
    *,
    fast: bool = False,
    batch_sharding: jax.sharding.Sharding | None = None,
):
    """The denoiser makes no images from noise alone: there is nothing to sample."""
    raise UserError(
        "config.method='denoiser' does not generate images (it maps a noisy digit to a clean "
        "one); --mode=sample writes its report (workdir/report/denoiser.json, .md and "
        "denoiser_sigmas.png), and periodic FID and --mode=eval do not apply."
    )


# ---------------------------------------------------------------------------------------------
# Report


def denoise_fn(graphdef: nnx.GraphDef, ema_params: dict):
    """fn(z in [0, 1] units) -> the eval-mode network's estimate of x (running statistics)."""
    model = nnx.merge(graphdef, ema_params["params"], ema_params["batch_stats"])
    return lambda z: model(z, None, train=False)


@functools.partial(jax.jit, static_argnames=("graphdef", "sigmas"))
def _noisy_and_denoised(
    ema_params: dict, clean: jax.Array, keys: jax.Array, *, graphdef, sigmas: tuple[float, ...]
) -> tuple[jax.Array, jax.Array]:
    """Noisy clean + s * eps_i (unclipped) and the denoised output clipped to [0, 1], for each
    s in `sigmas`: float32 [S, B, H, W, C] each. eps_i comes from keys[i] alone."""
    eps = samplers.image_normal(keys, clean.shape)
    fn = denoise_fn(graphdef, ema_params)
    noisy = jnp.asarray(sigmas, jnp.float32)[:, None, None, None, None] * eps + clean
    # one forward over all levels: eval-mode BatchNorm treats every image on its own
    denoised = jnp.clip(fn(noisy.reshape(-1, *clean.shape[1:])), 0.0, 1.0)
    return noisy, denoised.reshape(noisy.shape)


def _mse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image MSE over the last three axes, float64."""
    return np.mean((np.asarray(x, np.float64) - ref) ** 2, axis=(-3, -2, -1))


def psnr_db(mse: np.ndarray) -> np.ndarray:
    """PSNR of [0, 1] images, 10 log10(1 / MSE), with MSE floored at `PSNR_CAP_MSE`."""
    return pixels.psnr_from_mse(mse, 1.0, PSNR_CAP_MSE)


def evaluate(
    config: ml_collections.ConfigDict,
    ema_params: dict,
    clean: np.ndarray,
    *,
    graphdef: nnx.GraphDef | None = None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """MSE and PSNR per noise level of `clean` (float [N, H, W, C] in [0, 1]).

    Returns (per-level means, noisy [S, F, ...], denoised [S, F, ...]) where F is the first
    `config.denoiser.figure_images` images (for the figure). Means are over images of the
    per-image MSE and per-image PSNR; batches of `config.sample.batch_size`.
    """
    graphdef = graphdef_of(config) if graphdef is None else graphdef
    sigmas = tuple(float(s) for s in config.denoiser.eval_sigmas)
    stream = jax.random.fold_in(jax.random.PRNGKey(config.seed), REPORT_STREAM)
    n, batch, shown = len(clean), int(config.sample.batch_size), int(config.denoiser.figure_images)
    per_image = []  # [4, S, B] per batch: mse noisy, mse denoised, psnr noisy, psnr denoised
    figure_noisy, figure_denoised = [], []
    for start in range(0, n, batch):
        x = np.asarray(clean[start : start + batch], np.float32)
        keys = samplers.image_keys(stream, len(x), start=start)
        noisy, denoised = _noisy_and_denoised(
            ema_params, jnp.asarray(x), keys, graphdef=graphdef, sigmas=sigmas
        )
        noisy, denoised = np.asarray(noisy), np.asarray(denoised)
        mse_noisy, mse_denoised = _mse(noisy, x), _mse(denoised, x)  # [S, B]
        per_image.append(
            np.stack([mse_noisy, mse_denoised, psnr_db(mse_noisy), psnr_db(mse_denoised)])
        )
        if start < shown:
            figure_noisy.append(noisy[:, : shown - start])
            figure_denoised.append(denoised[:, : shown - start])
    mean = np.concatenate(per_image, axis=-1).mean(-1)  # one reduction: any batch size
    levels = {
        f"{s:g}": {
            "mse_noisy": float(mean[0, k]),
            "mse_denoised": float(mean[1, k]),
            "psnr_noisy_db": float(mean[2, k]),
            "psnr_denoised_db": float(mean[3, k]),
            "psnr_noisy_closed_form_db": float(psnr_db(np.float64(s) ** 2)),
        }
        for k, s in enumerate(sigmas)
    }
    return levels, np.concatenate(figure_noisy, 1), np.concatenate(figure_denoised, 1)


def markdown(record: dict) -> str:
    """The report's table: one row per noise level."""
    lines = [
        f"Single-step denoiser (trained at sigma = {record['train_sigma']:g}), step "
        f"{record['step']}, first {record['num_images']} {record['dataset']} test images; "
        "sigma, MSE and PSNR in [0, 1] pixel units (PSNR = 10 log10(1 / MSE), per image, "
        "averaged; noisy inputs unclipped, denoised outputs clipped to [0, 1]).",
        "",
        "| sigma | noisy MSE | noisy PSNR (dB) | 10 log10(1/sigma^2) | denoised MSE "
        "| denoised PSNR (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for s, v in record["levels"].items():
        lines.append(
            f"| {s} | {v['mse_noisy']:.5f} | {v['psnr_noisy_db']:.2f} "
            f"| {v['psnr_noisy_closed_form_db']:.2f} | {v['mse_denoised']:.5f} "
            f"| {v['psnr_denoised_db']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def figure(
    path: str, clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray, sigmas: Sequence[float],
    title: str,
) -> str:  # fmt: skip
    """Rows: each test digit noisy, then denoised; columns: the original, then each sigma."""
    f = clean.shape[0]
    rows = lambda a, b: np.stack([a, b], 1).reshape(2 * f, *a.shape[1:])  # noisy over denoised
    columns = [("original", pixels.quantize_unit(rows(clean, clean)))]
    columns += [
        (f"σ={s:g}", pixels.quantize_unit(rows(noisy[k], denoised[k])))
        for k, s in enumerate(sigmas)
    ]
    labels = [f"#{i} {kind}" for i in range(f) for kind in ("noisy", "denoised")]
    return images.edit_figure(path, columns, row_labels=labels, title=title)


def report(
    config: ml_collections.ConfigDict, workdir: str, ema_params: dict, step: int
) -> dict[str, Any]:
    """MSE/PSNR at each `config.denoiser.eval_sigmas` on the first `eval_images` test images,
    to workdir/report/denoiser.json and denoiser.md, and the figure denoiser_sigmas.png.

    Runs on every process (the same computation); writes on process 0 only. Returns the paths
    and the denoised PSNR (dB) at each level (`psnr_db/<sigma>`).
    """
    d = config.data
    xs = data.read_split(d, "test")[0][: config.denoiser.eval_images]
    clean = np.asarray(to_unit(data.to_model_space(xs)), np.float32)
    levels, noisy, denoised = evaluate(config, ema_params, clean)
    record = {
        "method": "denoiser",
        "step": int(step),
        "dataset": d.dataset,
        "split": "test",
        "num_images": len(clean),
        "train_sigma": float(config.denoiser.sigma),
        "units": "[0, 1] pixels: z = (x + 1) / 2 + sigma * eps; PSNR = 10 log10(1 / MSE)",
        "noisy_clipped": False,
        "denoised_clipped": True,
        "psnr_cap_db": float(psnr_db(np.float64(0.0))),
        "levels": levels,
    }
    out_dir = os.path.join(workdir, REPORT_DIR)
    paths = {
        "denoiser.json": os.path.join(out_dir, "denoiser.json"),
        "denoiser.md": os.path.join(out_dir, "denoiser.md"),
        "denoiser_sigmas.png": os.path.join(out_dir, "denoiser_sigmas.png"),
    }
    if parallel.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        records.write_json(paths["denoiser.json"], record, indent=1)
        with open(paths["denoiser.md"], "w") as fp:
            fp.write(markdown(record))
        sigmas = [float(s) for s in config.denoiser.eval_sigmas]
        shown = clean[: noisy.shape[1]]
        title = f"Single-step denoiser (σ_train={config.denoiser.sigma:g}, step {step})"
        figure(paths["denoiser_sigmas.png"], shown, noisy, denoised, sigmas, title)
    return {**paths, **{f"psnr_db/{s}": v["psnr_denoised_db"] for s, v in levels.items()}}


METHODS = {
    "denoiser": Method(
        name="denoiser",
        validate=validate,
        init_state=init_state,
        train_step=train_step,
        sampler=sampler,
        generates=False,
        report=report,
    )
}
