"""Peak FLOP/s by device kind (for MFU) and the versions a result depends on.

Peaks are NVIDIA's dense (no 2:4 sparsity) datasheet numbers per GPU. Which peak a row is
measured against depends on the arithmetic it asks for:
- "bfloat16": bf16 tensor cores;
- "float32": TF32 tensor cores, because JAX's default matmul/conv precision lets XLA use TF32
  for float32 on these GPUs (and the PyTorch peer is set to allow TF32 likewise);
- "float32-strict": `Precision.HIGHEST` (the FID network), plain FP32 units.
Unknown devices (every CPU) have no peak: their MFU is reported as n/a, never guessed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

# (substrings that must all occur in the device kind, lower case) -> TFLOP/s by arithmetic.
# Order matters: the first match wins (PCIe / NVL before the SXM default).
PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("h100", "pcie"), {"bfloat16": 756.0, "float32": 378.0, "float32-strict": 51.2}),
    (("h100", "nvl"), {"bfloat16": 835.5, "float32": 417.5, "float32-strict": 60.0}),
    (("h200", "nvl"), {"bfloat16": 835.5, "float32": 417.5, "float32-strict": 60.0}),
    (("h100",), {"bfloat16": 989.4, "float32": 494.7, "float32-strict": 66.9}),  # SXM
    (("h200",), {"bfloat16": 989.4, "float32": 494.7, "float32-strict": 66.9}),  # SXM
    (("a100",), {"bfloat16": 312.0, "float32": 156.0, "float32-strict": 19.5}),
]


def peak_tflops(device_kind: str, arithmetic: str) -> float | None:
    """Dense peak of one device for `arithmetic` ("bfloat16", "float32", "float32-strict")."""
    kind = device_kind.lower()
    for keys, peaks in PEAK_TFLOPS:
        if all(k in kind for k in keys):
            return peaks.get(arithmetic)
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _jax_backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without the private module
        return False
    return bool(xla_bridge.backends_are_initialized())


def versions() -> dict[str, str | None]:
    """Package versions, plus the CUDA/cuDNN builds of torch and JAX's backend when loaded."""
    names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax")
    names += ("numpy", "torch", "diffusers")
    out: dict[str, str | None] = {"python": platform.python_version()}
    out |= {n: _version(n) for n in names}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_cuda"] = torch.version.cuda
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["torch_cudnn"] = None if cudnn is None else str(cudnn)
    jax = sys.modules.get("jax")
    if jax is not None and _jax_backend_started():  # never start one for a version string:
        with contextlib.suppress(Exception):  # the peer rows run before JAX takes the GPU
            out["jax_backend"] = jax.devices()[0].client.platform_version
    return out


def gpu_info() -> dict[str, str]:
    """NVIDIA GPU name, driver and memory from nvidia-smi (without starting CUDA), else the
    kernel driver's version file; empty without an NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        fields = "name,driver_version,memory.total"
        try:
            out = subprocess.run(
                [smi, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            first = [x.strip() for x in out.splitlines()[0].split(",")]
            info = dict(zip(("name", "driver", "memory"), first, strict=False))
            info["count"] = str(len(out.splitlines()))
            return info
    try:
        with open("/proc/driver/nvidia/version") as f:
            return {"driver": f.readline().strip()}
    except OSError:
        return {}


def cpu_name() -> str:
    """The host CPU's model name and core count (what the CPU rows ran on)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def jax_device_info(devices: list) -> dict[str, object]:
    d = devices[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "num_devices": len(devices),
        "host_cpu": cpu_name(),
    }
