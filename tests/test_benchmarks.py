"""benchmarks/: the analytic FLOP counts and one tiny end-to-end run of `python -m benchmarks.run`.

The FLOP counter is checked three ways: the issue's 12.4 GFLOP per 32x32 CIFAR-10 image, the
parameter count of the same walk against the real model (exact), and the conv/matmul FLOPs of
the traced model (exact). The end-to-end run is `--tiny` on CPU in a subprocess, with the
shared compilation cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from train_utils import REPO, load_config, subprocess_env

if str(REPO) not in sys.path:  # `benchmarks` lives at the repository root, outside the package
    sys.path.insert(0, str(REPO))

from benchmarks import flops, hardware  # noqa: E402
from benchmarks.results import Row, set_peer_ratios  # noqa: E402
from diffusion_jax import state as state_lib  # noqa: E402
from diffusion_jax.model import count_params  # noqa: E402

CONFIGS = ("cifar10", "mnist", "mnist_cond", "tiny")


def test_cifar10_forward_is_12_4_gflop_and_has_35_7m_params():
    cost = flops.unet_cost(load_config("cifar10"))
    assert cost.forward_flops == pytest.approx(12.4e9, rel=0.03)
    assert cost.params == 35_746_307  # Ho et al.'s model; also the diffusers peer's count
    assert cost.train_flops == 3 * cost.forward_flops


@pytest.mark.parametrize("name", CONFIGS)
def test_flop_walk_matches_the_real_model(name):
    """Same parameters as the built model, same conv+matmul FLOPs as its traced forward."""
    config = load_config(name)
    cost = flops.unet_cost(config)
    model = state_lib.abstract_model(config)
    assert cost.params == count_params(model)

    graphdef, params = nnx.split(model, nnx.Param)
    size, channels = config.data.image_size, config.data.channels
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    traced = flops.jaxpr_flops(lambda p, x, t: nnx.merge(graphdef, p)(x, t), params, x, t)
    assert traced == 2 * cost.forward_flops


def test_guidance_doubles_the_sampling_cost():
    config = load_config("mnist_cond")  # guidance 3: conditional and null branches
    assert flops.sample_step_flops(config) == 2 * flops.unet_cost(config).forward_flops
    assert (
        flops.sample_step_flops(load_config("mnist"))
        == flops.unet_cost(load_config("mnist")).forward_flops
    )


def test_inception_is_5_7_billion_multiply_adds():
    """The usual "5.7 GFLOPs" of Inception-v3 at 299x299 counts multiply-adds; we count 2 each."""
    assert flops.inception_forward_flops() == pytest.approx(2 * 5.7e9, rel=0.03)


def test_peak_table():
    assert hardware.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4)
    assert hardware.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756.0)
    assert hardware.peak_tflops("NVIDIA H200", "float32") == pytest.approx(494.7)
    assert hardware.peak_tflops("NVIDIA H200 NVL", "bfloat16") == pytest.approx(835.5)
    assert hardware.peak_tflops("NVIDIA H200", "float32-strict") == pytest.approx(66.9)
    assert hardware.peak_tflops("cpu", "float32") is None


def test_peer_ratio_uses_the_fastest_matching_peer_row():
    def row(workload, impl, seconds, batch=128, dtype="bfloat16"):
        return Row(workload, "cifar10", impl, dtype, batch, "", "img/s", 100.0, [seconds])

    ours = row("train", "jax", 1.0)
    other_batch = row("train", "jax", 1.0, batch=512)
    rows = [ours, other_batch, row("peer", "torch eager", 4.0), row("peer", "torch compile", 2.0)]
    set_peer_ratios(rows)
    assert ours.vs_peer == pytest.approx(2.0)
    assert other_batch.vs_peer is None
    assert Row.from_json(ours.to_json()) == ours


@pytest.mark.parametrize("name", ("cifar10", "mnist", "tiny"))
def test_diffusers_peer_has_our_parameter_count(name):
    pytest.importorskip("diffusers")
    from benchmarks import peer

    config = load_config(name)
    model = peer.build_model(config)
    assert sum(p.numel() for p in model.parameters()) == flops.unet_cost(config).params


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path):
    out = tmp_path / "bench.json"
    args = [
        "--tiny",
        "--workloads=train,sample,fid,peer",
        "--steps_per_call=1,2",
        "--repeats=2",
        "--train_steps=2",
        "--sample_short_steps=2",
        "--fid_batch=1",
        "--fid_batches=1",
        f"--profile_dir={tmp_path / 'profile'}",
        f"--json={out}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| workload | config | impl | dtype | batch |" in proc.stdout
    assert "device: 1 x cpu" in proc.stdout

    doc = json.loads(out.read_text())
    assert doc["device"]["platform"] == "cpu"
    assert doc["versions"]["jax"] == jax.__version__
    rows = doc["rows"]
    assert not [r for r in rows if (r["skipped"] or "").startswith("failed")], rows

    tiny = flops.unet_cost(load_config("tiny"))
    train = [r for r in rows if r["workload"] == "train"]
    assert [r["extra"]["steps_per_call"] for r in train] == [1, 2]
    for r in train:
        assert r["throughput"] > 0 and r["achieved_tflops"] > 0
        assert r["mfu"] is None and r["peak_tflops"] is None  # CPU: no known peak
        assert r["flops_per_unit"] == tiny.train_flops
        assert r["repeats"] == 2 and r["unit"] == "img/s"
        assert list(Path(r["extra"]["profile"]).rglob("*.xplane.pb"))

    sample = [r for r in rows if r["workload"] == "sample"]
    solvers = ["dpm++2m", "dpm++3m", "dpm++2m_sde"]
    assert [r["extra"]["sampler"] for r in sample] == ["ddpm", "ddpm", "ddim", *solvers]
    # tiny: T=100, 10 DDIM steps; the solvers at --solver_steps=5 (the --tiny default)
    assert [r["extra"]["network_calls"] for r in sample] == [2, 100, 10, 5, 5, 5]
    assert all(r["throughput"] > 0 for r in sample)
    assert [r["unit"] for r in sample] == ["img*steps/s"] * 3 + ["img/s"] * 3
    for r in sample[1:]:  # full chains: images per second in the JSON
        assert r["extra"]["images_per_s"] > 0

    (fid,) = [r for r in rows if r["workload"] == "fid"]
    if fid["skipped"]:
        assert fid["skipped"].startswith("skipped: FID Inception weights unavailable")
    else:
        assert fid["throughput"] > 0 and fid["dtype"] == "float32-strict"

    peer = [r for r in rows if r["workload"] == "peer"]
    assert peer
    for r in peer:
        if r["skipped"]:
            assert "install .[bench]" in r["skipped"]
        else:
            assert r["throughput"] > 0 and r["extra"]["params"] == tiny.params
