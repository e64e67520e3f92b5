"""What a method (DDPM, GAN, VAE, ...) gives the shared training loop, sampler and FID.

A method is a `Method`: a handful of pure functions of the config. Everything else is shared
and method-agnostic: the data pipeline (`diffusion_jax.batches`), the loop (`train.py`: resume,
checkpoints, metrics, signals, time budget, periodic FID, multi-host), checkpoints, writers,
the generator and FID (`sampling.py`, `evaluate.py`) and the launch scripts.

The state contract. A method's state is a `flax.struct.dataclass` with at least

    step: int32 scalar         optimizer updates done (the loop's step counter)
    rng: raw uint32[2] key     root of every random draw of training: step n uses
                               fold_in(fold_in(rng, STEP_STREAM), n), the batch order
                               fold_in(rng, DATA_STREAM), so a resumed run repeats the same draws
    params: pytree             what the optimizers train (e.g. {"generator": G, "discriminator": D})
    ema_params: pytree         everything the method's sampler needs to make images: the EMA
                               weights, and e.g. BatchNorm statistics. `--mode=sample|eval`,
                               periodic FID and the watcher read this item alone.
    opt_state: pytree          the optimizer state(s)

Any further field (e.g. `model_state` with BatchNorm running statistics) is checkpointed as an
Orbax item of its own name and restored bit-exactly, like the others.

The train step is pure and jit-able: `train_step(state, train_data, *, config, static,
batch_sharding) -> (new_state, metrics)`, where metrics is a dict of float32 scalars. The loop
compiles `steps_per_call` of them into one call (`lax.scan`), replicates the state, shards the
batch, donates the state's buffers, gathers the metrics into a `clu.metrics.Collection` inside
that call (`diffusion_jax.metrics`; methods stay free of CLU), logs every metric (window mean;
`lr` and names ending in `grad_norm`: the last value; `loss` also as `loss_std`) and stops with
`TrainingDivergedError` when any metric is not finite at any step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion_jax.batches import TrainData

DATA_STREAM, STEP_STREAM = 0, 1  # fold_in(state.rng, stream): data order / per-step draws
REPORT_DIR = "report"  # workdir/report: what a method's `report` writes (--mode=sample)

# sample_fn(ema_params, keys, labels) -> float32 images [B, H, W, C] in [-1, 1].
# keys: uint32 [B, 2], image i's own key (`samplers.image_keys`): every random draw of image i
# comes from keys[i] alone (e.g. a GAN's z_i = normal(fold_in(keys[i], 0))), so images do not
# depend on the batch size or the devices. labels: int32 [B] (class i % num_classes) or None.
SampleFn = Callable[[Any, jax.Array, jax.Array | None], jax.Array]

# train_step(state, train_data, *, config, static, batch_sharding) -> (state, {name: f32 scalar})
TrainStep = Callable[..., tuple[Any, dict[str, jax.Array]]]


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(data_key, step_key) of `step`: the batch order's key and this step's draws' key."""
    data_key = jax.random.fold_in(rng, DATA_STREAM)
    step_key = jax.random.fold_in(jax.random.fold_in(rng, STEP_STREAM), step)
    return data_key, step_key


def _no_classes(config: ml_collections.ConfigDict) -> int:
    return 0


def _train_split(config: ml_collections.ConfigDict) -> str:
    return "train"


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: its state, its compiled train step, its sampler and its settings.

    `static` is whatever the method's pure functions need besides arrays (usually NNX graphdefs);
    `init_state` returns it with the state and must build the same structure on every call.
    """

    name: str
    # Raise `UserError` naming the first bad method-specific setting. The loop's shared
    # settings (seed, data, train intervals, fid) are checked by `state.validate_common`.
    validate: Callable[[ml_collections.ConfigDict], None]
    # (static, fresh state) from the config alone; pure and jit-able (the loop compiles it with
    # the state's sharding as output layout, and traces it with `jax.eval_shape` for restores).
    init_state: Callable[[ml_collections.ConfigDict], tuple[Any, Any]]
    train_step: TrainStep
    # sampler(config, static, *, fast=False, batch_sharding=None) -> SampleFn. fast: a cheaper
    # sampler for training previews where the method has one (DDPM: DDIM); batch_sharding:
    # the sharding of the batch axis, for methods that loop (keep it on the loop's carry).
    sampler: Callable[..., SampleFn]
    # > 0: the sampler takes class labels (image i gets class i % num_classes)
    num_classes: Callable[[ml_collections.ConfigDict], int] = _no_classes
    # the split of config.data.dataset the loop puts on the devices (`TrainData`) for
    # `train_step`: "train" for the generative methods; DIP fits its K images with no training
    # set, from the split config.dip.split. Also what `--mode=dip_prior` asks of a DDPM run: the
    # images it was trained on.
    data_split: Callable[[ml_collections.ConfigDict], str] = _train_split
    # (config, mesh, static) -> fn(ema_params) -> per-example held-out losses (host array):
    # the loop logs their mean, "heldout_loss" (lower is better), and spread at every
    # checkpoint (`metrics.heldout_scalars`); None: the method has none.
    heldout: Callable[..., Callable[[Any], np.ndarray] | None] | None = None
    # the metric that picks workdir/best when config.train.best_metric == "auto" and no
    # periodic FID runs (None: keep no best checkpoint without FID)
    best_metric: str | None = "loss"
    # True: the method makes images (periodic FID, --mode=eval and --mode=sample apply)
    generates: bool = True
    # report(config, workdir, ema_params, step) -> {name: path or number}: what `--mode=sample`
    # does for a method that does not generate (e.g. the denoiser's PSNR per noise level and
    # its figure, DIP's restored images); runs on every process, writes on process 0 only.
    report: Callable[..., dict] | None = None


__all__ = [
    "DATA_STREAM",
    "STEP_STREAM",
    "Method",
    "SampleFn",
    "TrainData",
    "TrainStep",
    "step_keys",
]
