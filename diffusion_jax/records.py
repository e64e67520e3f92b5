"""Record files: the package's one atomic JSON writer and metrics.jsonl's reader and truncation.

No writer backends, no TensorFlow, no CLU: the methods (their reports) use these as the
workflows do; `diffusion_jax.writers` re-exports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically: a new file beside it (same folder, so the rename
    stays on one file system), flushed to disk, then `os.replace`. A reader or a crash sees
    the old file or the new one, never a partial one; a file that existed keeps its mode.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, record: Any, *, indent: int = 2) -> Path:
    """Writes `record` as JSON (`indent`, a final newline) atomically (`replace_file`),
    creating the folder; returns the path. The one JSON writer of the package."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, (json.dumps(record, indent=indent) + "\n").encode())
    return path


def truncate_metrics(path: str, resume_step: int) -> int:
    """Drop the records with step > `resume_step`, and lines a crash cut short, from a
    metrics.jsonl; returns how many lines were dropped.

    The kept lines stay byte for byte and in order. The file is rewritten by `replace_file`, so
    a crash during the rewrite leaves either the old or the new file, never a partial one.
    """
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    cut_last = lines[-1] != b""  # no final newline: the last write may have been cut short
    kept, dropped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:  # a line cut short by a crash is not valid JSON (its closing brace is missing)
            keep = int(json.loads(line)["step"]) <= resume_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + b"\n")
        else:
            dropped += 1
    if not dropped and not cut_last:
        return 0
    replace_file(path, b"".join(kept))
    return dropped


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
