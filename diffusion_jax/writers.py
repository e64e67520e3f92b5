"""Where metrics go: log lines, TensorBoard event files, `workdir/metrics.jsonl`, progress.

`create_writer` returns one object with the `MetricWriter` methods (`write_scalars`,
`write_images`, `write_texts`, `write_hparams`, `flush`, `close`); the loop never asks which
backend is behind it. Where TensorFlow is importable, CLU's `metric_writers.create_default_writer`
writes the log lines and the event files (`tf.summary`, asynchronously); where it is not (a bare
GPU machine), our own: `LoggingWriter` and `TensorBoardWriter`, which writes event files (scalars,
images as PNG, texts, hparams) with the `tensorboard` package's own protos and record writer, no
TensorFlow; if `tensorboard` is not importable either, a one-line warning says so and only log
lines and metrics.jsonl are written. `tensorboard=False` writes no event files and imports no TF.

The main process writes everything; other processes only log. `workdir/metrics.jsonl` (one
`{"step": n, name: value, ...}` object per line, flushed per write) is always written, by either
backend: it is what `images.loss_curve` plots and what scripts read.

A resumed run passes `resume_step` (the checkpoint's step; 0 for a fresh start): the records past
it, left by the killed run, are dropped from metrics.jsonl (rewritten atomically), and the run's
events start with a `SessionLog(START)` at `resume_step + 1` (in our event file, or, for CLU's
`tf.summary` writer, which writes none, in a small event file of its own sorted just before TF's),
which makes TensorBoard discard the dead branch's events from that step on, so no step shows twice.

Progress (`train_bar`): `BudgetBar` when a time budget ends the run; else CLU's
`periodic_actions.ReportProgress` log lines when asked for and importable (it needs TF); else tqdm.
`write_json`, `read_metrics` and the other file helpers are `diffusion_jax.records`' (re-exported).
`tensorboard`, TensorFlow, CLU's writers and PIL are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from diffusion_jax.errors import UserError

# The file helpers live in `records` (no writer backends: the methods use them); here too.
from diffusion_jax.records import METRICS_FILE as METRICS_FILE
from diffusion_jax.records import read_metrics as read_metrics
from diffusion_jax.records import replace_file as replace_file
from diffusion_jax.records import truncate_metrics
from diffusion_jax.records import write_json as write_json

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _clu_dir() -> str | None:
    spec = importlib.util.find_spec("clu")  # without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    return os.path.abspath(locations[0]) if locations else None


class _OwnInfoOnly(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        clu = _clu_dir()
        self._dirs = (_PACKAGE_DIR,) + ((clu,) if clu else ())

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(self._dirs)


def quiet_library_logs() -> None:
    """Keep INFO lines of this package and CLU only (CLU's: the metric log lines of its
    `LoggingWriter`, `ReportProgress`'s progress): Orbax, JAX and TFDS log dozens per
    checkpoint. Their warnings and errors still show.
    """
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())


class MetricWriter(Protocol):
    """What the workflows call on a writer: the methods of CLU's `MetricWriter` the loop uses,
    which both `create_writer` backends (CLU's writers with TensorFlow, ours without) have."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...

    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _format(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class LoggingWriter:
    """TF-free: scalars as one log line per step (images are only mentioned)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        text = ", ".join(f"{k}={_format(v)}" for k, v in scalars.items())
        logging.info("[%d] %s", step, text)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in images.items())
        logging.info("[%d] images: %s", step, shapes)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for key, text in texts.items():
            logging.info("[%d] %s: %s", step, key, text)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("hparams: %s", ", ".join(f"{k}={v}" for k, v in hparams.items()))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriter:
    """Appends scalars to `workdir/metrics.jsonl`, flushed per write so a crash loses nothing.

    With `resume_step`, first drops what a killed run wrote past that step (`truncate_metrics`).
    """

    def __init__(self, path: str, *, resume_step: int | None = None):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if resume_step is not None:
            dropped = truncate_metrics(path, resume_step)
            if dropped:
                logging.info(
                    "Dropped %d line(s) past step %d or cut short from %s (a killed run's).",
                    dropped,
                    resume_step,
                    path,
                )
        elif os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                ends_cut = f.read(1) != b"\n"
            if ends_cut:  # start on a line of our own, not after a crash's partial line
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": int(step)}
        for k, v in scalars.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        pass

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        pass

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_EVENTS_PREFIX = "events.out.tfevents."


def _event_file_name(logdir: str) -> str:
    """`events.out.tfevents.<seconds>.<host>.<pid>`, with a time stamp past every existing event
    file's: TensorBoard reads a run's files in name order, and a resumed run must come last."""
    stamp = int(time.time())
    for name in os.listdir(logdir):
        if name.startswith(_EVENTS_PREFIX):
            with contextlib.suppress(ValueError, IndexError):
                stamp = max(stamp, int(name[len(_EVENTS_PREFIX) :].split(".")[0]) + 1)
    return f"{_EVENTS_PREFIX}{stamp:010d}.{socket.gethostname()}.{os.getpid()}"


def _encode_png(image: np.ndarray) -> tuple[bytes, int, int, int]:
    from PIL import Image

    if image.dtype != np.uint8:  # floats in [0, 1], as tf.summary.image takes them
        image = np.clip(np.rint(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)
    h, w, c = image.shape
    if c not in (1, 3, 4):
        raise ValueError(f"images need 1, 3 or 4 channels, got shape {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if c == 1 else image).save(buf, format="PNG")
    return buf.getvalue(), h, w, c


class TensorBoardWriter:
    """TensorBoard event files without TensorFlow: the `tensorboard` package's protos and
    TFRecord writer over a plain file, written synchronously and flushed per call.

    Scalars are `simple_value`s (float32); an image is a PNG `Summary.Image` under its key, a
    batch of N > 1 under `key/image/i` (TF1's naming). With `resume_step`, the file starts with
    `SessionLog(START)` at `resume_step + 1`: TensorBoard's Python loader then drops earlier
    files' events from that step on (its fast Rust loader drops a tag's points from the first step
    the tag is written again). Raises ImportError when `tensorboard` is missing.
    """

    def __init__(self, logdir: str, *, resume_step: int | None = None):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, _event_file_name(logdir))
        self._records = RecordWriter(open(self.path, "wb"))  # noqa: SIM115 - closed in close()
        self._add(event_pb2.Event(file_version="brain.Event:2"))
        if resume_step is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._add(event_pb2.Event(step=int(resume_step) + 1, session_log=start))
        self.flush()

    def _add(self, event: Any) -> None:
        event.wall_time = time.time()
        self._records.write(event.SerializeToString())

    def _add_summary(self, step: int, values: list[Any]) -> None:
        summary = self._summary_pb2.Summary(value=values)
        self._add(self._event_pb2.Event(step=int(step), summary=summary))
        self.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        value = self._summary_pb2.Summary.Value
        self._add_summary(step, [value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        pb = self._summary_pb2.Summary
        values = []
        for key, batch in images.items():
            batch = np.asarray(batch)
            batch = batch[None] if batch.ndim == 3 else batch
            if batch.ndim != 4:
                raise ValueError(f"image {key!r}: need [H,W,C] or [N,H,W,C], got {batch.shape}")
            for i, image in enumerate(batch):
                png, h, w, c = _encode_png(image)
                tag = key if len(batch) == 1 else f"{key}/image/{i}"
                picture = pb.Image(height=h, width=w, colorspace=c, encoded_image_string=png)
                values.append(pb.Value(tag=tag, image=picture))
        self._add_summary(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        from tensorboard.plugins.text import summary_v2 as text_summary

        values = [v for k, t in texts.items() for v in text_summary.text_pb(k, t).value]
        self._add_summary(step, values)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """The HParams dashboard's session (`bool`, `int`, `float`, `str` values), at step 0
        as `tf.summary` writes it."""
        from tensorboard.plugins.hparams import summary_v2 as hparams_summary

        self._add_summary(0, list(hparams_summary.hparams_pb(dict(hparams)).value))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()


class MultiWriter:
    def __init__(self, writers: list[Any]):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def clu_metric_writers() -> Any | None:
    """`clu.metric_writers` when it imports (it imports TensorFlow), else None: a bare GPU
    machine has no TF, and a broken TF must not stop a training run (a warning says why).
    TensorFlow is kept off the GPUs, which are JAX's."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's INFO lines (oneDNN, ...)
        import tensorflow as tf
        from clu import metric_writers
    except ImportError as e:
        logging.info("No TensorFlow or CLU writers (%s): the TF-free TensorBoard writer.", e)
        return None
    except Exception as e:  # a TF that fails to import: warn and go on
        logging.warning("TensorFlow does not import (%r): the TF-free TensorBoard writer.", e)
        return None
    with contextlib.suppress(RuntimeError, ValueError):  # already initialized: leave it
        tf.config.set_visible_devices([], "GPU")
    return metric_writers


def _start_session(logdir: str, resume_step: int) -> None:
    """For CLU's `tf.summary` writer, which writes no `SessionLog`: an event file of its own
    holding `SessionLog(START)` at `resume_step + 1` (`TensorBoardWriter`), named to sort after
    every existing event file and before the one TF is about to create (`...<seconds>.<host>.
    <pid>` is a prefix of TF's `...<seconds>.<host>.<pid>.<n>.v2`, and TF's seconds are not
    earlier: this waits for the clock when the stamp had to be moved past it)."""
    writer = TensorBoardWriter(logdir, resume_step=resume_step)
    writer.close()
    stamp = int(os.path.basename(writer.path)[len(_EVENTS_PREFIX) :].split(".")[0])
    while time.time() < stamp:
        time.sleep(0.05)


def create_writer(
    workdir: str, *, is_main: bool, tensorboard: bool = True, resume_step: int | None = None
) -> MetricWriter:
    """The run's writer: process 0 logs, writes TensorBoard events into `workdir` and
    `workdir/metrics.jsonl`; other processes only log. One object with the `MetricWriter`
    methods whichever backend writes the events:

    - TensorFlow importable: CLU's `metric_writers.create_default_writer(workdir)` (log lines,
      `tf.summary` event files, asynchronous), beside our `JsonlWriter`;
    - not (a bare GPU machine): our `LoggingWriter`, `TensorBoardWriter` (the `tensorboard`
      package's protos, no TF; if `tensorboard` is missing too, a warning and no event files)
      and `JsonlWriter`.

    `tensorboard=False` writes no event files and imports no TensorFlow.

    `resume_step`: the step this run starts from (the restored checkpoint's; 0 when starting
    from scratch). Records a killed earlier run wrote past it are dropped from metrics.jsonl and
    hidden in TensorBoard, so every step appears once. None appends to whatever is there.

    A file that cannot be opened or written (a full disk, a read-only folder) raises `UserError`.
    """
    if not is_main:
        return LoggingWriter()
    writers: list[Any] = []
    try:
        jsonl = JsonlWriter(os.path.join(workdir, METRICS_FILE), resume_step=resume_step)
        writers.append(jsonl)
        clu = clu_metric_writers() if tensorboard else None
        if clu is not None:
            if resume_step is not None:
                _start_session(workdir, resume_step)
            return MultiWriter([clu.create_default_writer(workdir, asynchronous=True), jsonl])
        writers.insert(0, LoggingWriter())
        if tensorboard:
            try:
                writers.insert(1, TensorBoardWriter(workdir, resume_step=resume_step))
            except ImportError as e:
                logging.warning(
                    "No TensorBoard event files (%s); logging metrics and writing %s only.",
                    e,
                    METRICS_FILE,
                )
    except OSError as e:
        MultiWriter(writers).close()
        raise UserError(
            f"Cannot write the run's metrics in {workdir} ({e.strerror or e}): free disk space "
            "or fix the folder, then rerun the same command (nothing was trained)."
        ) from e
    return MultiWriter(writers)


def hparams_of(config: Any) -> dict[str, bool | int | float | str]:
    """A config (ConfigDict or nested mapping) as `write_hparams` takes it: flat dotted names,
    values bool, int, float or str (anything else, e.g. a tuple, as its str)."""
    config = config.to_dict() if hasattr(config, "to_dict") else config
    flat: dict[str, bool | int | float | str] = {}

    def walk(prefix: str, section: Mapping[str, Any]) -> None:
        for key, value in section.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(f"{name}.", value)
            else:
                ok = isinstance(value, (bool, int, float, str))
                flat[name] = value if ok else str(value)

    walk("", config)
    return flat


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    total: int, *, initial: int = 0, desc: str = "train", unit: str = "step", enabled: bool = True
):
    """A tqdm bar with rate and ETA on process 0; a do-nothing stand-in elsewhere."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


class BudgetBar:
    """Training's bar when a wall-clock budget ends the run: it fills with the seconds used of
    the budget (counted from `started`, the same clock the loop checks), and shows the step and
    steps/s beside it. A step bar of `num_steps = 1_000_000` would show an ETA of days."""

    def __init__(
        self,
        budget_s: float,
        *,
        started: float,
        initial_step: int = 0,
        desc: str = "train",
        clock=time.monotonic,
        file: Any = None,
    ):
        from tqdm.auto import tqdm

        self._clock, self._started = clock, started
        self._step = initial_step
        self._since: tuple[int, float] | None = None  # (step, time) of the first update
        self._extra = self._rate = ""
        self._bar = tqdm(
            total=float(budget_s),
            desc=f"{desc} (budget {budget_s:g} s)",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}",
            dynamic_ncols=True,
            file=file,
        )

    @property
    def n(self) -> float:
        return self._bar.n

    @property
    def postfix(self) -> str:
        return self._bar.postfix or ""

    def update(self, k: int = 1) -> None:
        self._step += k
        now = self._clock()
        elapsed = min(max(now - self._started, 0.0), self._bar.total)
        if self._since is None:  # the rate counts from here: the first call compiled
            self._since = (self._step, now)
        done, then = self._step - self._since[0], now - self._since[1]
        self._rate = f", {done / then:.3g} step/s" if done and then > 0 else ""
        self._bar.set_postfix_str(self._text(), refresh=False)
        self._bar.update(elapsed - self._bar.n)

    def _text(self) -> str:
        extra = f", {self._extra}" if self._extra else ""
        return f"step {self._step}{self._rate}{extra}"

    def set_postfix_str(self, s: str) -> None:
        """The loss etc. after the step: shown now (the last log of a run must not wait for
        an update that never comes)."""
        self._extra = s
        self._bar.set_postfix_str(self._text())

    def close(self) -> None:
        self._bar.close()


class ReportProgress:
    """`clu.periodic_actions.ReportProgress` behind the bar's interface: every `every_secs` a log
    line with steps/s, the percentage done and the ETA ("Setting work unit notes: ..."). The
    loss etc. are in the writer's log lines, so `set_postfix_str` shows nothing; no scalars are
    written (the loop writes steps_per_sec itself at each log step)."""

    def __init__(self, num_steps: int, *, initial: int = 0, every_secs: float = 60.0):
        from clu import periodic_actions

        self.report = periodic_actions.ReportProgress(
            num_train_steps=num_steps, every_secs=every_secs
        )
        self.step = initial
        self.report(initial)  # the first call only starts the clock

    def update(self, k: int = 1) -> None:
        self.step += k
        self.report(self.step)

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class Profiler:
    """One trace of `num_steps` training steps from step `first` into `logdir`, called with the
    step after each update: `clu.periodic_actions.Profile` where CLU's periodic actions import
    (they need TensorFlow), else `jax.profiler` directly. Either way the trace stops only
    after the traced steps' computations have finished (`wait`), and TensorBoard's Profile tab
    reads it from `logdir/plugins/profile/<run>/`."""

    def __init__(self, logdir: str, *, first: int, num_steps: int, wait: Callable[[], None]):
        self.logdir, self.first, self.last, self.wait = logdir, first, first + num_steps, wait
        self.clu = None
        self.running = False
        if clu_metric_writers() is not None:
            from clu import periodic_actions

            self.clu = periodic_actions.Profile(
                logdir=logdir, num_profile_steps=num_steps, profile_duration_ms=None,
                first_profile=first, every_steps=None, every_secs=None,
            )  # fmt: skip

    def __call__(self, step: int) -> None:
        import jax

        if self.running and step >= self.last:
            self.wait()  # the traced steps' computations, not only their dispatch
        if self.clu is not None:
            self.clu(step)  # starts at `first`, stops `num_steps` steps later
            self.running = self.first <= step < self.last
        elif not self.running and self.first <= step < self.last:
            jax.profiler.start_trace(self.logdir)
            self.running = True
        elif self.running and step >= self.last:
            jax.profiler.stop_trace()
            self.running = False

    def stop(self) -> None:
        """Ends a trace still running (the run stopped inside it)."""
        import jax

        if self.running:
            self.wait()
            jax.profiler.stop_trace()
            self.running = False


def train_bar(
    num_steps: int,
    *,
    initial: int,
    time_budget_s: float,
    started: float,
    enabled: bool,
    clu_progress: bool = False,
):
    """The progress of a training run on process 0: with a time budget, `BudgetBar` (seconds
    of the budget); else, with `clu_progress` and CLU's periodic actions importable (they need
    TensorFlow), CLU's `ReportProgress` log lines; else a tqdm bar of steps."""
    if enabled and time_budget_s:
        return BudgetBar(time_budget_s, started=started, initial_step=initial)
    if enabled and clu_progress and clu_metric_writers() is not None:
        return ReportProgress(num_steps, initial=initial)
    return progress_bar(num_steps, initial=initial, enabled=enabled)
