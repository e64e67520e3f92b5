"""User-facing errors.

Anything a user can fix (a bad config value, missing data, a wrong file) raises a
`UserError` whose message says what to do. `diffusion_jax.main` prints the message
and exits non-zero instead of dumping a traceback. Library code (model, diffusion,
samplers) raises plain `ValueError` for bad arguments; `state.validate_config` turns the ones a
config can reach into `UserError`s, and `main` keeps the traceback of anything else (a bug).
`blocking_file` is the one check behind the "is a file, not a folder" messages.
"""

from __future__ import annotations

import os
from pathlib import Path


def blocking_file(path: str | os.PathLike) -> Path | None:
    """What keeps the folder `path` from being used or created: `path` itself, or the nearest
    existing folder above it, when that is not a folder; None when nothing is in the way."""
    path = Path(os.path.abspath(path))
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


class UserError(Exception):
    """An error the user can fix; the message says how."""


class DataNotFoundError(UserError):
    """A dataset is not prepared where we looked and cannot be downloaded."""


class CheckpointError(UserError):
    """A checkpoint directory is corrupt or does not match the config."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed (e.g. the disk is full); earlier checkpoints are intact."""


class TrainingDivergedError(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class WeightsError(UserError):
    """FID network weights are missing, corrupt or of another network."""
