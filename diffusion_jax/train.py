"""Training: the method-agnostic loop around a method's compiled train step.

`config.method` picks the method (`diffusion_jax.methods`: DDPM, GAN, VAE, ...); it supplies its
state, its pure train step, its sampler and its settings, and everything here is shared. The
step takes the state and the whole training split (uint8, on the devices) and does everything on
device (DDPM's: `methods.ddpm.train_step`); `steps_per_call` steps run inside one compiled call
(`lax.scan`). Because every random draw is a function of (state.rng, step), a run resumed from a
checkpoint repeats exactly the computation of a run that never stopped.

The loop restores the latest checkpoint in `workdir`, logs the parameter table
(`clu.parameter_overview`), accumulates the metrics on the devices as a `clu.metrics.Collection`
(`diffusion_jax.metrics`), logs at `log_every` steps (the only time metrics leave the devices),
checks that every metric is finite before every save, saves every
`ckpt_every` steps, draws EMA sample grids every `sample_every` steps, stops cleanly on SIGTERM /
SIGINT or at `time_budget_s`, and calls an optional `evaluate_fn` every `config.fid.every` steps.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffusion_jax import (
    checkpoint,
    data,
    evaluate,
    images,
    methods,
    parallel,
    sampling,
    writers,
)
from diffusion_jax import metrics as metrics_lib
from diffusion_jax import state as state_lib
from diffusion_jax.batches import TrainData, select_batch
from diffusion_jax.errors import TrainingDivergedError, UserError
from diffusion_jax.methods.ddpm import prepare_batch, train_step

__all__ = ["TrainData", "prepare_batch", "select_batch", "train_step"]  # DDPM's, re-exported

# evaluate_fn(step, ema_params) -> {metric: value} or None; `methods.best_metric(config)` among
# its metrics picks the checkpoint kept in workdir/best.
EvaluateFn = Callable[[int, Any], Mapping[str, float] | None]
State = Any  # a method's state (methods.base: step, rng, params, ema_params, opt_state, ...)
SAMPLES_DIR = "samples"  # workdir/samples: the EMA sample grids of `sample_every`


def load_train_data(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainData:
    """Reads this process's shards (`range(p*k, (p+1)*k)`) of the method's split (`Method.
    data_split`: "train", DIP's `config.dip.split`) and makes them one global array."""
    n, procs = state_lib.num_shards(config), jax.process_count()
    if n % procs:
        raise UserError(
            f"config.data.num_shards={n} must be a multiple of the number of processes ({procs})."
        )
    k, p = n // procs, jax.process_index()
    split = data.load_split(
        config.data.dataset,
        methods.get(config).data_split(config),
        data_dir=config.data.data_dir,
        image_size=config.data.image_size,
        channels=config.data.channels,
        shards=range(p * k, (p + 1) * k),
        num_shards=n,
        progress=parallel.is_main_process(),
    )
    # Labels past num_classes would index the label table out of range: NaN from step 1.
    data.check_labels(split, config.model.num_classes, config.data.dataset)
    per_shard = config.train.batch_size // n
    if split.images.shape[1] < per_shard:
        raise UserError(
            f"config.train.batch_size={config.train.batch_size} needs {per_shard} examples per "
            f"data shard, but each of the {n} shards has only {split.images.shape[1]}."
        )
    sharding = parallel.host_sharding(mesh)
    return TrainData(
        images=parallel.global_array(split.images, sharding),
        labels=parallel.global_array(split.labels, sharding),
    )


def make_train_call(
    config: ml_collections.ConfigDict, static: Any, mesh: Mesh
) -> Callable[[State, TrainData], tuple[State, metrics_lib.clu_metrics.Collection]]:
    """`steps_per_call` train steps of `config.method` as one compiled call, returning the new
    state and the steps' metrics as one `clu.metrics.Collection` (`metrics.from_steps`: window
    means, last values, the loss's Std, the first non-finite step). `static` is the method's
    (DDPM: the model's graphdef).

    The state (parameters, optimizer state, EMA, ...) is replicated, the batch is split over
    every device, and the state's buffers are donated (updated in place).
    """
    step = functools.partial(
        methods.get(config).train_step,
        config=config,
        static=static,
        batch_sharding=parallel.batch_sharding(mesh),
    )

    def call(state: State, train_data: TrainData):
        k = config.train.steps_per_call
        first_step = state.step + 1  # the step number (after its update) of the first step
        if k == 1:  # no loop: XLA:CPU runs backward convolutions ~10x slower inside loops
            state, stacked = step(state, train_data)
            stacked = jax.tree.map(lambda m: m[None], stacked)
        else:
            state, stacked = jax.lax.scan(lambda s, _: step(s, train_data), state, None, length=k)
        return state, metrics_lib.from_steps(stacked, first_step)

    replicated, host = parallel.replicated(mesh), parallel.host_sharding(mesh)
    data_sharding = TrainData(images=host, labels=host)
    return jax.jit(
        call,
        in_shardings=(replicated, data_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


# ---------------------------------------------------------------------------------------------
# The loop


class TrainingStopped(BaseException):
    """SIGTERM / SIGINT arrived before the first train step (or, for the CLI, during a mode
    that has nothing to save); `signum` is the signal.

    A `BaseException`, like `KeyboardInterrupt`: raised wherever the main thread was, it must not
    be swallowed by an `except Exception` on its way out (logging's handlers catch every
    `Exception` a write raises, and a stop raised inside one was printed and ignored).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


# Libraries that run XLA or Orbax underneath: a signal that arrives while the main thread is in
# their Python code (often called back from C++, with XLA threads running) must not raise there.
_DEVICE_LIBRARIES = frozenset({"jax", "jaxlib", "flax", "optax", "orbax", "tensorstore"})


def _in_device_library(frame: types.FrameType) -> bool:
    return frame.f_globals.get("__name__", "").split(".")[0] in _DEVICE_LIBRARIES


def raise_when_safe(frame: types.FrameType | None, error: BaseException) -> Callable[[], None]:
    """Raise `error` now if the interrupted `frame` is outside the device libraries, else as
    soon as the outermost call into them returns (at the next line of its caller); returns the
    function that cancels a deferred raise.

    Raising from a signal handler inside JAX's or Orbax's Python code (a compile, a dispatch, a
    restore) unwinds through their C++ while XLA's threads run, and the process could then
    crash on exit (SIGSEGV, exit 139) instead of stopping. Deferring uses a trace function on
    the caller's frame (the mechanism debuggers use); the previous trace function is restored
    before `error` is raised or when the raise is cancelled.
    """
    outermost = None
    f = frame
    while f is not None:
        if _in_device_library(f):
            outermost = f
        f = f.f_back
    caller = outermost.f_back if outermost is not None else None
    if outermost is None or caller is None:
        raise error
    previous = sys.gettrace()
    armed: list[types.FrameType] = []

    def arm(f: types.FrameType) -> None:
        f.f_trace, f.f_trace_lines = trace, True
        armed.append(f)

    def cancel() -> None:
        if armed:
            sys.settrace(previous)
            for f in armed:
                f.f_trace = None
            armed.clear()

    def trace(f: types.FrameType, event: str, arg: object):
        if event == "line" and armed:
            cancel()
            raise error
        if event == "return" and f.f_back is not None and armed:  # returned without a line
            arm(f.f_back)
        return trace

    arm(caller)
    sys.settrace(previous or (lambda *args: None))  # turns frame tracing on; new frames untraced
    return cancel


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each call (a second SIGINT
    interrupts at once). Restores the previous handlers on exit.

    Entered before anything is loaded: until `training` is set (the loop is about to run its
    first step) a signal raises `TrainingStopped`, interrupting data loading, restoring, building
    the evaluators or a mode that has nothing to save; the message is `SIGNAL received <when>;
    <note>. Stopped.` It is raised where it is safe (`raise_when_safe`): at once in this
    package's code, and after the running JAX / Orbax call returns when the signal came inside
    one (a compile or a computation is not cut off in the middle).
    """

    def __init__(
        self,
        when: str = "before training started (while loading, restoring or compiling)",
        note: str = "nothing was saved: no checkpoint was written",
    ):
        self.reason: str | None = None
        self.signum = 0
        self.training = False
        self.when, self.note = when, note
        self._previous: dict[int, object] = {}
        self._cancel: Callable[[], None] | None = None  # of a deferred raise (raise_when_safe)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.signum = signum
        if not self.training:
            if self.reason is not None:  # already stopping (a second SIGINT interrupts)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                return
            self.reason = name
            error = TrainingStopped(f"{name} received {self.when}; {self.note}. Stopped.", signum)
            self._cancel = raise_when_safe(frame, error)
            return
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = name
        logging.warning("%s received: finishing the current step, then saving.", self.reason)

    def __exit__(self, *exc) -> None:
        if self._cancel is not None:  # a deferred stop the block finished before: drop it
            self._cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _diverged(
    config: ml_collections.ConfigDict,
    step: int,
    values: Mapping[str, float],
    last_good: int | None,
    where: str,
) -> TrainingDivergedError:
    good = (
        f"The last good checkpoint is step {last_good} in {where}; it was left untouched and a "
        "restart with a fixed config resumes from it."
        if last_good is not None
        else "No checkpoint was saved before it."
    )
    hints = [f"lower config.train.lr (now {config.train.lr:g})"]
    if not config.train.grad_clip:
        hints.append("enable gradient clipping (config.train.grad_clip=1.0)")
    if config.get("method", "ddpm") == "ddpm" and config.model.dtype != "float32":
        hints.append(f"compute in float32 (config.model.dtype=float32, now {config.model.dtype})")
    name = "loss" if "loss" in values else next(iter(values))
    others = [f"{n}={v}" for n, v in values.items() if n != name]
    also = f" (also {', '.join(others)})" if others else ""
    return TrainingDivergedError(
        f"Training diverged: the {name} became {values[name]}{also} at step {step}. {good} Try: "
        + "; ".join(hints)
        + "."
    )


def _save_samples(
    workdir: str, step: int, samples: np.ndarray, writer: writers.MetricWriter
) -> None:
    path = os.path.join(workdir, SAMPLES_DIR, f"step_{step:07d}.png")
    grid = images.grid(samples)
    images.save_png(path, grid)
    writer.write_images(step, {"samples": grid[None]})


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    evaluate_fn: EvaluateFn | None = None,
    stop: StopRequest | None = None,
) -> State:
    """Train `config` in `workdir` (resuming its latest checkpoint) and return the final state.

    SIGTERM / SIGINT stop training after the current step with a checkpoint (`stop.reason`
    says which signal); before the first step they raise `TrainingStopped`. Pass an entered
    `stop` to see afterwards whether training was stopped.
    """
    if stop is None:
        with StopRequest() as own:
            return train_and_evaluate(config, workdir, evaluate_fn=evaluate_fn, stop=own)
    started, cpu_started = time.monotonic(), time.process_time()
    methods.validate_config(config)
    t = config.train
    mesh = parallel.make_mesh()
    parallel.check_divisible(t.batch_size, mesh)
    is_main = parallel.is_main_process()
    replicated = parallel.replicated(mesh)

    checkpoint.check_best_is_ours(workdir, t.ckpt_every)
    static, abstract = methods.abstract_state(config, replicated)
    meta = checkpoint.make_meta(config, abstract.params)
    os.makedirs(workdir, exist_ok=True)
    ckpts = checkpoint.Checkpoints(workdir, keep=t.keep_checkpoints, state=abstract)
    try:
        state = ckpts.restore(abstract, meta)  # refuses corrupt / incompatible checkpoints
        if state is None:
            _, state = methods.init_state(config, replicated)
            logging.info(
                "Starting from scratch in %s (%s parameters).", workdir, meta["num_params"]
            )
        else:
            saved = ckpts.read_meta(int(state.step))
            # The clocks go on from the checkpoint's: a time budget spans resumes.
            clock = saved.get(checkpoint.TRAIN_CLOCK) or {}
            started -= float(clock.get("wall_s", 0.0))
            cpu_started -= float(clock.get("cpu_s", 0.0))
            changed = checkpoint.config_differences(saved.get("config", {}), meta["config"])
            logging.info("Resuming from step %d in %s.", int(state.step), ckpts.latest_dir)
            stop.note = (
                f"nothing new to save: the checkpoint of step {int(state.step)} in "
                f"{ckpts.latest_dir} is intact"
            )
            if changed:
                logging.warning("Settings changed since the checkpoint: %s", "; ".join(changed))
            if int(state.step) >= t.num_steps:
                logging.warning(
                    "Nothing to train: the checkpoint in %s is at step %d, config.train."
                    "num_steps=%d. Raise --config.train.num_steps to train on.",
                    ckpts.latest_dir, int(state.step), t.num_steps,
                )  # fmt: skip
                return state
            spent = time.monotonic() - started
            if t.time_budget_s and spent >= t.time_budget_s:
                logging.warning(
                    "Nothing to train: the checkpoint in %s has used %.0f s of training, "
                    "config.train.time_budget_s=%g. Raise the budget to train on.",
                    ckpts.latest_dir, spent, t.time_budget_s,
                )  # fmt: skip
                return state
        train_data = load_train_data(config, mesh)
        run = _Run(config, workdir, mesh, static, ckpts, meta, is_main, started, cpu_started)
        return _loop(run, state, train_data, evaluate_fn, stop)
    finally:
        ckpts.wait()
        ckpts.close()


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the loop needs besides the state and the data (fixed for the whole run)."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    static: Any  # the method's (DDPM: the model's graphdef)
    ckpts: checkpoint.Checkpoints
    meta: dict
    is_main: bool
    # time.monotonic() / time.process_time() at the start, less the training time of the runs
    # before a resume (the checkpoint's checkpoint.TRAIN_CLOCK): the time budget counts from here
    started: float
    cpu_started: float

    def meta_now(self) -> dict:
        return {**self.meta, checkpoint.TRAIN_CLOCK: self.clock()}

    def clock(self) -> dict[str, float]:
        """Training time so far, over every run of this workdir (saved in each checkpoint)."""
        return {
            "wall_s": round(time.monotonic() - self.started, 3),
            "cpu_s": round(time.process_time() - self.cpu_started, 3),
        }


# Calls dispatched ahead of the one known finished. JAX dispatches asynchronously, so without a
# bound the host runs up to `log_every` steps ahead of the device: the progress bar and the time
# budget check would count steps that have not run (on a 2-core CPU the bar reached 100/100
# ten minutes before the work did). Two calls in flight keep an accelerator fed while the host
# waits for an older one.
_IN_FLIGHT = 2


def _loop(
    run: _Run,
    state: State,
    train_data: TrainData,
    evaluate_fn: EvaluateFn | None,
    stop: StopRequest,
) -> State:
    config, workdir, mesh, static = run.config, run.workdir, run.mesh, run.static
    ckpts, is_main, started = run.ckpts, run.is_main, run.started
    t = config.train
    method = methods.get(config)
    train_call = make_train_call(config, static, mesh)
    if evaluate_fn is None:  # periodic FID when config.fid.every and config.fid.num_samples ask
        evaluate_fn = evaluate.periodic_evaluator(config, mesh, static)
    preview = None
    if t.sample_every and method.generates:
        preview_batch = sampling.batch_size_for(64, 64, mesh)
        preview = sampling.make_generator(config, static, mesh, batch_size=preview_batch, fast=True)
    preview_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), sampling.SAMPLE_STREAM)
    heldout_loss = None
    if method.heldout is not None:
        heldout_loss = method.heldout(config, mesh, static)
    best = methods.best_metric(config)

    step = int(state.step)
    # A killed run may have logged past the checkpoint it resumes from: those records go.
    writer = writers.create_writer(
        workdir, is_main=is_main, tensorboard=t.tensorboard, resume_step=step
    )
    if is_main:  # every run, fresh or resumed: the parameters it trains
        table = metrics_lib.parameter_table(state.params)
        logging.info("Parameters (%s) at step %d:\n%s", method.name, step, table)
    if is_main and step == 0:  # the HParams dashboard: the config of a fresh run
        writer.write_hparams(writers.hparams_of(config))
    bar = writers.train_bar(
        t.num_steps,
        initial=step,
        time_budget_s=t.time_budget_s,
        started=started,
        enabled=is_main,
        clu_progress=t.tensorboard,  # with TensorBoard on, CLU's progress lines when TF is there
    )
    profiler = None
    if t.profile_steps > 0 and is_main:  # one trace, after the compile, in whole calls
        k0 = t.steps_per_call
        first = -(-(step + max(int(t.profile_start), 1)) // k0) * k0
        profiler = writers.Profiler(
            workdir, first=first, num_steps=int(t.profile_steps),
            wait=parallel.wait_for_computations,
        )  # fmt: skip
        logging.info("Profiling steps %d-%d into %s/plugins/profile/.", first,
                     first + t.profile_steps, workdir)  # fmt: skip
    window = None  # the metrics Collection of the calls since the last log line (on device)
    in_flight: collections.deque = collections.deque(maxlen=_IN_FLIGHT + 1)
    last_log_step, last_log_time = step, time.monotonic()
    last_good = ckpts.latest_step()
    k, multi = t.steps_per_call, jax.process_count() > 1
    if multi:  # compile everywhere first: no process may wait in a collective while one compiles
        train_call = train_call.lower(state, train_data).compile()
        parallel.barrier("train_call_compiled")
    try:
        stop.training = True  # from here a signal finishes the current step and saves
        while step < t.num_steps:
            state, metrics = train_call(state, train_data)
            step += k
            window = metrics if window is None else metrics_lib.merge(window, metrics)
            in_flight.append(metrics)
            if len(in_flight) > _IN_FLIGHT:  # bound async dispatch: see _IN_FLIGHT
                jax.block_until_ready(in_flight[0])
            bar.update(k)
            if profiler is not None:
                profiler(step)

            reason = None
            if not multi or step % t.log_every == 0:  # agreeing costs a collective
                over_budget = t.time_budget_s and time.monotonic() - started > t.time_budget_s
                budget = f"the time budget ({t.time_budget_s:g} s)" if over_budget else None
                reason = stop.reason or budget
                if multi:
                    # Finish this step's collectives before starting another program's: on
                    # CPU (gloo) two processes can otherwise pair them up differently and
                    # deadlock.
                    jax.block_until_ready(metrics)
                    if parallel.any_process(reason is not None):
                        reason = reason or "another process"
            last = step >= t.num_steps or reason is not None
            save = step % t.ckpt_every == 0 or last

            if step % t.log_every == 0 or save:
                scalars, bad = metrics_lib.summarize(window)  # fetches: the window's end
                if bad is not None:
                    raise _diverged(config, bad[0], bad[1], last_good, ckpts.latest_dir)
                window = None
                now = time.monotonic()
                rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                last_log_step, last_log_time = step, now
                scalars.update(steps_per_sec=rate, examples_per_sec=rate * t.batch_size)
                if save and heldout_loss is not None:  # of the EMA, at every checkpoint
                    losses = heldout_loss(state.ema_params)
                    scalars.update(metrics_lib.heldout_scalars(losses))
                writer.write_scalars(step, scalars)
                shown = "loss" if "loss" in scalars else next(iter(scalars))
                bar.set_postfix_str(f"{shown}={scalars[shown]:.4f}")

            if preview is not None and step % t.sample_every == 0:
                grid, _ = sampling.generate_all(preview, state.ema_params, 64, preview_key)
                if is_main:
                    _save_samples(workdir, step, grid, writer)

            if evaluate_fn is not None and config.fid.every and step % config.fid.every == 0:
                results = evaluate_fn(step, state.ema_params) or {}
                if results:  # elapsed_s: wall time of this run so far (FID-vs-time plots)
                    elapsed = {"elapsed_s": time.monotonic() - started}
                    writer.write_scalars(step, {**results, **elapsed})
                if best is not None and best in results:
                    ckpts.save_best(state, run.meta_now(), best, float(results[best]))

            if save:
                meta = run.meta_now()
                ckpts.save(state, meta)
                last_good = step
                if best is not None and best in scalars:  # e.g. "loss" or "heldout_loss"
                    ckpts.save_best(state, meta, best, float(scalars[best]))

            if reason is not None:
                ckpts.wait()
                logging.warning("stopped by %s at step %d; checkpoint saved", reason, step)
                break
        writer.flush()
    finally:
        if profiler is not None:
            profiler.stop()
        bar.close()
        writer.close()
    if jax.process_count() > 1:
        logging.info(
            "process %d: parameter checksum %s at step %d",
            jax.process_index(),
            parallel.local_checksum((state.params, state.ema_params)),
            int(state.step),
        )
    if is_main and os.path.exists(os.path.join(workdir, writers.METRICS_FILE)):
        records = writers.read_metrics(os.path.join(workdir, writers.METRICS_FILE))
        losses = sorted({k for r in records for k in r if k == "loss" or k.endswith("_loss")})
        if losses:  # DDPM: loss (and heldout_loss); GANs: d_loss, g_loss, ...
            images.loss_curve(records, os.path.join(workdir, "loss.png"), keys=losses)
    return state


QUALITY_FILE = "quality.json"


def train_and_eval(
    config: ml_collections.ConfigDict, workdir: str, *, config_file: str | None = None
) -> dict:
    """The quality run: train (up to `config.train.time_budget_s`), then FID of the result.

    Writes `workdir/quality.json`: the `--mode=eval` record plus training wall time, images
    seen and the budget, and `workdir/fid_vs_time.png` when periodic FID was on. One
    `evaluate.Evaluator` (Inception extractors, reference statistics, generators) serves the
    periodic FID and the final eval; it is built before training, outside the time budget.
    The record says what was run (`evaluate.run_description`: config file, dataset, schedule,
    T, model size, batch, sampler), so records compare without their commands.
    """
    started = time.monotonic()
    methods.validate_config(config)
    evaluator = evaluate.Evaluator.create(config, config_file=config_file)
    train_started = time.monotonic()
    with StopRequest() as stop:
        state = train_and_evaluate(config, workdir, evaluate_fn=evaluator.periodic(), stop=stop)
    train_wall = time.monotonic() - train_started
    if stop.reason is not None:  # the user asked to stop: no hour of FID after the save
        raise TrainingStopped(
            f"{stop.reason}: training stopped and saved at step {int(state.step)}; the final FID "
            "was not computed (rerun the same command to resume, or use --mode=eval).",
            stop.signum,
        )
    latest = os.path.join(workdir, checkpoint.LATEST_DIR)
    intact = (
        f"the checkpoint of step {int(state.step)} in {latest} is intact; the final FID was not "
        "computed (compute it with --mode=eval)"
    )
    with StopRequest(when="during the final FID", note=intact):
        record = evaluate.run_eval(config, workdir, evaluator=evaluator)
    record.setdefault("train_wall_s", round(train_wall, 2))  # a checkpoint without a clock
    record.update(
        this_run_train_wall_s=round(train_wall, 2),
        time_budget_s=float(config.train.time_budget_s),
        total_wall_s=round(time.monotonic() - started, 2),
    )
    if parallel.is_main_process():
        writers.write_json(os.path.join(workdir, QUALITY_FILE), record)
        records = writers.read_metrics(os.path.join(workdir, writers.METRICS_FILE))
        if any("fid" in r for r in records):
            images.fid_curve(records, os.path.join(workdir, "fid_vs_time.png"))
    return record
