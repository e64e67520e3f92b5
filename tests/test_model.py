"""U-Net: parameter counts of the paper's models, shapes, conditioning, dropout, bf16, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.nets.unet import UNet, count_params

CIFAR10 = dict(
    image_size=32,
    in_channels=3,
    ch=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    num_groups=32,
)
# The MNIST model people know: 28x28 (RGB-converted), attention only in the middle block.
MNIST = dict(
    image_size=28,
    in_channels=3,
    ch=64,
    ch_mult=(1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(),
    time_emb_dim=256,
    num_groups=8,
)
TINY = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, num_groups=4, dropout=0.1)


def abstract(**kw) -> UNet:
    return nnx.eval_shape(lambda: UNet(**kw, rngs=nnx.Rngs(0)))


def random_unet(seed: int = 0, **kw) -> UNet:
    """A UNet with NumPy-random parameters (no zero-init branches, no XLA RNG compiles)."""
    graphdef, state = nnx.split(abstract(**kw))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.2, p.shape), p.dtype), state)
    return nnx.merge(graphdef, state)


@nnx.jit(static_argnames="train")
def forward(model, x, t, y=None, train=False, rngs=None):
    return model(x, t, y, train=train, rngs=rngs)


def test_cifar10_param_count_matches_the_paper():
    n = count_params(abstract(**CIFAR10))
    print(f"CIFAR-10 U-Net: {n:,} parameters")
    assert abs(n - 35.7e6) / 35.7e6 < 0.005
    assert n == 35_746_307  # the original TF model, parameter for parameter


def test_mnist_param_count():
    n = count_params(abstract(**MNIST))
    print(f"MNIST U-Net (28x28x3, ch 64, (1,2,4), attn middle only): {n:,} parameters")
    assert n == 14_406_531
    # Attention at 14x14 as well would give 14,738,051; at 7x7, 15,724,931.


def test_label_table_has_a_null_row():
    kw = dict(TINY, image_size=8, in_channels=1, attn_resolutions=(), time_emb_dim=24)
    n_cond = count_params(abstract(**kw, num_classes=10))
    assert n_cond == count_params(abstract(**kw)) + 11 * 24


def test_initialisation_like_the_paper():
    """Zero-init output conv: the fresh model predicts eps ~ 0; params are float32."""
    # rbg only to keep XLA's CPU compile of the initialisers short; the distributions are the same.
    with jax.default_prng_impl("unsafe_rbg"):
        model = UNet(
            image_size=8,
            in_channels=1,
            ch=8,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=(8,),
            num_groups=4,
            rngs=nnx.Rngs(0),
        )
    params = nnx.state(model, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))) == []  # parameters only
    assert np.abs(np.asarray(model.conv_out.kernel[...])).max() < 1e-4  # scale 1e-10
    k = np.abs(np.asarray(model.conv_in.kernel[...]))  # fan_avg uniform, scale 1
    limit = np.sqrt(3 / ((3 * 3 * 1 + 3 * 3 * 8) / 2))
    assert limit >= k.max() > 0.8 * limit
    out = model(jnp.ones((2, 8, 8, 1)), jnp.array([0, 999]))
    assert float(jnp.abs(out).max()) < 1e-3


@pytest.mark.parametrize(
    "image_size,in_channels,num_classes", [(28, 1, 0), (28, 3, 10), (32, 3, 10)]
)
def test_shapes_and_conditioning(image_size, in_channels, num_classes):
    """ch_mult (1, 2, 2): 28 -> 14 -> 7 (odd) and back, 32 -> 16 -> 8. One compile per case."""
    kw = dict(
        TINY,
        image_size=image_size,
        in_channels=in_channels,
        num_classes=num_classes,
        attn_resolutions=(image_size // 2,),
    )
    model = random_unet(**kw)
    assert model.null_label == num_classes
    x1 = np.random.default_rng(1).uniform(-1, 1, (1, image_size, image_size, in_channels))
    x = jnp.asarray(np.repeat(x1, 4, axis=0), jnp.float32)
    t = jnp.array([3, 4, 700, 700], jnp.int32)
    y = jnp.array([2, 2, 1, num_classes]) if num_classes else None
    out = forward(model, x, t, y)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out[0], out[1])  # t matters
    if num_classes:
        assert not np.allclose(out[2], out[3])  # labels matter
        if image_size == 28:  # y=None means the null label (one more compile, so only once)
            np.testing.assert_allclose(forward(model, x[3:], t[3:]), out[3:], rtol=1e-5, atol=1e-5)


def test_dropout_keys_come_from_the_call():
    model = random_unet(
        image_size=8,
        in_channels=1,
        ch=8,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(),
        num_groups=4,
        dropout=0.5,
    )
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([1, 2])
    eval_out = forward(model, x, t)
    a = forward(model, x, t, train=True, rngs=nnx.Rngs(dropout=0))
    b = forward(model, x, t, train=True, rngs=nnx.Rngs(dropout=0))
    c = forward(model, x, t, train=True, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, eval_out)
    with pytest.raises(ValueError, match="rngs"):
        model(x, t, train=True)


def test_bfloat16_compute():
    kw = dict(
        image_size=8,
        in_channels=3,
        ch=16,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(8,),
        num_groups=4,
    )
    m32 = random_unet(**kw)
    m16 = nnx.merge(nnx.graphdef(abstract(**kw, dtype="bfloat16")), nnx.state(m32))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16)))
    x, t = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3), jnp.array([5, 500])
    out16, out32 = forward(m16, x, t), forward(m32, x, t)
    assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16)))
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 1e-4 < rel < 0.1, rel  # bf16 really computes in bf16, and stays close
    jaxpr = str(jax.make_jaxpr(lambda x: m16(x, t))(x))
    assert "conv_general_dilated" in jaxpr and "bf16" in jaxpr


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(image_size=30, ch_mult=(1, 2, 2)), r"image_size=30.*ch_mult=\(1, 2, 2\)"),
        (dict(image_size=28, attn_resolutions=(16,)), r"attn_resolutions.*\[28, 14, 7\]"),
        (dict(image_size=28, num_groups=5), "num_groups=5"),
        (dict(image_size=28, dtype="float16"), "dtype='float16'"),
        (dict(image_size=28, dropout=1.0), "dropout=1.0"),
        (dict(image_size=28, in_channels=0), "in_channels=0"),
        (dict(image_size=28, num_classes=-1), "num_classes=-1"),
    ],
)
def test_value_errors_name_the_setting(kw, match):
    cfg = dict(in_channels=1, ch=16, ch_mult=(1, 2, 2), attn_resolutions=(), num_groups=4)
    with pytest.raises(ValueError, match=match):
        abstract(**{**cfg, **kw})


def test_labels_on_unconditional_model_are_an_error():
    model = random_unet(
        image_size=8,
        in_channels=1,
        ch=8,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(),
        num_groups=4,
    )
    with pytest.raises(ValueError, match="unconditional"):
        model(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))


def _spread_qk(spread: float, dtype) -> tuple[jax.Array, jax.Array]:
    """bf16-representable q, k (so both dtypes see the same inputs) with logits spanning about
    +-spread: the precision of the attention arithmetic is all that differs between dtypes."""
    rng = np.random.default_rng(0)
    c = 64
    q = rng.normal(size=(2, 32, c))
    k = rng.normal(size=(2, 48, c))
    logits = np.einsum("bqc,bkc->bqk", q, k) / np.sqrt(c)
    q = q * spread / np.abs(logits).max()
    as_bf16 = lambda a: jnp.asarray(a, jnp.bfloat16).astype(dtype)  # noqa: E731
    return as_bf16(q), as_bf16(k)


@pytest.mark.parametrize("spread", [1.0, 4.0, 9.0])
def test_bf16_attention_weights_match_float32(spread):
    from diffusion_jax.nets.unet import attention_weights

    q16, k16 = _spread_qk(spread, jnp.bfloat16)
    q32, k32 = _spread_qk(spread, jnp.float32)
    w16 = attention_weights(q16, k16)
    w32 = np.asarray(attention_weights(q32, k32), np.float64)
    q64, k64 = np.asarray(q32, np.float64), np.asarray(k32, np.float64)
    logits = np.einsum("bqc,bkc->bqk", q64, k64) / 8.0
    exact = np.exp(logits - logits.max(-1, keepdims=True))
    exact /= exact.sum(-1, keepdims=True)
    assert w16.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(w16) - exact) / exact) < 1e-3
    assert np.max(np.abs(w32 - exact) / exact) < 1e-4
    # The defect this guards against: logits rounded to bf16 before the softmax.
    rounded = jnp.einsum("bqc,bkc->bqk", q16, k16).astype(jnp.float32) / 8.0
    off = np.max(np.abs(np.asarray(jax.nn.softmax(rounded, -1)) - exact) / exact)
    assert off > 1e-3, off  # would fail the bound above


def test_bf16_attention_block_and_unet_within_tolerance():
    """Same float32 parameters, bf16 vs float32 compute: the attention block agrees to 2%, the
    U-Net's eps to 3% (relative L2; bf16 has 8 mantissa bits, ~0.4% per rounding)."""
    from diffusion_jax.nets.unet import AttnBlock

    block = nnx.eval_shape(lambda: AttnBlock(32, num_groups=4, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(block)
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.3, p.shape), p.dtype), state)
    b32 = nnx.merge(graphdef, state)
    b16 = nnx.merge(
        nnx.graphdef(
            nnx.eval_shape(
                lambda: AttnBlock(32, num_groups=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
            )
        ),
        state,
    )
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 32)), jnp.float32)
    y32 = b32(x) - x
    y16 = b16(x).astype(jnp.float32) - x
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert rel < 0.02, rel

    kw = dict(image_size=8, in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(8, 4), num_groups=4)  # fmt: skip
    m32 = random_unet(**kw)
    m16 = nnx.merge(nnx.graphdef(abstract(**kw, dtype="bfloat16")), nnx.state(m32))
    x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    t = jnp.array([3, 700])
    out16, out32 = forward(m16, x, t), forward(m32, x, t)
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    print(f"bf16 vs float32 U-Net eps: relative L2 {rel:.4f}")
    assert rel < 0.03, rel


def test_cudnn_attention_needs_bf16():
    with pytest.raises(ValueError, match="bfloat16"):
        abstract(image_size=8, in_channels=1, **TINY, attn_resolutions=(), attention="cudnn")
    with pytest.raises(ValueError, match="attention='flash'"):
        abstract(image_size=8, in_channels=1, **TINY, attn_resolutions=(), attention="flash")
