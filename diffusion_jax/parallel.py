"""Processes, devices and shardings: the one place that knows about the topology.

One program runs on every process. `initialize` starts `jax.distributed` only when the
environment describes several processes; `make_mesh` lays all global devices on a 2-D mesh
`('host', 'local')` whose rows are processes. The batch is sharded over both axes (every
device gets an equal slice); the training data is sharded over `'host'` only (each process
keeps its own shards, replicated on its devices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion_jax.errors import UserError

BATCH_AXES = ("host", "local")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """How to reach the other processes; `None` fields are auto-detected by JAX."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: Sequence[int] | None = None
    initialization_timeout_s: int = 300
    # A process that has not been heard from for this long is declared dead and every other
    # process stops with an error instead of waiting forever in a collective.
    heartbeat_timeout_s: int = 100


def spec_from_env(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
    heartbeat_timeout_s: int | None = None,
) -> DistributedSpec | None:
    """Decides whether this run is multi-process; explicit values win over the environment.

    Environment: `DJAX_COORDINATOR`, `DJAX_NUM_PROCESSES`, `DJAX_PROCESS_ID`, or SLURM's
    `SLURM_NTASKS` (> 1) with `SLURM_PROCID`, which JAX's SLURM cluster detection reads;
    `DJAX_HEARTBEAT_TIMEOUT` (seconds) bounds how long a dead peer can go unnoticed.
    Returns None for a single-process run.
    """
    env = os.environ
    if heartbeat_timeout_s is None:
        heartbeat_timeout_s = int(env.get("DJAX_HEARTBEAT_TIMEOUT", "100"))
    coordinator_address = coordinator_address or env.get("DJAX_COORDINATOR") or None
    if num_processes is None and env.get("DJAX_NUM_PROCESSES"):
        num_processes = int(env["DJAX_NUM_PROCESSES"])
    if process_id is None and env.get("DJAX_PROCESS_ID"):
        process_id = int(env["DJAX_PROCESS_ID"])
    if coordinator_address or (num_processes or 1) > 1:
        if num_processes is None or process_id is None or not coordinator_address:
            raise UserError(
                "A multi-process run needs all of --coordinator_address, --num_processes and "
                "--process_id (or DJAX_COORDINATOR, DJAX_NUM_PROCESSES, DJAX_PROCESS_ID); got "
                f"coordinator={coordinator_address!r}, num_processes={num_processes}, "
                f"process_id={process_id}."
            )
        if not 0 <= process_id < num_processes:
            raise UserError(f"process_id={process_id} must be in [0, {num_processes}).")
        return DistributedSpec(
            coordinator_address, num_processes, process_id, None, timeout_s, heartbeat_timeout_s
        )
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        # JAX's SlurmCluster reads SLURM_* itself (coordinator = first node of the job).
        return DistributedSpec(
            initialization_timeout_s=timeout_s, heartbeat_timeout_s=heartbeat_timeout_s
        )
    return None


def initialize(spec: DistributedSpec | None) -> None:
    """Starts `jax.distributed` for a multi-process run; a no-op for one process."""
    if spec is None:
        return
    # CPU-only multi-process runs (tests, laptops) need a collectives backend; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if spec.local_device_ids is not None:
        kwargs["local_device_ids"] = spec.local_device_ids
    try:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            initialization_timeout=spec.initialization_timeout_s,
            heartbeat_timeout_seconds=spec.heartbeat_timeout_s,
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001 - surfaced as a clear message
        raise UserError(
            f"Could not join the multi-process job (coordinator={spec.coordinator_address}, "
            f"process {spec.process_id} of {spec.num_processes}): {e}. Check that every process "
            "was started with the same coordinator address and that it is reachable."
        ) from e

    # When a peer dies, JAX's coordination service aborts this process with the message
    # "...detected fatal errors. This most likely indicates that another task died". Python's
    # faulthandler would bury that line under a dump of every thread's stack, so turn it off.
    faulthandler.disable()
    logging.info(
        "Process %d of %d joined %s; if another process dies, this one stops within %d s.",
        jax.process_index(),
        jax.process_count(),
        spec.coordinator_address or "the SLURM job",
        spec.heartbeat_timeout_s,
    )


def shutdown() -> None:
    """Leaves the multi-process job (no-op when single-process)."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def is_main_process() -> bool:
    """Only process 0 writes logs, metrics, pictures and result files."""
    return jax.process_index() == 0


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """All devices on a ('host', 'local') mesh: one row per process, in process order."""
    devices = list(jax.devices() if devices is None else devices)
    num_hosts = len({d.process_index for d in devices})
    devices.sort(key=lambda d: (d.process_index, d.id))
    grid = np.array(devices, dtype=object).reshape(num_hosts, len(devices) // num_hosts)
    return Mesh(grid, BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """Same value on every device (parameters, optimizer state, RNG keys)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Split dimension `leading_axes` (the batch) over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), BATCH_AXES))


def host_sharding(mesh: Mesh) -> NamedSharding:
    """Split dimension 0 over processes, replicated on each process's devices (data shards)."""
    return NamedSharding(mesh, PartitionSpec("host"))


def num_devices(mesh: Mesh) -> int:
    return int(mesh.devices.size)


def check_divisible(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
    """Refuses a global batch that does not split evenly over the devices, before anything runs."""
    n = num_devices(mesh)
    if global_batch <= 0 or global_batch % n:
        raise UserError(
            f"{what}={global_batch} must be a positive multiple of the number of devices ({n} "
            f"over {jax.process_count()} process(es)). Try {max(n, (global_batch // n) * n)}."
        )


def global_array(local_data: np.ndarray, sharding: NamedSharding, global_shape=None) -> jax.Array:
    """A global array assembled from each process's slice (`global_shape` defaults to
    stacking the processes' slices along dimension 0)."""
    return jax.make_array_from_process_local_data(sharding, local_data, global_shape)


def process_allgather(x) -> np.ndarray:
    """Gathers a (possibly sharded) array onto every host as NumPy."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process gets here, through the coordination service (no device work).

    Used after compiling and before the first collective: CPU (gloo) collectives give up after
    30 s when one process still compiles while another already waits.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def sync(name: str) -> None:
    """Barrier across processes (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def wait_for_computations() -> None:
    """Block until every computation dispatched so far has finished: a process stopping early
    (a signal) must not shut the interpreter down while XLA's threads still run."""
    for x in jax.live_arrays():
        with contextlib.suppress(Exception):  # deleted or failed: nothing left to wait for
            x.block_until_ready()


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order, as NumPy (no collective)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas share a start
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def local_checksum(tree) -> str:
    """sha256 (16 hex digits) of this process's copy of a replicated pytree.

    Logged by every process at the end of a multi-process run: equal checksums show that the
    processes hold bit-identical parameters.
    """
    import hashlib

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        local = leaf.addressable_shards[0].data if isinstance(leaf, jax.Array) else leaf
        digest.update(np.ascontiguousarray(np.asarray(local)).tobytes())
    return digest.hexdigest()[:16]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: all must call it).

    Lets all processes agree to stop together (SIGTERM, time budget) so that none is left
    waiting in a collective save.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([bool(flag)]))
    return bool(np.any(flags))
