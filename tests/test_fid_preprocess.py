"""Preprocessing parity with TF's legacy resize and torch's F.interpolate; quantization."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax.errors import UserError
from diffusion_jax.fid.preprocess import check_images, preprocess, quantize, resize, resize_matrix

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


def test_quantize_equals_png_roundtrip() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.1, 1.1, (16, 16, 3)).astype(np.float32)
    # Exact half-way points: (x + 1) * 127.5 + 0.5 lands on an integer -> rounds up.
    x[0, :4, 0] = np.array([k / 127.5 - 1 - 0.5 / 127.5 for k in (1, 2, 100, 255)], np.float32)
    png = io.BytesIO()
    Image.fromarray(np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)).save(png, "PNG")
    png.seek(0)
    saved = np.asarray(Image.open(png))
    np.testing.assert_array_equal(quantize(x), saved)
    np.testing.assert_array_equal(
        quantize(np.array([-1.0, 1.0, 0.0, -2.0, 3.0])), [0, 255, 128, 0, 255]
    )


def test_quantize_rejects_nan_and_ints() -> None:
    with pytest.raises(UserError, match="NaN"):
        quantize(np.array([0.0, np.nan]))
    with pytest.raises(UserError, match="float"):
        quantize(np.zeros(3, np.uint8))


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
