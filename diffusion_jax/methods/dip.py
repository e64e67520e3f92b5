"""Deep Image Prior (Ulyanov, Vedaldi & Lempitsky, CVPR 2018): denoising by fitting a fresh
network to one noisy image, as a method of the shared training loop.

For each image j of `config.dip.indices` (of the split `config.dip.split`: the test split by
default, images no DDPM of the package trained on, so `--mode=dip_prior` can compare DIP with a
DDPM on held-out images) a randomly initialised
encoder-decoder f_j (the original's "skip" net, sized for 28-32 px) maps a fixed noise input z_j
to the noisy target y_j = clip(x_j + sigma n_j); it is trained with Adam on ||f_j(z_j) - y_j||^2
alone. The architecture fits natural structure long before it fits the noise, so the output's
PSNR against the clean x_j first rises above the noisy input's, peaks, then falls as the net
memorises the noise (the loop's metrics.jsonl holds that curve). As in the original denoising
notebook: z_j ~ U[0, 1) * 0.1 with `input_channels` channels, re-perturbed at every step by
`reg_noise_std` * N(0, 1) (1/30), Adam lr 0.01 (`config.train.lr`), sigma = 25/255, the noisy
target clipped to the pixel range, and the reported output the running average of the outputs
with weight 0.99 (the original's `exp_weight`): `out_ema <- 0.99 out_ema + 0.01 out`, starting
at the first output. That output EMA is `state.out_ema["outputs"]`; DIP keeps no EMA of the
parameters. The network is `nets.skipnet.SkipNet`.

Pixel units. The original works on [0, 1] pixels; this pipeline's model space is [-1, 1]
(x_model = 2 x_01 - 1). `noise_sigma` is on the 0-255 scale (25 -> 25/255 = 0.098 in [0, 1]
pixels, 2 * 25/255 = 0.196 in model space); the target is clipped to [-1, 1]; the net ends in a
sigmoid s and outputs 2 s - 1. `loss` is the MSE in [0, 1] pixel units (model-space MSE / 4, the
original's loss) and PSNRs are against a peak of 1 on [0, 1] pixels: 10 log10(4 / MSE_model).

K images at once, independently. The K networks' parameters are stacked on a leading axis and
applied with `jax.vmap` of one functional apply; the loss is the sum of the K per-image MSEs,
so network j's gradient is that of its own MSE, and Adam (elementwise) and the clipping
(`config.train.grad_clip` > 0: per network, never across networks) keep them apart. Every random
draw of image j (its network's initialisation, z_j, n_j and the input perturbation of step s)
comes from `fold_in(key, i_j)` with i_j its index in the dataset, so an image's whole run depends
only on (seed, dataset index, settings), never on K or the other images.

The norm layers are the original's BatchNorm in training mode on a batch of one image (the
notebook never switches to eval mode): per-channel statistics over the pixels of that image with
a learnt scale and shift, i.e. `nnx.GroupNorm` with one group per channel (eps 1e-5). There are
no running statistics. Left out: the original's optional "backtracking" (undoing a step whose
PSNR to the noisy image drops by 5 dB), which is not part of the paper's denoising results.

The loop gives `train_step` the split `config.dip.split` on the device (`batches.TrainData`,
`Method.data_split`); DIP reads its K images from it (one data shard only) and ignores
`config.train.batch_size` and the batch order. `--mode=sample` runs `report`: restored images,
figure and PSNR curve in `workdir/report/`, with the dataset, split and indices the images came
from. Runs from before `config.dip.split` existed fitted images of the train split: their
checkpoints say so (`checkpoint.check_same_meaning` reads a missing setting as "train"), so
their report needs `--config.dip.split=train`, and `--mode=dip_prior` refuses such images with a
DDPM trained on that split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from diffusion_jax import data, images, parallel, pixels
from diffusion_jax import records as records_lib
from diffusion_jax import state as state_lib
from diffusion_jax.batches import TrainData
from diffusion_jax.config import parse_index_list
from diffusion_jax.errors import UserError
from diffusion_jax.methods.base import REPORT_DIR, Method, step_keys
from diffusion_jax.nets.skipnet import SkipNet, init_params
from diffusion_jax.pixels import psnr

# fold_in(PRNGKey(seed), stream): the networks' init, the inputs z, the target noise n, state.rng
NET_STREAM, INPUT_STREAM, NOISE_STREAM, TRAIN_STREAM = 0, 1, 2, 3


def settings() -> ml_collections.ConfigDict:
    """`config.dip`: the defaults are the original denoising notebook's, the net sized for
    28-32 px images (the original's 5 scales of 128 channels are for 512 px photographs)."""
    c = ml_collections.ConfigDict()
    c.split = "test"  # the split of config.data.dataset the images come from (train | test)
    c.indices = "0-7"  # images of that split by index ("0-7", "3,5,9"); K = their number
    c.noise_sigma = 25.0  # noise std on the 0-255 scale (25/255 in [0, 1] pixels)
    c.clip_noisy = True  # clip the noisy target to the pixel range (the original does)
    c.input_channels = 32  # channels of the fixed input z (the original's input_depth)
    c.input_scale = 0.1  # z ~ U[0, 1) * input_scale (the original's 'noise' input, var 1/10)
    c.reg_noise_std = 1.0 / 30.0  # z + reg_noise_std * N(0, 1) at every step (0 = fixed z)
    c.exp_weight = 0.99  # output EMA: out_ema <- exp_weight * out_ema + (1 - exp_weight) * out
    # the skip net, one entry per scale (finest first): channels of the two strided/plain
    # down convs, of the up convs, and of the skip branch (0 = no skip at that scale)
    c.channels_down = (32, 32, 32)
    c.channels_up = (32, 32, 32)
    c.channels_skip = (4, 4, 4)
    c.kernel_down = 3  # kernel of the down convs
    c.kernel_up = 3  # kernel of the up conv (followed by a 1x1 conv when need1x1_up)
    c.kernel_skip = 1  # kernel of the skip branch's conv
    c.need1x1_up = True
    c.upsample = "bilinear"  # "bilinear" (the denoising notebook) or "nearest"
    c.pad = "reflect"  # "reflect" (the notebook's pad='reflection') or "zero"
    return c


# ------------------------------------------------------------------------------ settings


def parse_indices(value) -> list[int]:
    """ "0-7" / "3,5,9" / (0, 3) -> [ints] (`config.parse_index_list`; no range check)."""
    return parse_index_list(value, "config.dip.indices")


def indices(config: ml_collections.ConfigDict) -> list[int]:
    return parse_indices(config.dip.indices)


def _fail(name: str, value, why: str) -> UserError:
    return UserError(f"config.dip.{name}={value!r} {why}.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _scale_sizes(config: ml_collections.ConfigDict) -> list[int]:
    """Spatial size at the input of every scale and below the last (stride-2 convs)."""
    d = config.dip
    sizes = [int(config.data.image_size)]
    pad = d.kernel_down // 2
    for _ in d.channels_down:
        sizes.append((sizes[-1] + 2 * pad - d.kernel_down) // 2 + 1)
    return sizes


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise `UserError` naming the first bad DIP setting (and the shared ones DIP restricts)."""
    d = config.dip
    if d.split not in data.SPLITS:
        raise _fail("split", d.split, f"is not one of {data.SPLITS}")
    idx = indices(config)
    if not idx:
        raise _fail("indices", d.indices, "gives no image; give e.g. '0-7'")
    if len(set(idx)) != len(idx):
        raise _fail("indices", d.indices, "repeats an image; give each index once")
    size = data.dataset_info(config.data.dataset).split_sizes[d.split]
    if max(idx) >= size:
        raise _fail(
            "indices", d.indices, f"must lie in 0..{size - 1} ({config.data.dataset}/{d.split})"
        )
    ok = isinstance(d.noise_sigma, (int, float)) and 0 < d.noise_sigma <= 255
    if not ok:
        raise _fail("noise_sigma", d.noise_sigma, "must be in (0, 255] (the 0-255 scale)")
    for name in ("input_channels", "kernel_down", "kernel_up", "kernel_skip"):
        if not (_is_int(d[name]) and d[name] > 0):
            raise _fail(name, d[name], "must be a positive integer")
    for name in ("kernel_down", "kernel_up", "kernel_skip"):
        if d[name] % 2 == 0:
            raise _fail(name, d[name], "must be odd (same-size padding)")
    if not d.input_scale > 0:
        raise _fail("input_scale", d.input_scale, "must be > 0")
    if not d.reg_noise_std >= 0:
        raise _fail("reg_noise_std", d.reg_noise_std, "must be >= 0 (0 = a fixed input)")
    if not 0 <= d.exp_weight < 1:
        raise _fail("exp_weight", d.exp_weight, "must be in [0, 1) (0 = no output averaging)")
    down, up, skip = tuple(d.channels_down), tuple(d.channels_up), tuple(d.channels_skip)
    if not down or not len(down) == len(up) == len(skip):
        raise UserError(
            f"config.dip.channels_down={down}, channels_up={up} and channels_skip={skip} must "
            "have one entry per scale each (the same, non-zero number of entries)."
        )
    for name, values, low in (("channels_down", down, 1), ("channels_up", up, 1)):
        if not all(_is_int(v) and v >= low for v in values):
            raise _fail(name, values, "must be positive integers")
    if not all(_is_int(v) and v >= 0 for v in skip):
        raise _fail("channels_skip", skip, "must be integers >= 0 (0 = no skip)")
    if d.upsample not in ("bilinear", "nearest"):
        raise _fail("upsample", d.upsample, "is not one of ('bilinear', 'nearest')")
    if d.pad not in ("reflect", "zero"):
        raise _fail("pad", d.pad, "is not one of ('reflect', 'zero')")
    sizes = _scale_sizes(config)
    if min(sizes) < 2:
        raise _fail(
            "channels_down",
            down,
            f"has too many scales for {config.data.image_size} px images (sizes "
            f"{' -> '.join(map(str, sizes))}); every scale must keep at least 2x2 pixels",
        )
    if config.data.random_flip:
        raise UserError(
            "config.data.random_flip=True does nothing for DIP (it fits fixed images); set it "
            "to False."
        )
    if state_lib.num_shards(config) != 1:
        raise UserError(
            f"config.data.num_shards={config.data.num_shards}: DIP reads its images from one "
            "data shard; set config.data.num_shards=1 and run on one process."
        )


# --------------------------------------------------------------------------------- state


@flax.struct.dataclass
class DipState:
    """The method's state (see `methods.base`); every field is checkpointed."""

    step: jax.Array  # int32 scalar: optimizer updates done
    rng: jax.Array  # raw uint32[2]: step n's input perturbation from step_keys(rng, n)
    params: nnx.State  # K networks' parameters, stacked on a leading axis of size K
    opt_state: optax.OptState
    # {"outputs": float32 [K, H, W, C]}, model space: the output EMA (exp_weight); a dict since
    # each state field is checkpointed as an Orbax pytree item (a bare array is refused)
    out_ema: dict
    # what `report` (and --mode=sample) reads: clean, noisy (the targets), restored (= out_ema),
    # last (the newest output), best (the out_ema of highest PSNR to the clean image, an oracle
    # choice), best_psnr [K], best_step [K] (the iteration that reached it: 1-based, the step
    # the loop logs it at)
    ema_params: dict


def _keys(root: jax.Array, stream: int, idx: Sequence[int]) -> jax.Array:
    """Image i_j's key of a stream: fold_in(fold_in(root, stream), i_j), one row per image."""
    k = jax.random.fold_in(root, stream)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, jnp.asarray(idx, jnp.uint32))


def _root(config: ml_collections.ConfigDict) -> jax.Array:
    return jax.random.PRNGKey(config.seed)


def _shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    s = int(config.data.image_size)
    return s, s, int(config.data.channels)


def network_inputs(config: ml_collections.ConfigDict) -> jax.Array:
    """The fixed inputs z: float32 [K, H, W, input_channels], U[0, 1) * input_scale."""
    h, w, _ = _shape(config)
    keys = _keys(_root(config), INPUT_STREAM, indices(config))
    shape = (h, w, int(config.dip.input_channels))
    return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32))(keys) * (
        config.dip.input_scale
    )


def sigma_model(config: ml_collections.ConfigDict) -> float:
    """The target noise's std in model space [-1, 1]: 2 * noise_sigma / 255."""
    return 2.0 * float(config.dip.noise_sigma) / 255.0


def noisy_targets(config: ml_collections.ConfigDict, clean: jax.Array) -> jax.Array:
    """y = x + sigma n (model space), clipped to [-1, 1] when `clip_noisy`; n_j from image i_j's
    key alone."""
    keys = _keys(_root(config), NOISE_STREAM, indices(config))
    noise = jax.vmap(lambda k: jax.random.normal(k, clean.shape[1:], jnp.float32))(keys)
    y = clean + sigma_model(config) * noise
    return jnp.clip(y, -1.0, 1.0) if config.dip.clip_noisy else y


def data_split(config: ml_collections.ConfigDict) -> str:
    """The split the loop loads for DIP (`Method.data_split`): `config.dip.split`."""
    return str(config.dip.split)


def clean_images(config: ml_collections.ConfigDict, train_data: TrainData) -> jax.Array:
    """Images `config.dip.indices` of the (one-shard) split `config.dip.split` that the loop
    loaded, model space [K, H, W, C]."""
    split = data_split(config)
    if train_data.num_shards != 1:
        raise UserError(
            f"DIP reads its images from one data shard, but the {split} split came in "
            f"{train_data.num_shards} shards; set config.data.num_shards=1 (one process)."
        )
    idx = indices(config)
    if max(idx) >= train_data.shard_size:
        raise UserError(
            f"config.dip.indices={config.dip.indices!r}: the {split} split has "
            f"{train_data.shard_size} images (0..{train_data.shard_size - 1})."
        )
    return data.to_model_space(train_data.images[0, jnp.asarray(idx)])


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (PyTorch's defaults, the original's) at `config.train.lr` (with its warmup, if any).
    Clipping is done per network in `train_step`, not here (a global norm would couple them)."""
    return state_lib.adam(config, clip=False)


def _abstract_network(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
    net = nnx.eval_shape(lambda: SkipNet(config.dip, int(config.data.channels), nnx.Rngs(0)))
    return nnx.split(net, nnx.Param)


def graphdef_of(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    return _abstract_network(config)[0]


def init_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, DipState]:
    """(graphdef of one network, fresh state): K networks initialised from their images' keys."""
    graphdef, abstract = _abstract_network(config)
    root = _root(config)
    params = jax.vmap(lambda key: init_params(abstract, key))(
        _keys(root, NET_STREAM, indices(config))
    )
    k = len(indices(config))
    zeros = jnp.zeros((k, *_shape(config)), jnp.float32)
    state = DipState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.fold_in(root, TRAIN_STREAM),
        params=params,
        opt_state=build_optimizer(config).init(params),
        out_ema={"outputs": zeros},
        ema_params={
            "clean": zeros,
            "noisy": zeros,
            "restored": zeros,
            "last": zeros,
            "best": zeros,
            "best_psnr": jnp.full((k,), -1.0, jnp.float32),  # below any real PSNR (>= 0 dB)
            "best_step": jnp.zeros((k,), jnp.int32),
        },
    )
    return graphdef, state


def apply(graphdef: nnx.GraphDef, params: nnx.State, z: jax.Array) -> jax.Array:
    """Network j on input j: float32 [K, H, W, input_channels] -> model space [K, H, W, C]."""

    def one(p, zj):
        return nnx.merge(graphdef, p)(zj[None])[0]

    return 2.0 * jax.vmap(one)(params, z) - 1.0


def per_network_norms(tree) -> jax.Array:
    """float32 [K]: the global norm of each network's slice of a stacked pytree."""
    sq = [jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


def train_step(
    state: DipState,
    train_data: TrainData,
    *,
    config: ml_collections.ConfigDict,
    static: nnx.GraphDef,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[DipState, dict[str, jax.Array]]:
    """One Adam update of every network and the output EMA; metrics are means over images."""
    del batch_sharding  # no batch: every device fits the same K images (the state is replicated)
    d = config.dip
    step = state.step
    clean = clean_images(config, train_data)
    noisy = noisy_targets(config, clean)
    _, step_key = step_keys(state.rng, step)
    z = network_inputs(config)
    if d.reg_noise_std > 0:
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            step_key, jnp.asarray(indices(config), jnp.uint32)
        )
        perturb = jax.vmap(lambda k: jax.random.normal(k, z.shape[1:], jnp.float32))(keys)
        z = z + d.reg_noise_std * perturb

    def loss_fn(params):
        out = apply(static, params, z)
        mse = jnp.mean((out - noisy) ** 2, axis=(1, 2, 3)) / 4.0  # [0, 1] pixel units
        return jnp.sum(mse), (mse, out)  # the sum: network j's gradient is its own MSE's

    (_, (mse, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    norms = per_network_norms(grads)
    clip = config.train.grad_clip
    if clip > 0:
        scale = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-12))
        grads = jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
    updates, opt_state = build_optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    out = jax.lax.stop_gradient(out)
    w = jnp.float32(d.exp_weight)
    out_ema = jnp.where(step == 0, out, w * state.out_ema["outputs"] + (1.0 - w) * out)
    p_out, p_ema, p_noisy = psnr(out, clean), psnr(out_ema, clean), psnr(noisy, clean)
    e = state.ema_params
    better = p_ema > e["best_psnr"]
    pick = better[:, None, None, None]
    ema_params = {
        "clean": clean,
        "noisy": noisy,
        "restored": out_ema,
        "last": out,
        "best": jnp.where(pick, out_ema, e["best"]),
        "best_psnr": jnp.where(better, p_ema, e["best_psnr"]),
        "best_step": jnp.where(better, step + 1, e["best_step"]),
    }
    metrics = {
        "loss": jnp.mean(mse),
        "psnr_noisy": jnp.mean(p_noisy),
        "psnr": jnp.mean(p_out),
        "psnr_ema": jnp.mean(p_ema),
        "grad_norm": jnp.mean(norms),  # mean over images of each network's norm, before clipping
    }
    metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
    new_state = state.replace(
        step=step + 1,
        params=params,
        opt_state=opt_state,
        out_ema={"outputs": out_ema},
        ema_params=ema_params,
    )
    return new_state, metrics


def sampler(config: ml_collections.ConfigDict, static):
    raise UserError(
        "config.method='dip' does not generate images: Deep Image Prior restores the images "
        "config.dip.indices. --mode=sample writes its report (workdir/report/: restored "
        "images, figure, PSNR curve); FID and --mode=eval do not apply."
    )


# -------------------------------------------------------------------------------- report


def _host(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(parallel.process_allgather(v)) for k, v in tree.items()}


def psnr_curve(records: Sequence[dict], path: str, psnr_noisy: float | None = None) -> str | None:
    """PSNR against the step from metrics records: psnr (current output), psnr_ema (the output
    EMA) and the noisy input's level; the EMA's peak marked. None when no record has psnr."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = {}
    for key, label in (("psnr", "DIP output"), ("psnr_ema", "output EMA")):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            series[label] = tuple(zip(*pts, strict=True))
    if not series:
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    for (x, y), marker in zip(series.values(), ("C0*", "C1*"), strict=False):
        k = int(np.argmax(y))
        ax.plot([x[k]], [y[k]], marker, ms=10, label=f"peak {y[k]:.2f} dB at step {int(x[k])}")
    if psnr_noisy is not None:
        ax.axhline(psnr_noisy, color="grey", ls="--", label=f"noisy input {psnr_noisy:.2f} dB")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR to the clean image (dB, mean over images)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Deep Image Prior: PSNR over iterations", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    return path


def report(
    config: ml_collections.ConfigDict, workdir: str, ema_params: dict, step: int
) -> dict[str, str | float]:
    """`--mode=sample` for DIP: workdir/report/dip.npz (float32 model-space clean, noisy,
    restored (the output EMA), last, best (oracle) + per-image PSNRs; where the images come
    from: dataset, split, indices), dip.json, dip.png
    (clean | noisy | DIP output | best iterate, PSNR in the labels) and psnr.png (the PSNR
    curve from workdir/metrics.jsonl, when it exists)."""
    if int(step) < 1:
        raise UserError(f"{workdir}: DIP has not run a step yet; train first (--mode=train).")
    e = _host(ema_params)
    idx = indices(config)
    if e["clean"].shape[0] != len(idx):
        raise UserError(
            f"config.dip.indices={config.dip.indices!r} names {len(idx)} images but the "
            f"checkpoint holds {e['clean'].shape[0]}; use the config the run was trained with."
        )
    p = {k: psnr(e[k], e["clean"]) for k in ("noisy", "restored", "last", "best")}
    out_dir = os.path.join(workdir, REPORT_DIR)
    paths = {
        "npz": os.path.join(out_dir, "dip.npz"),
        "json": os.path.join(out_dir, "dip.json"),
        "figure": os.path.join(out_dir, "dip.png"),
    }
    summary = {
        "step": int(step),
        "dataset": config.data.dataset,
        "split": data_split(config),
        "indices": idx,
        "noise_sigma_255": float(config.dip.noise_sigma),
        "sigma_model": sigma_model(config),
        "psnr_db": {k: float(np.mean(v)) for k, v in p.items()},
        "psnr_db_per_image": {k: [float(x) for x in v] for k, v in p.items()},
        "best_step": [int(s) for s in e["best_step"]],
    }
    metrics_path = os.path.join(workdir, records_lib.METRICS_FILE)
    records = records_lib.read_metrics(metrics_path) if os.path.isfile(metrics_path) else []
    logged = [r for r in records if isinstance(r.get("psnr_ema"), (int, float))]
    if logged:
        peak = max(logged, key=lambda r: r["psnr_ema"])
        summary["logged_peak"] = {"step": int(peak["step"]), "psnr_ema_db": peak["psnr_ema"]}
    result: dict[str, str | float] = {
        "psnr_noisy": summary["psnr_db"]["noisy"],
        "psnr_restored": summary["psnr_db"]["restored"],
        "psnr_best": summary["psnr_db"]["best"],
    }
    if parallel.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        np.savez(
            paths["npz"],
            **{k: e[k] for k in ("clean", "noisy", "restored", "last", "best", "best_step")},
            indices=np.asarray(idx, np.int32),
            psnr_noisy=p["noisy"],
            psnr_restored=p["restored"],
            psnr_best=p["best"],
            sigma_model=np.float32(sigma_model(config)),
            step=np.int32(step),
            dataset=np.asarray(config.data.dataset),
            split=np.asarray(data_split(config)),
        )
        records_lib.write_json(paths["json"], summary, indent=1)
        rows = [
            f"#{i}: {a:.1f} -> {b:.1f} dB"
            for i, a, b in zip(idx, p["noisy"], p["restored"], strict=True)
        ]
        images.edit_figure(
            paths["figure"],
            [
                ("clean", pixels.quantize(e["clean"])),
                (
                    f"noisy σ={config.dip.noise_sigma:g}/255\n{np.mean(p['noisy']):.2f} dB",
                    pixels.quantize(e["noisy"]),
                ),
                (
                    f"DIP (output EMA)\n{np.mean(p['restored']):.2f} dB",
                    pixels.quantize(e["restored"]),
                ),
                (f"best iterate (oracle)\n{np.mean(p['best']):.2f} dB", pixels.quantize(e["best"])),
            ],  # fmt: skip
            row_labels=rows,
            title=f"Deep Image Prior, step {int(step)}",
        )
        curve = psnr_curve(records, os.path.join(out_dir, "psnr.png"), float(np.mean(p["noisy"])))
        if curve:
            paths["psnr_curve"] = curve
        logging.info("DIP report: %s", ", ".join(paths.values()))
    parallel.sync("dip_report_written")
    result.update(paths)
    return result


METHODS = {
    "dip": Method(
        name="dip",
        validate=validate,
        init_state=init_state,
        train_step=train_step,
        sampler=sampler,
        best_metric=None,
        generates=False,
        report=report,
        data_split=data_split,
    )
}
