"""Builds tests/fixtures/fid_reference.npz with torch + TensorFlow (run once, CPU only).

    CUDA_VISIBLE_DEVICES="" python scripts/make_fid_fixture.py            # writes the fixture
    CUDA_VISIBLE_DEVICES="" python scripts/make_fid_fixture.py crosscheck  # independent FID

The fixture holds uint8 source images (32 MNIST, 32 CIFAR-10, 8 seeded noise images) and the
features that the TorchScript network *run by torch* gives for them after our `tf`
preprocessing (so the network is compared alone), plus references for the preprocessing:
TF's legacy `resize_bilinear` and torch's `F.interpolate` as one-axis interpolation matrices
and on a few whole images, and a few end-to-end features through TF's / torch's own resizes.

`crosscheck` computes the MNIST train[:1000] vs test[:1000] FID (tf protocol) with no code
from diffusion_jax: TF resize, torch network, NumPy covariance, SciPy sqrtm.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TORCHSCRIPT = DATA / "inception-2015-12-05_fid_torchscript.pt"
SUBSAMPLE = 7  # whole-image resize references keep every 7th row and column


def _torch_net():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()


def _torch_features(net, x_nhwc: np.ndarray, batch: int = 16) -> np.ndarray:
    """Runs the TorchScript network (no resize/normalisation inside) on NHWC float32 input."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x_nhwc), batch):
            t = torch.from_numpy(np.ascontiguousarray(x_nhwc[i : i + batch].transpose(0, 3, 1, 2)))
            out.append(net(t).numpy())
    return np.concatenate(out).astype(np.float32)


def _tf_resize(x_nhwc: np.ndarray, size: tuple[int, int] = (299, 299)) -> np.ndarray:
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # fails once TF is initialised
        tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators
    with tf.device("/CPU:0"):
        y = tf.compat.v1.image.resize_bilinear(
            tf.constant(x_nhwc, tf.float32), size, align_corners=False, half_pixel_centers=False
        )
    return y.numpy()


def _torch_resize(x_nhwc: np.ndarray, size: tuple[int, int] = (299, 299)) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2), np.float32))
    y = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.numpy().transpose(0, 2, 3, 1)


def _matrix(resize_fn, n: int) -> np.ndarray:
    """`[299, n]` interpolation matrix of a resize, measured on one-hot images."""
    eye = np.eye(n, dtype=np.float32)[:, :, None, None]  # batch of n one-hot columns [n, 1, 1]
    return resize_fn(eye, (299, 1))[:, :, 0, 0].T


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def build(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import jax

    from diffusion_jax.fid.preprocess import preprocess

    with np.load(DATA / "mnist.npz") as z:
        mnist = z["x_train"][:32, :, :, None]
    with np.load(DATA / "cifar10.npz") as z:
        cifar = z["x_test"][:32]
    noise = np.random.default_rng(20151205).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)

    net = _torch_net()
    ours = jax.jit(lambda a: preprocess(a, "tf"))
    features = np.concatenate(
        [_torch_features(net, np.asarray(ours(g))) for g in (mnist, cifar, noise)]
    )

    few = [_rgb(mnist[:2]).astype(np.float32), cifar[:2].astype(np.float32)]
    tf_whole = np.concatenate([_tf_resize(g) for g in few])
    torch_whole = np.concatenate([_torch_resize(g / 255.0) for g in few])
    # End-to-end features through the *reference* resizes (independent of ours).
    feat_tf_resize = _torch_features(net, (tf_whole - 128.0) / 128.0)
    feat_torch_resize = _torch_features(net, 2.0 * torch_whole - 1.0)

    arrays = {
        "mnist": mnist,
        "cifar": cifar,
        "noise": noise,
        "features_tf": features,
        "whole_tf_sub": tf_whole[:, ::SUBSAMPLE, ::SUBSAMPLE],
        "whole_torch_sub": torch_whole[:, ::SUBSAMPLE, ::SUBSAMPLE],
        "features_via_tf_resize": feat_tf_resize,
        "features_via_torch_resize": feat_torch_resize,
    }
    for n in (28, 32, 64):
        arrays[f"matrix_tf_{n}"] = _matrix(_tf_resize, n)
        arrays[f"matrix_torch_{n}"] = _matrix(_torch_resize, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, subsample=np.int64(SUBSAMPLE), **arrays)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def build_torch_files(folder: Path) -> None:
    """Tiny `torch.save` files in both formats, to test the torch-free reader without torch."""
    import collections

    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7
    state = collections.OrderedDict(
        [
            ("a.weight", base),
            ("a.param", torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3))),
            ("b.bias", torch.tensor([1.5, -2.25, 1e-300], dtype=torch.float64)),
            ("b.index", torch.tensor([3, -1, 2**40], dtype=torch.int64)),
            ("c.transposed", base[0].t()),  # non-contiguous view of a shared storage
            ("c.slice", base.reshape(-1)[5:11]),  # storage offset 5
            ("d.half", torch.tensor([0.5, 65504.0], dtype=torch.float16)),
        ]
    )
    expected = {k: v.detach().numpy().copy() for k, v in state.items()}
    torch.save(state, folder / "tiny_state_zip.pth")
    torch.save(state, folder / "tiny_state_legacy.pth", _use_new_zipfile_serialization=False)
    np.savez(folder / "tiny_state_expected.npz", **expected)
    print(f"wrote tiny torch files to {folder}")


def crosscheck(n: int = 1000) -> None:
    import scipy.linalg

    with np.load(DATA / "mnist.npz") as z:
        sets = [z["x_train"][:n, :, :, None], z["x_test"][:n, :, :, None]]
    net = _torch_net()
    moments = []
    for imgs in sets:
        feats = []
        for i in range(0, n, 50):
            x = _tf_resize(_rgb(imgs[i : i + 50]).astype(np.float32))
            feats.append(_torch_features(net, (x - 128.0) / 128.0))
        f = np.concatenate(feats).astype(np.float64)
        moments.append((f.mean(0), np.cov(f, rowvar=False)))
    (m1, s1), (m2, s2) = moments
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    fid = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)
    print(f"MNIST train[:{n}] vs test[:{n}], tf protocol, TF resize + torch network: {fid:.6f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", default="build", choices=["build", "crosscheck"])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "fid_reference.npz")
    args = ap.parse_args()
    if args.mode == "build":
        build(args.out)
        build_torch_files(args.out.parent)
    else:
        crosscheck()


if __name__ == "__main__":
    main()
