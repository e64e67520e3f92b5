"""Where metrics go: log lines, TensorBoard (via CLU, when TF is there), metrics.jsonl, tqdm.

`workdir/metrics.jsonl` (one `{"step": n, name: value, ...}` object per line) is always written
by the main process, whatever else is available: it is what `images.loss_curve` plots and what
scripts read. TensorBoard event files need TensorFlow and TensorBoard through CLU; where they are
missing (the GPU machine has no TF) a TF-free writer logs instead, after a one-line warning.
CLU and TensorFlow are imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

METRICS_FILE = "metrics.jsonl"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnInfoOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def quiet_library_logs() -> None:
    """Keep INFO lines of this package only: Orbax, JAX and TFDS log dozens per checkpoint.

    Their warnings and errors still show.
    """
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())


class MetricWriter(Protocol):
    """The part of CLU's `MetricWriter` interface the workflows use."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

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

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlWriter:
    """Appends scalars to `workdir/metrics.jsonl`, flushed per write so a crash loses nothing."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
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

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MultiWriter:
    def __init__(self, writers: list[Any]):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def _clu_writer(workdir: str) -> Any:
    """CLU's default writer (log lines + TensorBoard events), with TF kept off the GPUs."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TF must not grab GPU memory JAX needs
    from clu import metric_writers

    return metric_writers.create_default_writer(workdir, asynchronous=False)


def create_writer(workdir: str, *, is_main: bool, tensorboard: bool = True) -> MetricWriter:
    """The run's writer: process 0 logs, writes TensorBoard (if possible) and metrics.jsonl;
    other processes only log (CLU's `just_logging`)."""
    if not is_main:
        return LoggingWriter()
    writers: list[Any] = []
    if tensorboard:
        try:
            writers.append(_clu_writer(workdir))
        except ImportError as e:
            logging.warning(
                "No TensorBoard event files (%s); logging metrics and writing %s only.",
                e,
                METRICS_FILE,
            )
    if not writers:
        writers.append(LoggingWriter())
    writers.append(JsonlWriter(os.path.join(workdir, METRICS_FILE)))
    return MultiWriter(writers)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; for a step logged twice (a resumed run) the last wins."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


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
