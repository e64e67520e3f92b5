"""FID of a model, measured the standard way and recorded with how it was measured.

- `--mode=fid_stats`: reference statistics of a dataset split (all images; the train split
  unless `config.fid.ref_split` says otherwise), cached in a file that records dataset, split,
  count, protocol and network checksum. A file that disagrees is refused, never reused.
- `--mode=eval`: a checkpoint's EMA weights generate `config.fid.eval_samples` images in
  device-filling batches (streamed to the host, never all on the devices), their Inception
  statistics are accumulated batch by batch, and the FID against the reference is written to
  `workdir/eval/fid_<step>.json` with N, sampler, steps, protocol, checkpoint and wall time.
- `periodic_evaluator`: the same on `config.fid.num_samples` images every `config.fid.every`
  training steps, so training can keep its best checkpoint by FID.

`config.fid.protocol` is "tf" (the DDPM paper's and score_sde's protocol), "pytorch_fid", or
"both" (one generation pass, two FIDs).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import data, fid, parallel, sampling
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.fid import weights as fid_weights

EVAL_STREAM = 2  # `fold_in(PRNGKey(config.seed), EVAL_STREAM)` seeds --mode=eval samples
PERIODIC_STREAM = 3  # and the periodic FID during training (same images every time)
OUTPUT_DIR = "eval"


def protocols_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The protocols `config.fid.protocol` asks for."""
    name = config.fid.protocol
    if name == "both":
        return fid.PROTOCOLS
    if name not in fid.PROTOCOLS:
        raise UserError(
            f"config.fid.protocol={name!r}; choose one of {', '.join(fid.PROTOCOLS)} or 'both'."
        )
    return (name,)


def _fid_batch_size(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    n = parallel.num_devices(mesh)
    b = max(config.fid.batch_size, n)
    return b - b % n


def make_extractors(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, fid.FeatureExtractor]:
    """One Inception feature extractor per protocol, sharded over all devices, weights read once."""
    network = fid_weights.load_weights(config.fid.weights)
    sharding = parallel.batch_sharding(mesh)
    return {
        p: fid.FeatureExtractor(
            protocol=p,
            batch_size=_fid_batch_size(config, mesh),
            batch_sharding=sharding,
            weights=network,
        )
        for p in protocols_of(config)
    }


def reference_path(config: ml_collections.ConfigDict, protocol: str, network_sha256: str) -> Path:
    """`config.fid.ref_stats` (with `{protocol}` filled in), else a file in the user cache."""
    if config.fid.ref_stats:
        return Path(str(config.fid.ref_stats).format(protocol=protocol)).expanduser()
    name = f"{config.data.dataset}-{config.fid.ref_split}-{protocol}-{network_sha256[:12]}.npz"
    return fid_weights.cache_dir() / "fid_stats" / name


def _check_reference(stats: fid.FidStatistics, config: ml_collections.ConfigDict, path: Path):
    want = (config.data.dataset, config.fid.ref_split)
    if (stats.dataset, stats.split) != want:
        raise UserError(
            f"{path} holds statistics of {stats.dataset or '?'}/{stats.split or '?'}, but this run "
            f"compares against {want[0]}/{want[1]}. Point config.fid.ref_stats elsewhere or "
            "delete the file to recompute it (--mode=fid_stats)."
        )


def reference_statistics(
    config: ml_collections.ConfigDict,
    extractor: fid.FeatureExtractor,
    *,
    recompute: bool = False,
    progress: bool = True,
) -> tuple[fid.FidStatistics, Path]:
    """Cached reference statistics, computed from every image of the split when missing (or
    when `recompute`, which then replaces the file)."""
    path = reference_path(config, extractor.protocol, extractor.network_sha256)
    if path.is_file() and not recompute:
        stats = fid.load_statistics(
            path, expect_protocol=extractor.protocol, expect_network=extractor.network_sha256
        )
        _check_reference(stats, config, path)
        return stats, path
    split = data.load_split(
        config.data.dataset,
        config.fid.ref_split,
        data_dir=config.data.data_dir,
        image_size=config.data.image_size,
        channels=config.data.channels,
        progress=progress,
    )
    images = split.images.reshape(-1, *split.images.shape[2:])
    b = extractor.batch_size * 4
    batches = (images[i : i + b] for i in range(0, len(images), b))
    logging.info(
        "Reference statistics: %d %s/%s images, protocol %s.",
        len(images),
        config.data.dataset,
        config.fid.ref_split,
        extractor.protocol,
    )
    stats = fid.statistics_of(
        batches,
        extractor,
        progress=progress,
        total=len(images),
        dataset=config.data.dataset,
        split=config.fid.ref_split,
    )
    if parallel.is_main_process():
        fid.save_statistics(path, stats)
        logging.info("Wrote %s", path)
    parallel.sync("fid_reference_written")
    return stats, path


def sample_statistics(
    generator: sampling.Generator,
    params: nnx.State,
    num_samples: int,
    rng: jax.Array,
    extractors: dict[str, fid.FeatureExtractor],
    *,
    progress: bool = False,
) -> dict[str, fid.FidStatistics]:
    """Streams generated batches straight into each protocol's running statistics."""
    running = {
        p: fid.RunningStats(protocol=p, network_sha256=e.network_sha256)
        for p, e in extractors.items()
    }
    for batch in sampling.generate(generator, params, num_samples, rng, progress=progress):
        for p, e in extractors.items():
            running[p].update(e.features(batch.images))
    return {p: r.finalize(dataset="samples") for p, r in running.items()}


def _device_description() -> str:
    d = jax.devices()[0]
    processes = jax.process_count()
    return f"{jax.device_count()} x {d.device_kind} ({d.platform}), {processes} process(es)"


def _steps_of(config: ml_collections.ConfigDict) -> int:
    if config.sample.sampler == "ddpm":
        return int(config.diffusion.num_timesteps)
    return int(config.sample.num_steps)


def run_fid_stats(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
    """`--mode=fid_stats`: (re)computes the reference statistics of every configured protocol."""
    del workdir  # statistics live in the cache (or config.fid.ref_stats), shared across runs
    mesh = parallel.make_mesh()
    out = {}
    for protocol, extractor in make_extractors(config, mesh).items():
        stats, path = reference_statistics(
            config, extractor, recompute=True, progress=parallel.is_main_process()
        )
        out[protocol] = {"path": str(path), "count": stats.count}
        logging.info("%s reference (%s): %d images -> %s", config.data.dataset, protocol,
                     stats.count, path)  # fmt: skip
    return out


def run_eval(
    config: ml_collections.ConfigDict, workdir: str, *, checkpoint: str | None = None
) -> dict:
    """`--mode=eval`: FID of a checkpoint's EMA samples; writes and returns the JSON record."""
    started = time.perf_counter()
    n = int(config.fid.eval_samples)
    if n < 2:
        raise UserError(f"config.fid.eval_samples={n} must be >= 2 (50000 is the standard).")
    mesh = parallel.make_mesh()
    is_main = parallel.is_main_process()
    extractors = make_extractors(config, mesh)
    references = {
        p: reference_statistics(config, e, progress=is_main) for p, e in extractors.items()
    }
    graphdef = state_lib.graphdef_of(config)
    schedule = state_lib.build_schedule(config)
    params, step = sampling.load_ema_params(config, workdir, mesh, checkpoint)
    batch = sampling.batch_size_for(n, config.sample.batch_size, mesh)
    generator = sampling.make_generator(config, graphdef, schedule, mesh, batch_size=batch)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM)
    logging.info("FID: %d samples from step %d with %s (%d steps).", n, step,
                 config.sample.sampler, _steps_of(config))  # fmt: skip
    generation_started = time.perf_counter()
    stats = sample_statistics(generator, params, n, rng, extractors, progress=is_main)
    sample_wall = time.perf_counter() - generation_started

    record = {
        "fid": {p: fid.fid_from_statistics(stats[p], references[p][0]) for p in extractors},
        "num_samples": n,
        "checkpoint_step": int(step),
        "sampler": config.sample.sampler,
        "steps": _steps_of(config),
        "eta": float(config.sample.eta),
        "variance": config.sample.variance,
        "guidance": float(config.sample.guidance) if config.model.num_classes else None,
        "protocols": list(extractors),
        "reference": {
            p: {"path": str(path), "dataset": s.dataset, "split": s.split, "count": s.count}
            for p, (s, path) in references.items()
        },
        "network_sha256": next(iter(extractors.values())).network_sha256,
        "dataset": config.data.dataset,
        "sampling_and_features_wall_s": round(sample_wall, 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "device": _device_description(),
        "jax": jax.__version__,
    }
    if is_main:
        out_dir = Path(workdir) / OUTPUT_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"fid_{step}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        record["path"] = str(path)
        for p, value in record["fid"].items():
            logging.info("FID (%s, %d samples, step %d) = %.4f  -> %s", p, n, step, value, path)
    return record


EvaluateFn = Callable[[int, nnx.State], dict[str, float] | None]


def periodic_evaluator(
    config: ml_collections.ConfigDict, mesh: Mesh, graphdef: nnx.GraphDef, schedule
) -> EvaluateFn | None:
    """FID on `config.fid.num_samples` images, for training's `evaluate_fn` hook (None if off).

    Returns metrics named `fid` (the first protocol) and `fid_<protocol>` for each protocol.
    The same noise is used every time, so the curve shows the model changing, not the draw.
    """
    n = int(config.fid.num_samples)
    if not (n and config.fid.every):
        return None
    if n < 2:
        raise UserError(f"config.fid.num_samples={n} must be >= 2 (or 0 to turn it off).")
    extractors = make_extractors(config, mesh)
    references = {p: reference_statistics(config, e, progress=parallel.is_main_process())[0]
                  for p, e in extractors.items()}  # fmt: skip
    batch = sampling.batch_size_for(n, config.sample.batch_size, mesh)
    generator = sampling.make_generator(config, graphdef, schedule, mesh, batch_size=batch)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), PERIODIC_STREAM)
    first = next(iter(extractors))

    def evaluate(step: int, ema_params: nnx.State) -> dict[str, float]:
        del step
        stats = sample_statistics(generator, ema_params, n, rng, extractors)
        out = {f"fid_{p}": fid.fid_from_statistics(stats[p], references[p]) for p in extractors}
        out["fid"] = out[f"fid_{first}"]
        return out

    return evaluate
