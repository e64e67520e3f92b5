"""FID of a trained run end to end on the CPU: periodic FID during training picks the best
checkpoint, `--mode=eval` writes its JSON record, mismatched reference statistics are refused.

Small on purpose: the Inception network runs ~5 images/s on this CPU, so the reference is the
64-image test split of the tiny fake MNIST and a handful of samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_utils import flags_for, no_traceback, run_main, tiny_config

pytestmark = pytest.mark.slow


def test_train_with_periodic_fid_then_eval(tmp_path, tiny_mnist_dir, fid_flags):
    workdir = tmp_path / "run"
    args = flags_for(tiny_mnist_dir, train__num_steps=8, train__ckpt_every=4)
    periodic = [
        "--config.fid.every=4",
        "--config.fid.num_samples=8",
        "--config.train.best_metric=fid",
    ]
    result = run_main(f"--workdir={workdir}", *args, *fid_flags, *periodic, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    fids = [r["fid"] for r in records if "fid" in r]
    assert len(fids) == 2 and all(np.isfinite(fids)), records
    assert (workdir / "best").is_dir() and any((workdir / "best").iterdir())

    result = run_main(
        f"--workdir={workdir}", "--mode=eval", *args, *fid_flags,
        "--config.fid.eval_samples=8", "--config.fid.protocol=both", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((workdir / "eval" / "fid_8.json").read_text())
    assert set(record["fid"]) == {"tf", "pytorch_fid"}
    assert all(np.isfinite(v) and v > 0 for v in record["fid"].values())
    for key in ("num_samples", "sampler", "steps", "protocols", "checkpoint_step", "wall_s"):
        assert key in record
    assert record["num_samples"] == 8 and record["checkpoint_step"] == 8
    assert record["reference"]["tf"]["split"] == "test"
    assert record["reference"]["tf"]["count"] == 64
    assert record["seed"] == 0 and record["sample_stream"] == 2  # images 0..7 of that key
    assert record["image_indices"] == [0, 8]


def test_reference_from_another_protocol_is_refused(tmp_path, tiny_mnist_dir, fid_flags):
    """A statistics file made with the tf protocol must not serve a pytorch_fid evaluation."""
    from diffusion_jax import fid

    rng = np.random.default_rng(0)
    fake = fid.FidStatistics(
        rng.normal(size=2048), np.eye(2048), 10, "tf", "x" * 64, "mnist", "test"
    )
    path = tmp_path / "ref.npz"
    fid.save_statistics(path, fake)
    args = flags_for(tiny_mnist_dir)
    result = run_main(
        f"--workdir={tmp_path / 'run'}", "--mode=fid_stats", *args, *fid_flags,
        "--config.fid.protocol=pytorch_fid", f"--config.fid.ref_stats={path}", timeout=300,
    )  # fmt: skip
    # fid_stats recomputes (and replaces) a file; evaluation must refuse a mismatching one.
    assert result.returncode == 0, result.stderr[-3000:]
    assert fid.load_statistics(path).protocol == "pytorch_fid"
    fid.save_statistics(path, fake)
    # --mode=eval reads the checkpoint first (there is none here); the watcher builds its
    # Evaluator (extractors + references, what every evaluation shares) before it looks.
    result = run_main(
        f"--workdir={tmp_path / 'run'}", "--mode=eval_watch", *args, *fid_flags,
        "--config.fid.protocol=pytorch_fid", f"--config.fid.ref_stats={path}", timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "protocol" in result.stderr and no_traceback(result.stderr), result.stderr[-2000:]


def test_eval_of_an_empty_workdir_fails_before_any_inception_work(tmp_path, monkeypatch):
    """No checkpoint: a UserError at once, not after hours of reference statistics."""
    from diffusion_jax import evaluate, fid
    from diffusion_jax.errors import UserError

    def forbidden(*args, **kwargs):
        raise AssertionError("Inception work before the checkpoint was checked")

    for name in ("make_extractors", "reference_statistics"):
        monkeypatch.setattr(evaluate, name, forbidden)
    monkeypatch.setattr(fid, "FeatureExtractor", forbidden)
    config = tiny_config("unused")
    config.fid.eval_samples = 8
    with pytest.raises(UserError, match="No checkpoint"):
        evaluate.run_eval(config, str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()  # and nothing was created there
