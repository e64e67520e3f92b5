"""How many JAX devices the host CPU is split into (`--cpu_devices`), set before JAX starts.

A bottom-layer module (jax and errors only) so that every entry point can call it first: the
training CLI, the FID CLI and `diffusion_jax.load`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
from jax._src import xla_bridge

from diffusion_jax.errors import UserError

# XLA:CPU runs one device's program on about one core (measured on the 2-vCPU VM: 1 device
# keeps ~1.1 cores busy). Splitting the host into more devices than cores lets the batch's
# shards overlap: the MNIST train step went 47.9 -> 72.7 -> 99.4 -> 100.4 img/s at 1, 2, 4, 8
# devices (results/quality/cpu_recipe.jsonl). Auto is twice the cores, at most 8.
MAX_AUTO_CPU_DEVICES = 8
CPU_DEVICES_AUTO = "auto"


def auto_cpu_devices(batch_sizes: Sequence[int], cpu_count: int | None = None) -> int:
    """The most CPU devices, up to twice the cores (at most 8), that split every batch evenly."""
    cores = cpu_count or os.cpu_count() or 1
    for n in range(min(MAX_AUTO_CPU_DEVICES, 2 * cores), 1, -1):
        if all(b % n == 0 for b in batch_sizes):
            return n
    return 1


def _cpu_devices_set_by_user(environ: Mapping[str, str]) -> bool:
    return (
        "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")
        or "JAX_NUM_CPU_DEVICES" in environ
        or jax.config.jax_num_cpu_devices >= 0
    )


def use_cpu_devices(
    setting: str,
    batch_sizes: Sequence[int],
    *,
    multi_process: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> int | None:
    """Splits the host CPU into several JAX devices before JAX starts its backends.

    `setting` is "auto" or a count. Auto leaves a single-process run's CPU alone where the user
    chose (XLA_FLAGS' --xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES), in a
    multi-process run, and once JAX has started; a count always applies (a UserError once JAX
    has started with another). Accelerators are not affected: on a GPU machine the mesh holds
    the GPUs. Returns the count set, or None when nothing was changed. Every random draw is a
    function of seed, step and image index, so the split changes no image, only float sums'
    order.
    """
    if setting == CPU_DEVICES_AUTO:
        started = xla_bridge.backends_are_initialized()
        if multi_process or started or _cpu_devices_set_by_user(environ):
            return None
        n = auto_cpu_devices(batch_sizes)
    else:
        try:
            n = int(setting)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"--cpu_devices={setting!r}: give a positive count or 'auto'.")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        raise UserError(
            f"--cpu_devices={setting}: JAX has already started its CPU backend ({e})."
        ) from e
    return n
