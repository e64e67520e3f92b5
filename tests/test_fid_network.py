"""Network parity with the TorchScript FID Inception run by torch, and batching invariance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax.fid import FeatureExtractor, RunningStats, statistics_of

ROOT = Path(__file__).parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fid_reference.npz"
TORCHSCRIPT = ROOT.parent / "shared" / "data" / "inception-2015-12-05_fid_torchscript.pt"
pytestmark = pytest.mark.skipif(
    not TORCHSCRIPT.is_file(), reason=f"FID TorchScript weights not found at {TORCHSCRIPT}"
)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return dict(z)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("djax_cache")


@pytest.fixture(scope="module")
def extractor(cache_dir) -> FeatureExtractor:
    os.environ["DJAX_CACHE_DIR"] = str(cache_dir)
    try:
        return FeatureExtractor(str(TORCHSCRIPT), "tf", batch_size=8)
    finally:
        del os.environ["DJAX_CACHE_DIR"]


def _rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_network_parity_with_torch_on_72_images(ref, extractor) -> None:
    """32 MNIST + 32 CIFAR-10 + 8 noise images; torch features on our tf preprocessing."""
    ours = np.concatenate([extractor.features(ref[k]) for k in ("mnist", "cifar", "noise")])
    assert ours.shape == (72, 2048) and ours.dtype == np.float32
    err = _rel_err(ours, ref["features_tf"])
    assert err.max() <= 1e-4, f"max relative L2 error {err.max():.2e}"


def test_end_to_end_parity_through_reference_resizes(
    ref, extractor, cache_dir, monkeypatch
) -> None:
    """Features of images resized by TF / torch themselves (independent of our resize)."""
    few = [ref["mnist"][:2], ref["cifar"][:2]]
    tf_feats = np.concatenate([extractor.features(g) for g in few])
    assert _rel_err(tf_feats, ref["features_via_tf_resize"]).max() <= 1e-4
    monkeypatch.setenv("DJAX_CACHE_DIR", str(cache_dir))
    pt = FeatureExtractor(str(TORCHSCRIPT), "pytorch_fid", batch_size=4)
    pt_feats = np.concatenate([pt.features(g) for g in few])
    assert _rel_err(pt_feats, ref["features_via_torch_resize"]).max() <= 1e-4
    # The two protocols really differ (a silent mix-up would pass the checks above otherwise).
    assert _rel_err(pt_feats, tf_feats).min() > 1e-3


def test_statistics_of_streams_batches(ref, extractor) -> None:
    batches = [ref["cifar"][:5], ref["cifar"][5:8]]
    stats = statistics_of(batches, extractor, progress=False, dataset="cifar", split="test")
    feats = extractor.features(ref["cifar"][:8]).astype(np.float64)
    assert stats.count == 8 and stats.protocol == "tf"
    assert stats.network_sha256 == extractor.network_sha256
    np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-7)


_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from diffusion_jax.fid import FeatureExtractor, RunningStats
    from diffusion_jax.errors import UserError
    ts, fixture = sys.argv[1], sys.argv[2]
    images = np.load(fixture)["cifar"][:8]
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    out = {"devices": len(jax.devices())}
    for name, kw in {
        "one_device_b3": dict(batch_size=3),
        "one_device_b8": dict(batch_size=8),
        "eight_devices_b8": dict(batch_size=8, batch_sharding=sharding),
    }.items():
        f = FeatureExtractor(ts, "tf", **kw).features(images)
        rs = RunningStats()
        rs.update(f)
        s = rs.finalize()
        out[name] = {"f": f.tolist(), "mu": s.mu.tolist(), "sigma_diag": np.diag(s.sigma).tolist()}
    try:
        FeatureExtractor(ts, "tf", batch_size=12, batch_sharding=sharding)
    except UserError as e:
        out["indivisible_error"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


def test_features_and_statistics_independent_of_batch_size_and_devices(tmp_path) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["DJAX_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICE_SCRIPT, str(TORCHSCRIPT), str(FIXTURE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 8
    ref = out["one_device_b8"]
    for name in ("one_device_b3", "eight_devices_b8"):
        # On XLA:CPU each image's features are bit-identical whatever the batch or device
        # count (measured); a tolerance would hide a padding or sharding bug leaking rows.
        for key in ("f", "mu", "sigma_diag"):
            np.testing.assert_array_equal(out[name][key], ref[key], err_msg=f"{name} {key}")
    assert "does not divide evenly" in out["indivisible_error"]


def test_running_stats_from_features_match_numpy(ref) -> None:
    f = ref["features_tf"]
    rs = RunningStats()
    for i in range(0, 72, 10):
        rs.update(f[i : i + 10])
    s = rs.finalize()
    np.testing.assert_allclose(s.mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(f.astype(np.float64), rowvar=False), atol=1e-12)
