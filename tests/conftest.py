"""Shared fixtures: TFDS data dirs for tests that read data through `diffusion_jax.data`.

`mnist_tfds_dir` is the real MNIST from ../shared/data/mnist.npz. Importing it takes ~15 s
on two cores, so the result is cached under ~/.cache/diffusion_jax/test_tfds/, keyed by the
npz, data.py and the TFDS version: a change to any of them re-imports, and repeated runs on
one machine skip the work. `tiny_mnist_dir` is 512 + 64 random images written as `mnist`
(about a second), for tests that only need something of the right shape.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax import data

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_NPZ = SHARED_DATA / "mnist.npz"
FID_WEIGHTS = SHARED_DATA / "inception-2015-12-05_fid_torchscript.pt"
_CACHE_DAYS = 7  # entries unused this long (other keys) are removed


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "diffusion_jax" / "test_tfds"


def _cache_key(npz: Path) -> str:
    digest = hashlib.sha256(npz.read_bytes())
    digest.update(Path(data.__file__).read_bytes())
    digest.update(importlib.metadata.version("tensorflow-datasets").encode())
    return digest.hexdigest()[:16]


def _prune(root: Path, keep: Path) -> None:
    for entry in root.iterdir():
        age_days = (time.time() - entry.stat().st_mtime) / 86400
        if entry != keep and age_days > _CACHE_DAYS:
            shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    """../shared/data/mnist.npz (Keras layout); skips when the shared folder is absent."""
    if not MNIST_NPZ.is_file():
        pytest.skip(f"{MNIST_NPZ} is absent (CI has ../shared beside the checkout)")
    return MNIST_NPZ


@pytest.fixture(scope="session")
def mnist_tfds_dir(mnist_npz: Path) -> str:
    """A TFDS data dir holding the real MNIST as array_record (train 60k, test 10k)."""
    root = _cache_root()
    final = root / _cache_key(mnist_npz)
    if not (final / "mnist").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex}"
        try:
            data.import_arrays("mnist", data.read_npz(mnist_npz), str(tmp))
            os.rename(tmp, final)  # atomic; fails if a concurrent session got there first
        except OSError:
            if not (final / "mnist").is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(final)
    _prune(root, keep=final)
    return str(final)


@pytest.fixture(scope="session")
def tiny_mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What `tiny_mnist_dir` holds: split -> (uint8 [N, 28, 28] images, uint8 [N] labels)."""
    rng = np.random.default_rng(0)
    return {
        split: (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        for split, n in (("train", 512), ("test", 64))
    }


@pytest.fixture(scope="session")
def tiny_mnist_dir(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_mnist_arrays: dict[str, tuple[np.ndarray, np.ndarray]],
) -> str:
    """A TFDS data dir with a 512/64-example random `mnist` (read it with data.load_split)."""
    data_dir = tmp_path_factory.mktemp("tiny_tfds")
    data.import_arrays("mnist", tiny_mnist_arrays, str(data_dir), full=False)
    return str(data_dir)


@pytest.fixture(scope="module")
def fid_flags(tmp_path_factory) -> list[str]:
    """`--config.fid.*` flags for small end-to-end FID runs on the tiny fake MNIST: the shared
    FID weights, the 64-image test split as reference (statistics in a fresh folder), batch 8."""
    if not FID_WEIGHTS.is_file():
        pytest.skip(f"FID weights not found at {FID_WEIGHTS}")
    stats_dir = tmp_path_factory.mktemp("fid_stats")
    return [
        f"--config.fid.weights={FID_WEIGHTS}",
        "--config.fid.ref_split=test",
        f"--config.fid.ref_stats={stats_dir}/ref-{{protocol}}.npz",
        "--config.fid.batch_size=8",
        "--config.sample.batch_size=8",
    ]
