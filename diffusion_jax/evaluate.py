"""FID of a model, measured the standard way and recorded with how it was measured.

- `--mode=fid_stats`: reference statistics of a dataset split (all images; the train split
  unless `config.fid.ref_split` says otherwise), cached in a file that records dataset, split,
  count, protocol and network checksum. A file that disagrees is refused, never reused.
- `--mode=eval`: a checkpoint's EMA weights generate `config.fid.eval_samples` images in
  device-filling batches (streamed to the host, never all on the devices), their Inception
  statistics are accumulated batch by batch, and the FID against the reference is written to
  `workdir/eval/fid_<step>.json` with N, sampler, steps, protocol, checkpoint and wall time.
- `Evaluator.periodic`: the same on `config.fid.num_samples` images every `config.fid.every`
  training steps, so training can keep its best checkpoint by FID.
- `Evaluator`: extractors, reference statistics and compiled generators, built once and shared
  by the periodic FID, the final eval of the quality run and the watcher (`diffusion_jax.watch`).

Every record says which images it measured: images 0..N-1 (`image_indices`) of the key
`fold_in(PRNGKey(seed), sample_stream)`.

`config.fid.protocol` is "tf" (TTUR's TF1 pipeline: TF1 bilinear resize, x/128 - 1; not
score_sde's TF-GAN one), "pytorch_fid", or "both" (one generation pass, two FIDs).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import data, fid, images, methods, parallel, samplers, sampling, writers
from diffusion_jax.errors import UserError
from diffusion_jax.fid import weights as fid_weights
from diffusion_jax.version import __version__

GRID_IMAGES = 64  # --mode=eval writes eval/samples_<step>.png: the first 64 scored images
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
    pixels = split.images.reshape(-1, *split.images.shape[2:])
    b = extractor.batch_size * 4
    batches = (pixels[i : i + b] for i in range(0, len(pixels), b))
    logging.info(
        "Reference statistics: %d %s/%s images, protocol %s.",
        len(pixels),
        config.data.dataset,
        config.fid.ref_split,
        extractor.protocol,
    )
    stats = fid.statistics_of(
        batches,
        extractor,
        progress=progress,
        total=len(pixels),
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
    first: list[np.ndarray] | None = None,
) -> dict[str, fid.FidStatistics]:
    """Streams generated batches straight into each protocol's running statistics. With
    `first`, the first `GRID_IMAGES` images (images 0..63 of the stream) are appended to it."""
    running = {
        p: fid.RunningStats(protocol=p, network_sha256=e.network_sha256)
        for p, e in extractors.items()
    }
    for batch in sampling.generate(generator, params, num_samples, rng, progress=progress):
        if first is not None and batch.start < GRID_IMAGES:
            first.append(np.asarray(batch.images[: GRID_IMAGES - batch.start]))
        for p, e in extractors.items():
            running[p].update(e.features(batch.images))
    return {p: r.finalize(dataset="samples") for p, r in running.items()}


def _device_description() -> str:
    d = jax.devices()[0]
    processes = jax.process_count()
    return f"{jax.device_count()} x {d.device_kind} ({d.platform}), {processes} process(es)"


def _sampler_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """How DDPM's samples were drawn (sampler, steps, noise, spacing, guidance)."""
    s = config.sample
    return {
        "sampler": s.sampler,
        "steps": _steps_of(config),
        "eta": float(s.eta),
        "variance": s.variance,
        "spacing": samplers.default_spacing(s.sampler) if s.spacing == "auto" else s.spacing,
        "guidance": float(s.guidance) if config.model.num_classes else None,
    }


DDPM_ONLY_FIELDS = (
    "sampler", "steps", "eta", "variance", "spacing", "guidance", "schedule", "num_timesteps",
    "prediction",
)  # fmt: skip


def _model_record(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
    """The generating network's architecture settings (what its size follows from)."""
    if method != "ddpm":
        settings = config.get(method)
        return {"arch": method, **(settings.to_dict() if settings is not None else {})}
    m = config.model
    if m.arch == "course":
        keys = ("arch", "course_hidden", "course_groups", "num_classes", "dtype")
    else:
        keys = (
            "arch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
            "num_groups", "time_emb_dim", "num_classes", "dtype", "attention",
        )  # fmt: skip
    return {k: (list(m[k]) if isinstance(m[k], tuple) else m[k]) for k in keys}


def run_description(
    config: ml_collections.ConfigDict, params: Any, config_file: str | None = None
) -> dict[str, Any]:
    """What a record needs to be compared with another without the command that made it:
    config file, method, dataset, the generating network (architecture and parameter count of
    the EMA weights that were sampled), batch size and, for DDPM, schedule, T, prediction and
    sampler with its steps. The DDPM-only fields are None for the other methods."""
    method = config.get("method", "ddpm")
    ddpm = method == "ddpm"
    num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
    out: dict[str, Any] = {
        "config_file": config_file,
        "method": method,
        "dataset": config.data.dataset,
        "image_size": int(config.data.image_size),
        "channels": int(config.data.channels),
        "num_params": num_params,
        "model": {**_model_record(config, method), "num_params": num_params},
        "batch_size": int(config.train.batch_size),
        "diffusion_jax_version": __version__,
        **dict.fromkeys(DDPM_ONLY_FIELDS),
    }
    if ddpm:
        d = config.diffusion
        out.update(
            schedule=d.schedule,
            num_timesteps=int(d.num_timesteps),
            prediction=d.prediction,
            **_sampler_record(config),
        )
    return out


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


def stream_key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
    """`fold_in(PRNGKey(config.seed), stream)`: the key whose images 0..N-1 an FID uses."""
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)


EvaluateFn = Callable[[int, nnx.State], dict[str, float] | None]


@dataclasses.dataclass
class Evaluator:
    """What FID needs that no checkpoint changes, built once and reused for every evaluation:
    the Inception extractors (one per protocol, weights read once), the reference statistics,
    and the compiled generators (one per sampling batch size, made on first use).

    The periodic FID during training (`periodic`), `--mode=eval` (`run_eval`), the quality run
    and the watcher (`diffusion_jax.watch`) all evaluate through one of these.
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    static: Any  # the method's (DDPM: the model's graphdef)
    extractors: dict[str, fid.FeatureExtractor]
    references: dict[str, tuple[fid.FidStatistics, Path]]
    config_file: str | None = None  # the --config file, recorded in every record
    _generators: dict[int, sampling.Generator] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: ml_collections.ConfigDict,
        mesh: Mesh | None = None,
        static: Any = None,
        *,
        config_file: str | None = None,
    ) -> Evaluator:
        """Reads the Inception weights and the reference statistics (computing them when
        missing: every image of the reference split, slow on a CPU)."""
        mesh = parallel.make_mesh() if mesh is None else mesh
        if not methods.get(config).generates:
            raise UserError(
                f"config.method={config.method!r} does not generate images: FID does not apply "
                "(--mode=sample writes its report)."
            )
        static = methods.abstract_state(config)[0] if static is None else static
        extractors = make_extractors(config, mesh)
        is_main = parallel.is_main_process()
        references = {
            p: reference_statistics(config, e, progress=is_main) for p, e in extractors.items()
        }
        logging.info(
            "FID evaluator ready: protocols %s, references %s.",
            ", ".join(extractors),
            ", ".join(f"{s.count} {s.dataset}/{s.split}" for s, _ in references.values()),
        )
        return cls(config, mesh, static, extractors, references, config_file=config_file)

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.extractors)

    def generator(self, num_samples: int) -> sampling.Generator:
        """The generator for `num_samples` images; one per batch size, so FIDs of sizes that
        give the same device-filling batch share one compiled sampler."""
        batch = sampling.batch_size_for(num_samples, self.config.sample.batch_size, self.mesh)
        if batch not in self._generators:
            self._generators[batch] = sampling.make_generator(
                self.config, self.static, self.mesh, batch_size=batch
            )
        return self._generators[batch]

    def fid(
        self,
        params: nnx.State,
        num_samples: int,
        stream: int,
        *,
        progress: bool = False,
        first: list[np.ndarray] | None = None,
    ) -> dict[str, float]:
        """{protocol: FID} of images 0..num_samples-1 of sampling stream `stream` (with
        `first`: the first `GRID_IMAGES` of them appended to it)."""
        stats = sample_statistics(
            self.generator(num_samples),
            params,
            num_samples,
            stream_key(self.config, stream),
            self.extractors,
            progress=progress,
            first=first,
        )
        return {p: fid.fid_from_statistics(stats[p], self.references[p][0]) for p in stats}

    def record(
        self, params: nnx.State, step: int, *, num_samples: int | None = None,
        progress: bool = False, first: list[np.ndarray] | None = None,
    ) -> dict:  # fmt: skip
        """The `--mode=eval` record of EMA `params` (of checkpoint `step`): FID of images
        0..N-1 of `EVAL_STREAM` (N = `config.fid.eval_samples`) and how it was measured
        (`first`: gets the first `GRID_IMAGES` scored images)."""
        config = self.config
        n = int(config.fid.eval_samples if num_samples is None else num_samples)
        if n < 2:
            raise UserError(f"config.fid.eval_samples={n} must be >= 2 (50000 is the standard).")
        method = config.get("method", "ddpm")
        logging.info("FID: %d samples of %s from step %d.", n, method, step)
        started = time.perf_counter()
        fids = self.fid(params, n, EVAL_STREAM, progress=progress, first=first)
        return {
            "fid": fids,
            "num_samples": n,
            "checkpoint_step": int(step),
            **run_description(config, params, self.config_file),
            "seed": int(config.seed),
            "sample_stream": EVAL_STREAM,
            "image_indices": [0, n],  # images i in [0, n) of fold_in(PRNGKey(seed), stream)
            "protocols": list(self.protocols),
            "reference": {
                p: {"path": str(path), "dataset": s.dataset, "split": s.split, "count": s.count}
                for p, (s, path) in self.references.items()
            },
            "network_sha256": next(iter(self.extractors.values())).network_sha256,
            "sampling_and_features_wall_s": round(time.perf_counter() - started, 2),
            "device": _device_description(),
            "jax": jax.__version__,
        }

    def periodic(self) -> EvaluateFn | None:
        """FID on `config.fid.num_samples` images, for training's `evaluate_fn` hook (None if
        off): metrics `fid` (the first protocol) and `fid_<protocol>` for each protocol. Images
        0..N-1 of `PERIODIC_STREAM` every time, so the curve shows the model changing, not the
        draw."""
        n = _periodic_samples(self.config)
        if not n:
            return None
        first = self.protocols[0]

        def evaluate(step: int, ema_params: nnx.State) -> dict[str, float]:
            del step
            fids = self.fid(ema_params, n, PERIODIC_STREAM)
            out = {f"fid_{p}": v for p, v in fids.items()}
            out["fid"] = out[f"fid_{first}"]
            return out

        return evaluate


def _periodic_samples(config: ml_collections.ConfigDict) -> int:
    """`config.fid.num_samples` when periodic FID is on, else 0."""
    n = int(config.fid.num_samples)
    if not (n and config.fid.every):
        return 0
    if n < 2:
        raise UserError(f"config.fid.num_samples={n} must be >= 2 (or 0 to turn it off).")
    return n


def record_path(workdir: str, step: int) -> Path:
    """`workdir/eval/fid_<step>.json`: where the record of checkpoint `step` goes."""
    return Path(workdir) / OUTPUT_DIR / f"fid_{step}.json"


def write_record(workdir: str, record: dict) -> Path:
    """Writes `record` to `record_path` atomically."""
    return writers.write_json(record_path(workdir, record["checkpoint_step"]), record)


def run_eval(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint: str | None = None,
    evaluator: Evaluator | None = None,
    config_file: str | None = None,
) -> dict:
    """`--mode=eval`: FID of a checkpoint's EMA samples; writes and returns the JSON record.

    The checkpoint is read first, so a workdir without a usable one fails at once, before any
    Inception work. Pass `evaluator` to reuse extractors, references and generators.
    """
    started = time.perf_counter()
    n = int(config.fid.eval_samples)
    if n < 2:
        raise UserError(f"config.fid.eval_samples={n} must be >= 2 (50000 is the standard).")
    mesh = parallel.make_mesh() if evaluator is None else evaluator.mesh
    is_main = parallel.is_main_process()
    params, step = sampling.load_ema_params(config, workdir, mesh, checkpoint)
    if evaluator is None:
        evaluator = Evaluator.create(config, mesh, config_file=config_file)
    first: list[np.ndarray] = []
    record = evaluator.record(params, step, num_samples=n, progress=is_main, first=first)
    record.update(sampling.training_of(workdir, checkpoint, step))
    record["wall_s"] = round(time.perf_counter() - started, 2)
    if is_main:
        grid_path = Path(workdir) / OUTPUT_DIR / f"samples_{step}.png"
        images.save_png(str(grid_path), images.grid(np.concatenate(first)))
        record["samples_grid"] = str(grid_path)  # the first GRID_IMAGES scored images
        path = write_record(workdir, record)
        record["path"] = str(path)
        for p, value in record["fid"].items():
            logging.info("FID (%s, %d samples, step %d) = %.4f  -> %s", p, n, step, value, path)
    return record


def periodic_evaluator(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    static: Any,
) -> EvaluateFn | None:
    """`Evaluator.periodic` of a new Evaluator (None, and nothing built, when periodic FID is
    off). Training calls this when it is not handed an `evaluate_fn`."""
    if not _periodic_samples(config):
        return None
    return Evaluator.create(config, mesh, static).periodic()
