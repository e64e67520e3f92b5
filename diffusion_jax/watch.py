"""`--mode=eval_watch`: evaluation beside training, in its own process (like score_sde's
`run_lib.evaluate`).

The watcher follows `workdir/checkpoints` and evaluates every new checkpoint once, oldest
first: FID under the configured protocols (the `--mode=eval` record, `eval/fid_<step>.json`)
plus the per-checkpoint metrics of `extra_metrics` (the held-out loss, `heldout_loss`), also
written as scalars to `workdir/eval/metrics.jsonl` (and TensorBoard events in `workdir/eval/`).

- Only finalized checkpoints are seen: Orbax writes a step to a temporary folder and renames it
  on commit, and a fresh read-only manager lists committed steps only, so a checkpoint being
  written is never read. A step that training's `keep_checkpoints` deleted before it could be
  read is skipped with a log line; one that still exists but cannot be read after
  `RESTORE_ATTEMPTS` tries (corrupt, or made with another model config) stops the watcher with
  its `CheckpointError`.
- A restarted watcher resumes: a step whose `eval/fid_<step>.json` exists is never evaluated
  again.
- It stops when training has finished, i.e. the latest checkpoint's step is
  >= `config.train.num_steps` (so the watcher's config must have the trainer's num_steps), and
  every checkpoint is evaluated; or after `timeout_s` seconds with nothing to evaluate and no
  new checkpoint (a run stopped early by its time budget or a signal writes no marker; the
  timeout covers it).
- The Evaluator (Inception extractors, reference statistics, generator) and the extra metrics
  are built once; every checkpoint reuses their compiled programs.
- One watcher per workdir: it holds a lock on `eval/watch.lock` while it runs, and a second one
  is refused (both would evaluate every checkpoint and write every record twice).

With several processes, process 0 reads the files and decides; the others follow its decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffusion_jax import checkpoint, evaluate, methods, parallel, writers
from diffusion_jax import metrics as metrics_lib
from diffusion_jax.errors import CheckpointError, UserError

DEFAULT_TIMEOUT_S = 3600.0
POLL_S = 5.0
RESTORE_ATTEMPTS = 3
LOCK_FILE = "watch.lock"  # in workdir/eval: held by the one watcher of a workdir

Metric = Callable[[nnx.State], dict[str, float]]  # EMA parameters -> {name: value}
EvaluateParams = Callable[[nnx.State, int], dict]  # (EMA parameters, step) -> record


def extra_metrics(config: ml_collections.ConfigDict, mesh, static: Any) -> dict[str, Metric]:
    """Per-checkpoint metrics besides FID, each value stored in the record under its name
    (built once, before the first checkpoint). Adding a metric is one entry here."""
    method = methods.get(config)
    heldout = method.heldout and method.heldout(config, mesh, static)
    metrics = {"heldout": heldout and (lambda p: metrics_lib.heldout_scalars(heldout(p)))}
    return {name: fn for name, fn in metrics.items() if fn is not None}  # None: switched off


def finalized_steps(workdir: str) -> list[int]:
    """The committed steps in `workdir/checkpoints`, read afresh from disk (Orbax's own notion:
    temporary folders of saves in progress are not steps)."""
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        return sorted(ckpts.all_steps())
    finally:
        ckpts.close()


_RECORD = re.compile(r"fid_(\d+)\.json")


def evaluated_steps(workdir: str) -> set[int]:
    """Steps that already have `eval/fid_<step>.json`."""
    folder = Path(workdir) / evaluate.OUTPUT_DIR
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := _RECORD.fullmatch(p.name))}


def _from_main(values: list[int]) -> list[int]:
    """Process 0's `values` on every process (a collective; identity for one process)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
    buf = np.zeros(n, np.int32)
    if parallel.is_main_process():
        buf[:] = values
    return [int(v) for v in multihost_utils.broadcast_one_to_all(buf)]


_WAIT, _EVAL, _STOP = 0, 1, 2


class _NoReadOnlyNotices(logging.Filter):
    """Drops Orbax's warnings that a read-only manager is read-only (three per poll)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("orbax" in record.pathname and ("read_only" in text or "read only" in text))


@dataclasses.dataclass
class Watcher:
    """Follows `workdir` and calls `evaluate_params(ema_params, step)` once per checkpoint;
    the records it returns are written as `eval/fid_<step>.json` (see the module docstring)."""

    config: ml_collections.ConfigDict
    workdir: str
    evaluate_params: EvaluateParams
    mesh: jax.sharding.Mesh
    timeout_s: float = DEFAULT_TIMEOUT_S
    poll_s: float = POLL_S
    writer: writers.MetricWriter | None = None
    evaluated: list[int] = dataclasses.field(default_factory=list)  # this run, in order
    skipped: list[int] = dataclasses.field(default_factory=list)  # deleted before read

    def __post_init__(self):
        _, abstract_state = methods.abstract_state(self.config, parallel.replicated(self.mesh))
        self._abstract = abstract_state.ema_params
        self._expected = checkpoint.make_meta(self.config, abstract_state.params)
        self._items = abstract_state

    # ----------------------------------------------------------------- decisions (process 0)

    def _decide(self, seen: set[int], idle_since: float) -> tuple[int, int, list[int]]:
        """(action, step, finalized steps), the same on every process."""
        action, step, steps = _WAIT, -1, []
        if parallel.is_main_process():
            steps = finalized_steps(self.workdir)
            done = set(evaluated_steps(self.workdir)) | set(self.skipped)  # one listing
            todo = [s for s in steps if s not in done]
            latest = steps[-1] if steps else None
            if todo:
                action, step = _EVAL, todo[0]
            elif latest is not None and latest >= self.config.train.num_steps:
                logging.info(
                    "eval_watch: training finished (step %d >= config.train.num_steps=%d) and "
                    "every checkpoint is evaluated.",
                    latest,
                    self.config.train.num_steps,
                )
                action = _STOP
            elif not (set(steps) - seen) and time.monotonic() - idle_since > self.timeout_s:
                logging.info(
                    "eval_watch: no new checkpoint for %.0f s (--watch_timeout); stopping.",
                    self.timeout_s,
                )
                action = _STOP
        action, step, *steps = _from_main([action, step, *steps])
        return action, step, steps

    # ----------------------------------------------------------------- reading

    def _restore(self, step: int) -> nnx.State | None:
        """EMA parameters of `step`, or None when training deleted it before it could be read."""
        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            ckpts = checkpoint.Checkpoints(self.workdir, read_only=True, state=self._items)
            error = None
            try:
                params, _ = ckpts.restore_ema(self._abstract, self._expected, step)
            except CheckpointError as e:
                error = e
            finally:
                ckpts.close()
            if not parallel.any_process(error is not None):
                return params
            gone = step not in _from_main(finalized_steps(self.workdir))
            if gone:
                logging.info(
                    "eval_watch: checkpoint %d was deleted by training (keep_checkpoints) "
                    "before it could be read; skipped.",
                    step,
                )
                return None
            if attempt == RESTORE_ATTEMPTS:
                raise error or CheckpointError(f"checkpoint {step} failed on another process")
            logging.warning("eval_watch: reading checkpoint %d failed (%s); retrying.", step, error)
            time.sleep(min(self.poll_s, 2.0))
        return None

    # ----------------------------------------------------------------- the loop

    def run(self) -> dict:
        """Evaluates until training has finished or `timeout_s` passes idle; returns a summary."""
        is_main = parallel.is_main_process()
        started = time.monotonic()
        idle_since = started
        seen: set[int] = set()
        logging.info(
            "eval_watch: following %s (stops at step >= %d, or after %.0f s without a new "
            "checkpoint).",
            Path(self.workdir) / checkpoint.LATEST_DIR,
            self.config.train.num_steps,
            self.timeout_s,
        )
        while True:
            action, step, steps = self._decide(seen, idle_since)
            if set(steps) - seen:
                seen |= set(steps)
                idle_since = time.monotonic()
            if action == _STOP:
                break
            if action == _WAIT:
                time.sleep(self.poll_s)
                continue
            t0 = time.monotonic()
            params = self._restore(step)
            if params is None:
                self.skipped.append(step)
                continue
            record = self.evaluate_params(params, step)
            record["wall_s"] = round(time.monotonic() - t0, 2)
            record["evaluated_by"] = "eval_watch"
            if is_main:
                path = evaluate.write_record(self.workdir, record)
                if self.writer is not None:
                    self.writer.write_scalars(step, _scalars(record))
                    self.writer.flush()
                waiting = sum(s > step for s in steps)
                logging.info(
                    "eval_watch: step %d: %s (%.1f s) -> %s; %d evaluated, %d waiting.",
                    step,
                    ", ".join(f"{k}={v:.4f}" for k, v in _scalars(record).items()),
                    record["wall_s"],
                    path,
                    len(self.evaluated) + 1,
                    waiting,
                )
            self.evaluated.append(step)
            idle_since = time.monotonic()
        return {
            "evaluated": list(self.evaluated),
            "skipped": list(self.skipped),
            "wall_s": round(time.monotonic() - started, 2),
        }


def _scalars(record: dict) -> dict[str, float]:
    out = {f"fid_{p}": float(v) for p, v in record["fid"].items()}
    out.update({k: float(v) for k, v in record.get("metrics", {}).items()})
    return out


def make_evaluate_params(
    evaluator: evaluate.Evaluator, metrics: dict[str, Metric]
) -> EvaluateParams:
    """The `--mode=eval` record of a checkpoint, with `metrics` under `record["metrics"]` and
    each also at the top level (`record["heldout_loss"]`)."""

    def evaluate_params(params: nnx.State, step: int) -> dict:
        record = evaluator.record(params, step)
        values = {name: v for fn in metrics.values() for name, v in fn(params).items()}
        record["metrics"] = values
        record.update(values)
        return record

    return evaluate_params


def check_timeout(timeout_s: float) -> None:
    """Refuses a --watch_timeout that would never expire (nan, inf) or makes no sense (< 0)."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s >= 0):
        raise UserError(
            f"--watch_timeout={timeout_s}: give the seconds to wait for a new checkpoint, a "
            f"finite number >= 0 (default {DEFAULT_TIMEOUT_S:g})."
        )


@contextlib.contextmanager
def only_watcher(workdir: str) -> Iterator[None]:
    """Holds `workdir/eval/watch.lock` (an exclusive `flock`, released when the process ends,
    also when it is killed) for the block; raises `UserError` if another watcher holds it."""
    path = Path(workdir) / evaluate.OUTPUT_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(
                f"Another --mode=eval_watch (process {holder}) is already following {workdir} "
                f"(it holds {path}); a second one would evaluate every checkpoint again. Stop "
                "it first, or watch another --workdir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def run_watch(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = POLL_S,
    config_file: str | None = None,
) -> dict:
    """`--mode=eval_watch`: evaluate each checkpoint of `workdir` as training writes it."""
    check_timeout(timeout_s)
    if parallel.is_main_process():  # process 0 reads and writes the files; the others follow
        with only_watcher(workdir):
            return _watch(config, workdir, timeout_s, poll_s, config_file)
    return _watch(config, workdir, timeout_s, poll_s, config_file)


def _watch(
    config: ml_collections.ConfigDict,
    workdir: str,
    timeout_s: float,
    poll_s: float,
    config_file: str | None,
) -> dict:
    methods.validate_config(config)
    n = int(config.fid.eval_samples)
    if n < 2:
        raise UserError(f"config.fid.eval_samples={n} must be >= 2 (50000 is the standard).")
    mesh = parallel.make_mesh()
    static, _ = methods.abstract_state(config)
    evaluator = evaluate.Evaluator.create(config, mesh, static, config_file=config_file)
    metrics = extra_metrics(config, mesh, static)
    is_main = parallel.is_main_process()
    writer = writers.create_writer(
        str(Path(workdir) / evaluate.OUTPUT_DIR),
        is_main=is_main,
        tensorboard=config.train.tensorboard,
    )
    watcher = Watcher(
        config,
        workdir,
        make_evaluate_params(evaluator, metrics),
        mesh,
        timeout_s=timeout_s,
        poll_s=poll_s,
        writer=writer,
    )
    quiet = _NoReadOnlyNotices()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(quiet)
    try:
        summary = watcher.run()
    finally:
        absl_logger.removeFilter(quiet)
        writer.close()
    logging.info(
        "eval_watch: done: %d checkpoint(s) evaluated %s, %d skipped %s, %.0f s.",
        len(summary["evaluated"]),
        summary["evaluated"],
        len(summary["skipped"]),
        summary["skipped"],
        summary["wall_s"],
    )
    return summary
