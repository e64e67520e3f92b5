"""Helpers shared by the training-system tests (tiny config, subprocess runs, comparisons).

Every test compiles the same tiny model; a persistent JAX compilation cache (one folder per
machine, keyed by JAX on the exact program) lets later tests and subprocesses skip the ~20 s
XLA:CPU compiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np

REPO = Path(__file__).resolve().parents[1]
JAX_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffusion_jax" / "jax_cache"
)


def load_config(name: str = "tiny") -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# Small everything: 8 steps, a log line every 2, a checkpoint every 4, no previews, no TF.
FAST = {
    "train.num_steps": 8,
    "train.log_every": 2,
    "train.ckpt_every": 4,
    "train.sample_every": 0,
    "train.tensorboard": False,
}


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """configs/tiny.py reading `data_dir`, with FAST and `overrides` ("train.lr"=...) applied."""
    config = load_config("tiny")
    config.data.data_dir = data_dir
    for key, value in {**FAST, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def flags_for(data_dir: str, **overrides) -> list[str]:
    """Command-line overrides equivalent to `tiny_config(data_dir, **overrides)`."""
    items = {**FAST, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [
        f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--config.data.data_dir={data_dir}",
        *(f"--config.{k}={v}" for k, v in items.items()),
    ]


def subprocess_env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(JAX_CACHE)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:  # one device, as the tests' own process has (not --cpu_devices=auto's split)
        env["JAX_NUM_CPU_DEVICES"] = "1"
    return env


def main_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_jax.main", *args]


def run_main(*args: str, devices: int | None = None, timeout: float = 300):
    """`python -m diffusion_jax.main ARGS` from the repository root; returns CompletedProcess."""
    return subprocess.run(
        main_command(*args),
        cwd=REPO,
        env=subprocess_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def compilation_cache() -> Iterator[None]:
    """Use the shared persistent compilation cache in this process, then restore the settings."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        yield
    finally:
        for n, v in before.items():
            jax.config.update(n, v)


def assert_trees_equal(a, b) -> None:
    """Bit-identical pytrees (same structure, same bytes)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(jax.random.key_data(x) if _is_key(x) else x), np.asarray(y)
        np.testing.assert_array_equal(x, y)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def snapshot(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (to prove nothing was touched)."""
    out = {}
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            out[str(f.relative_to(path))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def no_traceback(stderr: str) -> bool:
    return "Traceback (most recent call last)" not in stderr
