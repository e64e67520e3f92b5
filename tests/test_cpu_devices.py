"""--cpu_devices: the host CPU split into several JAX devices before JAX starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffusion_jax import cpu_devices
from diffusion_jax.errors import UserError
from tests.train_utils import REPO, run_main, subprocess_env

_PROBE = """
import sys
import jax
from diffusion_jax import cpu_devices
n = cpu_devices.use_cpu_devices(sys.argv[1], [64, 16])
print(n, jax.local_device_count(), cpu_devices.auto_cpu_devices([64, 16]))
"""


def _probe(setting: str, **env: str) -> tuple[str, int, int]:
    e = subprocess_env()
    e.pop("JAX_NUM_CPU_DEVICES")
    e.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, setting],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.parametrize(
    ("batches", "cores", "expected"),
    [
        ([64, 16], 2, 4),
        ([64], 1, 2),
        ([6, 12], 2, 3),
        ([6, 64], 2, 2),
        ([7], 2, 1),
        ([64], 16, 8),
        ([], 2, 4),
    ],
)
def test_auto_is_twice_the_cores_at_most_8_and_splits_every_batch(batches, cores, expected):
    assert cpu_devices.auto_cpu_devices(batches, cpu_count=cores) == expected


def test_auto_splits_the_cpu_before_jax_starts():
    n, devices, auto = _probe("auto")
    assert n == str(auto) and devices == auto


def test_auto_leaves_the_users_choice_alone():
    n, devices, _ = _probe("auto", XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert (n, devices) == ("None", 3)
    n, devices, _ = _probe("auto", JAX_NUM_CPU_DEVICES="5")
    assert (n, devices) == ("None", 5)
    assert cpu_devices.use_cpu_devices("auto", [64], multi_process=True, environ={}) is None


def test_a_count_applies_and_bad_counts_are_refused():
    n, devices, _ = _probe("2", XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert (n, devices) == ("2", 2)
    for bad in ("0", "-1", "many"):
        with pytest.raises(UserError, match="positive count or 'auto'"):
            cpu_devices.use_cpu_devices(bad, [64])


def test_the_cli_refuses_a_bad_count_before_any_work(tmp_path):
    p = run_main(
        "--config=configs/mnist_cond_cpu.py", f"--workdir={tmp_path / 'w'}", "--cpu_devices=0"
    )
    assert p.returncode == 2, p.stderr
    assert "--cpu_devices='0': give a positive count or 'auto'" in p.stderr
    assert "Traceback" not in p.stderr


def test_the_fid_cli_splits_each_batch_over_the_devices_that_divide_it(capsys):
    from diffusion_jax.fid.__main__ import main

    probe = (
        "from diffusion_jax.fid.__main__ import _batch_sharding as s\n"
        "print(len(s(8).device_set), s(6))"
    )
    e = subprocess_env()
    e["JAX_NUM_CPU_DEVICES"] = "4"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=e, capture_output=True, text=True,
        timeout=120, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["4", "None"]
    assert main(["a.npz", "b.npz", "--cpu_devices=0"]) == 2
    assert "--cpu_devices='0': give a positive count or 'auto'" in capsys.readouterr().err
