"""Preprocessing parity with TF's legacy resize and torch's F.interpolate."""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax.errors import UserError
from diffusion_jax.fid.preprocess import check_images, preprocess, resize, resize_matrix

FIXTURE = Path(__file__).parent / "fixtures" / "fid_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return dict(z)


@pytest.mark.parametrize("n", [28, 32, 64])
@pytest.mark.parametrize("protocol,key", [("tf", "tf"), ("pytorch_fid", "torch")])
def test_resize_matrix_matches_reference_kernels(ref, n: int, protocol: str, key: str) -> None:
    # Both match bit for bit; the tolerance only guards against libm differences.
    np.testing.assert_allclose(resize_matrix(n, 299, protocol), ref[f"matrix_{key}_{n}"], atol=1e-7)


def _few(ref) -> list[np.ndarray]:
    return [np.repeat(ref["mnist"][:2], 3, -1), ref["cifar"][:2]]


def test_whole_image_resize_matches_tf(ref) -> None:
    sub = int(ref["subsample"])
    ours = np.concatenate([np.asarray(resize(g.astype(np.float32), "tf")) for g in _few(ref)])
    ours = ours[:, ::sub, ::sub]
    err = np.abs(ours - ref["whole_tf_sub"]).max() / 255.0
    assert err <= 1e-6


def test_whole_image_resize_matches_torch(ref) -> None:
    sub = int(ref["subsample"])
    ours = [np.asarray(resize(g.astype(np.float32) / 255.0, "pytorch_fid")) for g in _few(ref)]
    err = np.abs(np.concatenate(ours)[:, ::sub, ::sub] - ref["whole_torch_sub"]).max()
    assert err <= 1e-6


def test_resize_matches_live_tensorflow(ref) -> None:
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed")
    with contextlib.suppress(RuntimeError):  # fails once TF is initialised
        tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators
    imgs = np.concatenate([ref["cifar"][:3], ref["noise"][:1, :32, :32]]).astype(np.float32)
    with tf.device("/CPU:0"):
        want = tf.compat.v1.image.resize_bilinear(
            imgs, (299, 299), align_corners=False, half_pixel_centers=False
        ).numpy()
    got = np.asarray(resize(imgs, "tf"))
    assert np.abs(got - want).max() / 255.0 <= 1e-6
    # The full protocol: [0, 255] -> resize -> (x - 128) / 128.
    x = np.asarray(jax.jit(lambda a: preprocess(a, "tf"))(ref["cifar"][:3]))
    np.testing.assert_allclose(x, (want[:3] - 128.0) / 128.0, atol=1e-6)


def test_preprocess_ranges_and_gray_to_rgb(ref) -> None:
    gray = ref["mnist"][:2]
    for protocol in ("tf", "pytorch_fid"):
        a = np.asarray(preprocess(gray, protocol))
        b = np.asarray(preprocess(np.repeat(gray, 3, -1), protocol))
        assert a.shape == (2, 299, 299, 3)
        np.testing.assert_allclose(a, b, atol=1e-6)  # XLA may reorder the float sums
    flat = np.full((1, 5, 5, 3), 255, np.uint8)
    assert np.asarray(preprocess(flat, "tf")).max() == pytest.approx(127 / 128)
    assert np.asarray(preprocess(flat, "pytorch_fid")).max() == pytest.approx(1.0)
    zero = np.zeros((1, 299, 299, 3), np.uint8)
    assert np.asarray(preprocess(zero, "tf")).min() == -1.0


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((2, 3, 8, 8), np.uint8),
        np.zeros((8, 8, 3), np.uint8),
    ],
)
def test_bad_images_are_rejected_with_shape_and_dtype(bad: np.ndarray) -> None:
    with pytest.raises(
        UserError, match=rf"shape {tuple(bad.shape)!r}".replace("(", r"\(").replace(")", r"\)")
    ):
        check_images(bad)


def test_unknown_protocol() -> None:
    with pytest.raises(UserError, match="Unknown FID protocol"):
        resize_matrix(32, 299, "clean")
