"""Generating images: N samples in sharded batches streamed to the host, and `--mode=sample`.

A `Generator` is one compiled sampling function for a fixed global batch: the batch is split
over every device, every random draw of image `i` comes from its own key `fold_in(rng, i)`
(`samplers.image_keys`, i the global index), and class-conditional models get class-balanced
labels (`i % num_classes` for image `i`) with classifier-free guidance. Image i is therefore the
same for any batch size, device count or process count. `generate` runs it batch after batch and
hands each batch to the host (float32 -> uint8 with `pixels.quantize`, the one rounding rule), so N
never has to fit on the devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import (
    checkpoint,
    diffusion,
    images,
    methods,
    parallel,
    pretrained,
    samplers,
    writers,
)
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import quantize

SAMPLE_STREAM = 1  # `fold_in(PRNGKey(config.seed), SAMPLE_STREAM)` seeds --mode=sample
OUTPUT_DIR = "sample"


@dataclasses.dataclass(frozen=True)
class Generator:
    """`fn(params, rng, batch_index) -> (samples float32 [B, H, W, C], labels int32 [B] | None)`,
    compiled once, outputs sharded over the batch: images `batch_index * B ... + B - 1` of the
    stream `rng`."""

    fn: Callable[[nnx.State, jax.Array, jax.Array], tuple[jax.Array, jax.Array | None]]
    batch_size: int


def sample_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The key of `--mode=sample` (and the Python API's `sample`): split into the grid's
    images and the denoising chains."""
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_STREAM)


def batch_size_for(num_samples: int, max_batch: int, mesh: Mesh) -> int:
    """The smallest device-filling batch (a multiple of the device count) up to `max_batch`."""
    n = parallel.num_devices(mesh)
    needed = -(-num_samples // n) * n
    return max(n, min(max_batch - max_batch % n or n, needed))


def class_labels(start, batch_size: int, num_classes: int) -> jax.Array:
    """Class-balanced labels of samples start..start+batch_size-1: sample i gets i % classes."""
    return ((start + jnp.arange(batch_size)) % num_classes).astype(jnp.int32)


def make_generator(
    config: ml_collections.ConfigDict,
    static: Any,
    mesh: Mesh,
    *,
    batch_size: int,
    fast: bool = False,
    labels: np.ndarray | None = None,
) -> Generator:
    """One compiled sampler of `config.method` (DDPM: `config.sample`'s; `fast`: the method's
    cheaper preview sampler, DDIM for DDPM). `static` is the method's (DDPM: the graphdef).
    Conditional models draw image i of class `i % num_classes`, or of `labels[i]` when given
    (one label per image of the stream; the noise of image i is the same either way)."""
    parallel.check_divisible(batch_size, mesh, "the sampling batch size")
    method = methods.get(config)
    batch = parallel.batch_sharding(mesh)
    sample_fn = method.sampler(config, static, fast=fast, batch_sharding=batch)
    num_classes = method.num_classes(config)
    chosen = None
    if labels is not None and num_classes:
        chosen = np.asarray(labels, np.int32).reshape(-1)
        chosen = np.pad(chosen, (0, -len(chosen) % batch_size))  # whole batches

    def fn(params, rng, batch_index):
        labels = None
        if chosen is not None:
            start = batch_index * batch_size
            labels = jax.lax.dynamic_slice(jnp.asarray(chosen), (start,), (batch_size,))
            labels = jax.lax.with_sharding_constraint(labels, batch)
        elif num_classes:
            labels = class_labels(batch_index * batch_size, batch_size, num_classes)
            labels = jax.lax.with_sharding_constraint(labels, batch)
        keys = samplers.image_keys(rng, batch_size, start=batch_index * batch_size)
        keys = jax.lax.with_sharding_constraint(keys, batch)
        return sample_fn(params, keys, labels), labels

    return Generator(jax.jit(fn, out_shardings=batch), batch_size)


@dataclasses.dataclass(frozen=True)
class Batch:
    images: np.ndarray  # uint8 [n, H, W, C]
    labels: np.ndarray | None  # int32 [n] for class-conditional models
    start: int  # index of images[0] among all generated samples


def generate(
    generator: Generator,
    params: nnx.State,
    num_samples: int,
    rng: jax.Array,
    *,
    gather: bool = True,
    progress: bool = False,
) -> Iterator[Batch]:
    """Yields the `num_samples` images batch by batch, quantized on the host.

    `gather=True`: every process receives every image (what a writer or FID needs); otherwise
    each process gets only the rows its devices computed. The next batch is dispatched before
    the current one is fetched, so the devices stay busy while the host copies.
    """
    b = generator.batch_size
    num_batches = -(-num_samples // b)
    bar = writers.progress_bar(num_samples, desc="sample", unit="img", enabled=progress)
    pending = generator.fn(params, rng, jnp.int32(0)) if num_batches else None
    for k in range(num_batches):
        samples, labels = pending
        if k + 1 < num_batches:
            pending = generator.fn(params, rng, jnp.int32(k + 1))
        take = min(b, num_samples - k * b)
        if gather:
            x, y, offset = parallel.process_allgather(samples), labels, 0
            y = None if labels is None else parallel.process_allgather(labels)
        else:
            x = parallel.local_rows(samples)
            y = None if labels is None else parallel.local_rows(labels)
            offset = jax.process_index() * x.shape[0]
        keep = max(0, min(x.shape[0], take - offset))
        bar.update(take)
        yield Batch(quantize(x[:keep]), None if y is None else y[:keep], k * b + offset)
    bar.close()


def generate_all(
    generator: Generator, params: nnx.State, num_samples: int, rng: jax.Array, **kwargs
) -> tuple[np.ndarray, np.ndarray | None]:
    """All images (uint8 [N, H, W, C]) and labels on every process."""
    batches = list(generate(generator, params, num_samples, rng, gather=True, **kwargs))
    x = np.concatenate([bt.images for bt in batches])
    y = None if batches[0].labels is None else np.concatenate([bt.labels for bt in batches])
    return x, y


def denoising_process(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    schedule: diffusion.Schedule,
    rng: jax.Array,
    mesh: Mesh,
    *,
    num_rows: int = 8,
) -> samplers.SampleOutput:
    """A few chains with x_t and the x_0 prediction recorded at `config.sample.record_steps`.

    Small enough to run replicated; arrays are uint8 on the host.
    """
    record = state_lib.record_steps(config)
    shape = (num_rows, config.data.image_size, config.data.image_size, config.data.channels)
    settings = state_lib.sample_settings(config)

    def fn(params, rng):
        labels = None
        if config.model.num_classes:
            labels = class_labels(0, num_rows, config.model.num_classes)
        denoise = state_lib.denoise_fn_for(config, graphdef, params, schedule, labels)
        return samplers.sample(denoise, schedule, shape, rng, record_steps=record, **settings)

    out = jax.jit(fn, out_shardings=parallel.replicated(mesh))(params, rng)
    host = jax.tree.map(parallel.process_allgather, out)
    return samplers.SampleOutput(
        samples=quantize(host.samples),
        trajectory=quantize(np.clip(host.trajectory, -1.0, 1.0)),
        x0_predictions=quantize(host.x0_predictions),
        timesteps=host.timesteps,
    )


def load_ema_params(
    config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, which: str | int | None = None
) -> tuple[nnx.State, int]:
    """EMA parameters (what the method's sampler takes) of the latest checkpoint, of step
    `which`, of the best one ("best"), or of a pretrained model ("pretrained:NAME_OR_FOLDER",
    `diffusion_jax.pretrained`; `workdir` is then only where outputs go)."""
    best = which == "best"
    step = None
    if isinstance(which, str) and which.startswith(pretrained.PREFIX):
        folder = pretrained.resolve(which[len(pretrained.PREFIX) :])
        _, abstract_state = methods.abstract_state(config, parallel.replicated(mesh))
        expected = checkpoint.make_meta(config, abstract_state.params)
        return pretrained.load_ema(folder, abstract_state.ema_params, expected)
    if which not in (None, "", "latest", "best"):
        try:
            step = int(which)
        except ValueError:
            raise UserError(
                f"--checkpoint={which!r}: give a step number, 'latest' or 'best'."
            ) from None
    _, abstract_state = methods.abstract_state(config, parallel.replicated(mesh))
    expected = checkpoint.make_meta(config, abstract_state.params)
    ckpts = checkpoint.Checkpoints(workdir, read_only=True, state=abstract_state)
    try:
        return ckpts.restore_ema(abstract_state.ema_params, expected, step, best=best)
    finally:
        ckpts.close()


def meta_of(workdir: str, which: str | int | None, step: int) -> dict[str, Any]:
    """The meta (training config, shapes, clock) of the weights `load_ema_params(config,
    workdir, mesh, which)` gave for `step`: the checkpoint's, or a "pretrained:" model's."""
    if isinstance(which, str) and which.startswith(pretrained.PREFIX):
        return pretrained.read_model(pretrained.resolve(which[len(pretrained.PREFIX) :]))["meta"]
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        return ckpts.read_meta(step, best=which == "best")
    finally:
        ckpts.close()


def training_of(workdir: str, which: str | int | None, step: int) -> dict[str, Any]:
    """How the weights of checkpoint `step` (or of a "pretrained:" model) were trained: steps,
    images seen and the training clock over every resume (wall and CPU seconds; absent for
    checkpoints written before the clock was kept). For eval and quality records."""
    meta = meta_of(workdir, which, step)
    batch = (meta.get("config") or {}).get("train", {}).get("batch_size")
    clock = meta.get(checkpoint.TRAIN_CLOCK) or {}
    out: dict[str, Any] = {"train_steps": int(step)}
    if batch:
        out["images_seen"] = int(step) * int(batch)
    if "wall_s" in clock:
        out["train_wall_s"] = float(clock["wall_s"])
    if "cpu_s" in clock:
        out["train_cpu_s"] = float(clock["cpu_s"])
    return out


def export(
    config: ml_collections.ConfigDict, workdir: str, out_dir: str, which: str | None = None
) -> str:
    """`--mode=export`: a checkpoint's EMA parameters as a pretrained model folder (see
    `diffusion_jax.pretrained`), with the checkpoint's meta and the FID records of that step.
    The folder's sampling defaults (`config.sample`: sampler, steps, guidance) are this
    command's, so an export can ship the setting its FID was measured with."""
    mesh = parallel.make_mesh()
    params, step = load_ema_params(config, workdir, mesh, which)
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        meta = ckpts.read_meta(step, best=which == "best")
    finally:
        ckpts.close()
    sample = json.loads(config.sample.to_json_best_effort())
    meta = {**meta, "config": {**meta.get("config", {}), "sample": sample}}
    records = {}  # the FID records of this step (eval/*.json, quality.json), kept beside it
    root = Path(workdir)
    for path in sorted([*root.glob("eval/*.json"), root / "quality.json"]):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            record = json.loads(path.read_text())
            if int(record.get("checkpoint_step", -1)) == step:
                records[str(path.relative_to(root))] = record
    folder = pretrained.export(
        params, meta, step, out_dir, workdir=os.path.abspath(workdir),
        checkpoint=which or "latest", records=records,
    )  # fmt: skip
    logging.info("Exported the EMA parameters of step %d to %s.", step, folder)
    return str(folder)


def run(config: ml_collections.ConfigDict, workdir: str, *, checkpoint: str | None = None) -> dict:
    """`--mode=sample`: EMA samples of a trained run into `workdir/sample/`.

    Writes `samples.npz` (`images` uint8 [N, H, W, C], plus `labels` for conditional models),
    `grid.png` (the first 64) and, for DDPM, `denoising.png` (x_t and predicted x_0 along a
    few chains). A method that does not generate (the denoiser, DIP) writes its report instead.
    """
    methods.validate_config(config)
    method = methods.get(config)
    mesh = parallel.make_mesh()
    if not method.generates:
        static, _ = methods.abstract_state(config)
        params, step = load_ema_params(config, workdir, mesh, checkpoint)
        logging.info("Report of %s from step %d.", method.name, step)
        out = method.report(config, workdir, params, step)
        parallel.sync("report_written")
        return out
    n = config.sample.num_samples
    if n < 1:
        raise UserError(f"config.sample.num_samples={n} must be >= 1 for --mode=sample.")
    parallel.check_divisible(config.sample.batch_size, mesh, "config.sample.batch_size")
    static, _ = methods.abstract_state(config)
    params, step = load_ema_params(config, workdir, mesh, checkpoint)
    logging.info("Sampling %d images from the EMA parameters of step %d.", n, step)

    grid_key, chain_key = jax.random.split(sample_key(config))
    batch = batch_size_for(n, config.sample.batch_size, mesh)
    generator = make_generator(config, static, mesh, batch_size=batch)
    is_main = parallel.is_main_process()
    x, y = generate_all(generator, params, n, grid_key, progress=is_main)
    chains = None
    if method.name == "ddpm":
        schedule = state_lib.build_schedule(config)
        chains = denoising_process(config, static, params, schedule, chain_key, mesh)

    out_dir = os.path.join(workdir, OUTPUT_DIR)
    paths = {
        "samples": os.path.join(out_dir, "samples.npz"),
        "grid": os.path.join(out_dir, "grid.png"),
    }
    if chains is not None:
        paths["denoising"] = os.path.join(out_dir, "denoising.png")
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        arrays = {"images": x} if y is None else {"images": x, "labels": y}
        images.save_npz(paths["samples"], **arrays)
        images.save_grid(paths["grid"], x)
        if chains is not None:
            images.denoising_figure(
                paths["denoising"],
                chains.trajectory,
                [int(t) for t in chains.timesteps],
                chains.x0_predictions,
            )
        logging.info("Wrote %s", ", ".join(paths.values()))
    parallel.sync("sample_written")
    return paths
