"""Our code paths, timed as they run in training, sampling and evaluation.

- train: `train.make_train_call` (batch selection, flips, noise, loss, grads, clip, Adam, EMA)
  on a device-resident synthetic uint8 `TrainData` of the real dataset's size, so the
  per-step permutation costs what it costs in a real run; no TFDS needed.
- sample: `sampling.make_generator` for `config.sample` settings (one compiled chain), for
  DDPM, DDIM and each DPM-Solver++ (`SOLVERS`).
- fid: `fid.FeatureExtractor.features` on uint8 images (strict float32, `Precision.HIGHEST`).

Every row: compile and warm up first (excluded), then `repeats` timed repeats, each ended by
`jax.block_until_ready`; the median is reported. A row may then be traced (`profile`: a callable
that gets the timed row and returns a trace directory, or None for no trace): a few steps under
`jax.profiler.trace`, summarised into the top ops (`benchmarks.profile_summary`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from benchmarks import flops, hardware, profile_summary
from benchmarks.results import Row, time_repeats
from diffusion_jax import parallel, samplers, sampling, train
from diffusion_jax import state as state_lib


def _arithmetic(dtype: str) -> str:
    return "bfloat16" if dtype == "bfloat16" else "float32"


def _peak(mesh: Mesh, arithmetic: str) -> float | None:
    peak = hardware.peak_tflops(mesh.devices.flat[0].device_kind, arithmetic)
    return None if peak is None else peak * parallel.num_devices(mesh)


def _device(mesh: Mesh) -> str:
    return f"{parallel.num_devices(mesh)} x {mesh.devices.flat[0].device_kind}"


Profile = Callable[[Row], str | None]


def _trace(row: Row, profile: Profile | None, run: Callable[[], object]) -> None:
    """Traces `run()` into `profile(row)` (when that is a directory) and summarises the trace.
    The row is timed already: a profiler that fails (no CUPTI, an unreadable trace) is recorded
    in `row.extra["profile_error"]` and keeps the row."""
    trace_dir = profile(row) if profile else None
    if not trace_dir:
        return
    start = time.perf_counter()
    try:
        os.makedirs(trace_dir, exist_ok=True)
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(run())
        row.extra["profile"] = trace_dir
        row.extra["top_ops"] = profile_summary.summarize(trace_dir)
    except Exception as e:  # noqa: BLE001 - the timing stands; the profile is a bonus
        row.extra["profile_error"] = f"{type(e).__name__}: {e}"[:500]
    row.extra["profile_s"] = time.perf_counter() - start


@functools.lru_cache(maxsize=4)
def synthetic_train_data(
    mesh: Mesh, num_examples: int, image_size: int, channels: int
) -> train.TrainData:
    """Random uint8 images laid out as `train.load_train_data` lays out a real split."""
    rng = np.random.default_rng(0)
    shape = (1, num_examples, image_size, image_size, channels)
    sharding = parallel.host_sharding(mesh)
    return train.TrainData(
        images=parallel.global_array(rng.integers(0, 256, shape, dtype=np.uint8), sharding),
        labels=parallel.global_array(np.zeros(shape[:2], np.int32), sharding),
    )


def bench_train(
    name: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    steps_per_call: int,
    steps: int,
    repeats: int,
    num_examples: int,
    profile: Profile | None = None,
) -> Row:
    """`steps` optimizer updates per repeat, as `ceil(steps / steps_per_call)` calls."""
    config = config.copy_and_resolve_references()
    config.train.steps_per_call = steps_per_call
    b, dtype = config.train.batch_size, config.model.dtype
    parallel.check_divisible(b, mesh)
    calls = max(1, math.ceil(steps / steps_per_call))
    row = Row(
        workload="train",
        config=name,
        impl="jax",
        dtype=dtype,
        batch=b,
        what=f"k={steps_per_call}: {calls} call(s) x {steps_per_call} step(s)",
        unit="img/s",
        work=calls * steps_per_call * b,
        flops_per_unit=flops.unet_cost(config).train_flops,
        peak_tflops=_peak(mesh, _arithmetic(dtype)),
        device=_device(mesh),
        extra={"steps_per_call": steps_per_call, "train_examples": num_examples},
    )
    train_data = synthetic_train_data(
        mesh, num_examples, config.data.image_size, config.data.channels
    )
    graphdef, state = state_lib.init_train_state(config, parallel.replicated(mesh))
    call = train.make_train_call(config, graphdef, mesh)

    def run_calls(n: int):
        nonlocal state
        for _ in range(n):
            state, _ = call(state, train_data)
        return state

    start = time.perf_counter()
    jax.block_until_ready(run_calls(1))  # compiles, then runs: excluded
    row.extra["compile_and_first_call_s"] = time.perf_counter() - start
    row.seconds = time_repeats(lambda: run_calls(calls), repeats, jax.block_until_ready)
    _trace(row, profile, lambda: run_calls(max(1, 3 // steps_per_call)))  # a few steps
    return row


def _init_params(config: ml_collections.ConfigDict, mesh: Mesh) -> nnx.State:
    def init() -> nnx.State:
        return nnx.split(state_lib.build_model(config, nnx.Rngs(params=0)), nnx.Param)[1]

    return jax.jit(init, out_shardings=parallel.replicated(mesh))()


SOLVERS = ("dpm++2m", "dpm++3m", "dpm++2m_sde")  # rows at --solver_steps network calls


def bench_sample(
    name: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    batch: int,
    short_steps: int,
    repeats: int,
    e2e_repeats: int,
    solver_steps: int = 20,
    solvers: Sequence[str] = SOLVERS,
    profile: Profile | None = None,
) -> list[Row]:
    """DDPM per step (a `short_steps` chain on a T=`short_steps` schedule: the same network and
    update per step as T=1000), then full chains: DDPM (T steps), DDIM (`config.sample.num_steps`)
    and each DPM-Solver++ of `solvers` at `solver_steps` network calls (img/s per solver)."""
    params = _init_params(config, mesh)
    key = jax.random.PRNGKey(0)
    dtype = config.model.dtype
    step_flops = flops.sample_step_flops(config)
    num_t, ddim_steps = int(config.diffusion.num_timesteps), int(config.sample.num_steps)
    plans = [  # (sampler, T of the schedule, steps, repeats, full chain?, description)
        ("ddpm", short_steps, short_steps, repeats, False, f"ddpm, {short_steps}-step chain"),
        ("ddpm", num_t, num_t, e2e_repeats, True, f"ddpm {num_t} steps, full chain"),
        ("ddim", num_t, ddim_steps, e2e_repeats, True, f"ddim {ddim_steps} steps, full chain"),
    ]
    k = min(solver_steps, num_t)
    plans += [(s, num_t, k, e2e_repeats, True, f"{s} {k} calls, full chain") for s in solvers]
    rows = []
    for sampler, t, steps, reps, full, what in plans:
        if reps < 1:
            continue
        c = config.copy_and_resolve_references()
        c.sample.sampler, c.diffusion.num_timesteps = sampler, t
        if c.sample.spacing not in samplers.spacings(sampler):
            c.sample.spacing = "auto"  # the config's spacing is another sampler's
        solver = sampler in samplers.DPM_SOLVERS  # a row per solver: images/s at `steps` calls
        if solver:
            c.sample.num_steps, c.sample.eta = steps, 0.0
        gen = sampling.make_generator(c, state_lib.graphdef_of(c), mesh, batch_size=batch)
        row = Row(
            workload="sample",
            config=name,
            impl="jax",
            dtype=dtype,
            batch=batch,
            what=what,
            unit="img/s" if solver else "img*steps/s",
            work=batch if solver else batch * steps,
            flops_per_unit=step_flops * steps if solver else step_flops,
            peak_tflops=_peak(mesh, _arithmetic(dtype)),
            device=_device(mesh),
            extra={"sampler": sampler, "steps": steps, "network_calls": steps},
        )
        start = time.perf_counter()
        compiled = gen.fn.lower(params, key, jnp.int32(0)).compile()
        row.extra["compile_s"] = time.perf_counter() - start
        if full:  # long: the first timed run follows the ahead-of-time compile directly
            row.extra["note"] = "compiled ahead of time; no untimed warm-up run"
        else:
            jax.block_until_ready(compiled(params, key, jnp.int32(0)))
        row.seconds = time_repeats(
            lambda compiled=compiled: compiled(params, key, jnp.int32(0)),
            reps,
            jax.block_until_ready,
        )
        if full:
            row.extra["seconds_per_batch"] = row.median_s
            row.extra["images_per_s"] = batch / row.median_s
        else:  # the short chain: the per-step row a trace is for
            _trace(row, profile, lambda compiled=compiled: compiled(params, key, jnp.int32(0)))
        rows.append(row)
    return rows


def bench_fid(
    name: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    batch: int,
    batches: int,
    repeats: int,
    weights_path: str | None,
    profile: Profile | None = None,
) -> Row:
    """Inception pool3 features of `batches` x `batch` uint8 images of `config`'s shape,
    through the public `features()` (host uint8 in, host float32 features out)."""
    from diffusion_jax import fid
    from diffusion_jax.errors import UserError
    from diffusion_jax.fid.weights import load_weights

    size, channels = config.data.image_size, config.data.channels
    row = Row(
        workload="fid",
        config=name,
        impl="jax",
        dtype="float32-strict",
        batch=batch,
        what=f"inception 299x299 from {size}x{size}x{channels}, {batches} batches",
        unit="img/s",
        work=batch * batches,
        flops_per_unit=flops.inception_forward_flops(),
        peak_tflops=_peak(mesh, "float32-strict"),
        device=_device(mesh),
    )
    try:
        weights = load_weights(weights_path, allow_download=False)
    except UserError as e:
        first_line = str(e).strip().splitlines()[0]
        row.skipped = f"skipped: FID Inception weights unavailable ({first_line})"
        return row
    extractor = fid.FeatureExtractor(
        batch_size=batch, batch_sharding=parallel.batch_sharding(mesh), weights=weights
    )
    row.extra["weights"] = weights.origin
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * batches, size, size, channels), dtype=np.uint8)
    start = time.perf_counter()
    extractor.features(images[:batch])  # compiles
    row.extra["compile_and_first_call_s"] = time.perf_counter() - start
    row.seconds = time_repeats(lambda: extractor.features(images), repeats, lambda x: x)
    _trace(row, profile, lambda: extractor.features(images[:batch]))  # one batch
    return row


def make_mesh(num_devices: int) -> Mesh:
    """The first `num_devices` devices (0: all) on the library's mesh."""
    devices: Sequence[jax.Device] = jax.devices()
    return parallel.make_mesh(devices[:num_devices] if num_devices else devices)
