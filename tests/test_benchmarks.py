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
from diffusion_jax.nets.unet import count_params  # noqa: E402

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


def test_versions_do_not_start_a_jax_backend():
    """The peer rows run before JAX takes the GPU: the JSON written after each of them must not
    start JAX's backend (which would reserve GPU memory and share the GPU with the peer)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import jax\n"
        "from jax._src import xla_bridge\n"
        "from benchmarks import hardware\n"
        "v = hardware.versions()\n"
        "assert 'jax_backend' not in v, v\n"
        "assert not xla_bridge.backends_are_initialized()\n"
        "jax.devices()\n"
        "assert 'jax_backend' in hardware.versions()\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120,
        env=subprocess_env(),
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_failing_profiler_keeps_the_timed_row(tmp_path: Path):
    from benchmarks import jax_workloads

    row = Row("train", "tiny", "jax", "bfloat16", 8, "2 steps", "img/s", work=8.0, seconds=[1.0])
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # the trace directory cannot be made under a file
    jax_workloads._trace(row, lambda r: str(blocker / "trace"), lambda: jnp.ones(3))
    assert row.seconds == [1.0] and row.skipped is None
    assert row.extra["profile_error"].startswith(("FileExistsError", "NotADirectoryError"))
    assert "top_ops" not in row.extra


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
        "--sample_batch=4",
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
    assert {r["extra"].get("of", "train") for r in peer} == {"train", "sample", "fid"}
    for r in peer:
        if r["skipped"]:
            assert "install .[bench]" in r["skipped"] or "TorchScript" in r["skipped"]
        elif r["extra"]["of"] == "fid":
            assert r["throughput"] > 0 and r["dtype"] == "float32-strict"
        else:
            assert r["throughput"] > 0 and r["extra"]["params"] == tiny.params
    if not any(r["skipped"] for r in peer):  # ratios on our DDPM-step and FID rows
        assert sample[0]["vs_peer"] > 0 and "torch eager" in sample[0]["extra"]["vs_peers"]
        assert fid["skipped"] or fid["vs_peer"] > 0
    for r in train:
        assert r["extra"]["top_ops"]["ops"], r["extra"]["top_ops"]


def test_profile_summary_of_a_cpu_trace(tmp_path: Path):
    from benchmarks import profile_summary

    f = jax.jit(lambda x: jnp.tanh(x @ x) @ x + 1)
    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(3):
            f(x).block_until_ready()
    summary = profile_summary.summarize(tmp_path, top=5)
    assert "XLA:CPU" in summary["source"] and summary["total_ms"] > 0
    ops = summary["ops"]
    assert ops and all(op["count"] == 3 for op in ops)  # one event per call
    assert sum(op["share"] for op in ops) == pytest.approx(1.0)
    assert ops == sorted(ops, key=lambda op: -op["total_ms"])
    assert "top ops by self time" in profile_summary.format_summary("t", summary)


def test_profile_summary_device_lines_use_self_time():
    """A GPU-shaped trace: the XLA Ops line is used (a while op's body is not counted twice),
    the stream kernels are summarised apart, host events are ignored."""
    from benchmarks import profile_summary

    def meta(pid, name, tid=None):
        kind = "thread_name" if tid is not None else "process_name"
        return {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}

    def x(pid, tid, name, ts, dur):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}

    events = [
        meta(1, "/host:CPU"),
        meta(2, "/device:GPU:0"),
        meta(2, "XLA Ops", tid=10),
        meta(2, "Stream #7(Compute)", tid=11),
        x(1, 1, "PjitFunction(train)", 0, 1000),
        x(2, 10, "while.3", 0, 100),
        x(2, 10, "fusion.1", 10, 30),
        x(2, 10, "convolution.2", 50, 40),
        x(2, 11, "sm90_xmma_fprop", 50, 40),
    ]
    summary = profile_summary.summarize_events(events)
    ops = {op["name"]: op for op in summary["ops"]}
    assert set(ops) == {"while.3", "fusion.1", "convolution.2"}
    assert ops["while.3"]["total_ms"] == pytest.approx(0.030)  # 100 - 30 - 40 us
    assert ops["convolution.2"]["share"] == pytest.approx(0.4)
    assert summary["kernels"][0]["name"] == "sm90_xmma_fprop"
    kinds = {k["name"] for k in summary["kinds"]}
    assert kinds == {"while", "fusion", "convolution"}


def test_plan_and_goals_parse():
    from benchmarks import run
    from benchmarks.results import goal_of, parse_goals

    args = run.parse_args(["--plan=train:cifar10:bfloat16:128:1+8,sample:cifar10:bfloat16:1000,"
                           "fid:cifar10:500,train:mnist:float32:256"])  # fmt: skip
    assert args.plan[0] == run.Item("train", "cifar10", "bfloat16", 128, (1, 8))
    assert args.plan[1] == run.Item("sample", "cifar10", "bfloat16", 1000)
    assert args.plan[2] == run.Item("fid", "cifar10", "float32-strict", 500)
    assert args.plan[3].ks == (1,)
    goals = parse_goals(run.GOALS)
    row = Row("train", "cifar10", "jax", "bfloat16", 512, "", "img/s", 1.0, [1.0])
    assert goal_of(row, goals).ratio == 1.6
    sample = Row("sample", "cifar10", "jax", "bfloat16", 1000, "", "img*steps/s", 1.0, [1.0])
    sample.extra["sampler"] = "ddpm"
    assert goal_of(sample, goals).ratio == 1.4
    with pytest.raises(SystemExit):
        run.parse_args(["--plan=train:cifar10:bfloat16"])


def test_torch_fid_peer_matches_ours():
    """The peer FID row computes our features (same network, same resize) in torch."""
    pytest.importorskip("torch")
    from conftest import FID_WEIGHTS

    if not FID_WEIGHTS.is_file():
        pytest.skip(f"FID TorchScript weights not found at {FID_WEIGHTS}")
    import numpy as np

    from benchmarks import peer
    from diffusion_jax.fid import FeatureExtractor

    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    theirs = peer.TorchFid(str(FID_WEIGHTS), (28, 28, 1)).features(images, 2)
    ours = FeatureExtractor(str(FID_WEIGHTS), "tf", batch_size=2).features(images)
    err = np.linalg.norm(theirs - ours, axis=1) / np.linalg.norm(ours, axis=1)
    assert err.max() <= 1e-4


def test_quality_curve_plots_one_line_per_run_and_refuses_mixed_sample_counts(tmp_path, capsys):
    from benchmarks import quality_curve

    def record(folder: Path, step: int, minutes: float, fid: float, n: int = 1000) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        r = {"checkpoint_step": step, "train_wall_s": minutes * 60, "num_samples": n,
             "fid": {"pytorch_fid": fid, "tf": fid + 1}}  # fmt: skip
        (folder / f"fid_{step}.json").write_text(json.dumps(r))

    for step, minutes, fid in ((500, 10, 40.0), (1500, 30, 12.0)):
        record(tmp_path / "ours", step, minutes, fid)
    record(tmp_path / "course", 100, 30, 90.0)
    out = tmp_path / "curve.png"
    runs = [f"ours={tmp_path / 'ours'}", f"course={tmp_path / 'course'}"]
    assert quality_curve.main([*sum((["--run", r] for r in runs), []), "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "ours: step 500, 10.0 min, FID 40.000 (N=1000)" in printed
    assert "course: step 100, 30.0 min, FID 90.000" in printed
    record(tmp_path / "ours", 2500, 50, 8.0, n=10_000)
    with pytest.raises(SystemExit, match="mix sample counts"):
        quality_curve.main(["--run", runs[0], "--out", str(out)])
