"""The course's U-Net (diffusion_jax/nets/course_unet.py): its size, its conditioning, its
BatchNorm, and its use as DDPM's network (`config.model.arch = "course"`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_utils import compilation_cache, tiny_config

from diffusion_jax import batches
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.methods import ddpm
from diffusion_jax.nets.course_unet import CourseUNet
from diffusion_jax.nets.unet import count_params


@pytest.fixture(scope="module", autouse=True)
def _cache():
    with compilation_cache():
        yield


# ---------------------------------------------------------------------------------------------
# Size: the course's PyTorch layer list, counted by hand


def _conv(cin: int, cout: int, k: int) -> int:  # nn.Conv2d / nn.ConvTranspose2d with bias
    return k * k * cin * cout + cout


def _norm(c: int) -> int:  # BatchNorm2d / GroupNorm: scale and shift (running stats are buffers)
    return 2 * c


def _linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def _course_param_count(c: int, d: int, num_classes: int, time: bool) -> int:
    conv = lambda i, o: _conv(i, o, 3) + _norm(o)  # Conv
    conv_block = lambda i, o: conv(i, o) + conv(o, o)
    down_block = lambda i, o: _conv(i, o, 3) + _norm(o) + conv_block(o, o)
    up_block = lambda i, o: _conv(i, o, 4) + _norm(o) + conv_block(o, o)
    fc_block = lambda i, o: _linear(i, o) + _linear(o, o)
    n = conv_block(c, d) + down_block(d, d) + down_block(d, 2 * d)
    n += _conv(2 * d, 2 * d, 7) + _norm(2 * d)  # Flatten has none; Unflatten
    n += up_block(4 * d, d) + up_block(2 * d, d) + conv_block(2 * d, d) + _conv(d, c, 3)
    if time:
        n += fc_block(1, 2 * d) + fc_block(1, d)
    if num_classes:
        n += fc_block(num_classes, 2 * d) + fc_block(num_classes, d)
    return n


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(hidden=64),  # the unconditional U-Net at the DDPM option's default width
        dict(hidden=64, num_timesteps=300),
        dict(hidden=64, num_timesteps=300, num_classes=10),
        dict(hidden=128, norm="batch"),  # the course's single-step denoiser
        dict(hidden=8, in_channels=3, norm="none", num_classes=4),
    ],
)
def test_parameter_count_and_output_shape(kwargs):
    model = nnx.eval_shape(lambda: CourseUNet(rngs=nnx.Rngs(0), **kwargs))
    c, d = kwargs.get("in_channels", 1), kwargs["hidden"]
    classes, time = kwargs.get("num_classes", 0), bool(kwargs.get("num_timesteps", 0))
    expected = _course_param_count(c, d, classes, time)
    if kwargs.get("norm") == "none":
        expected -= sum(_norm(w) for w in [d] * 13 + [2 * d] * 4)  # every norm's 2 * width
    assert count_params(model) == expected
    x = jax.ShapeDtypeStruct((3, 28, 28, c), jnp.float32)
    t = jnp.zeros((3,), jnp.int32) if time else None
    out = nnx.eval_shape(lambda m, x: m(x, t), model, x)
    assert out.shape == (3, 28, 28, c) and out.dtype == jnp.float32


def test_known_counts():
    """The unconditional D = 64 U-Net has 1,975,361 parameters, the course's D = 128 denoiser
    7,891,073 (the hand count above, evaluated once)."""
    assert _course_param_count(1, 64, 0, False) == 1_975_361
    assert _course_param_count(1, 128, 0, False) == 7_891_073


@pytest.fixture(scope="module")
def cond_model() -> CourseUNet:
    """A time- and class-conditioned U-Net (D = 8, T = 300, 10 classes), built once (eager
    initialisation compiles one small program per distinct shape)."""
    return CourseUNet(hidden=8, num_timesteps=300, num_classes=10, rngs=nnx.Rngs(1))


def _inputs(batch: int = 4, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.PRNGKey(seed), (batch, 28, 28, 1), minval=-1, maxval=1)


def test_initialisation_is_pytorchs_default(cond_model):
    """Weights and biases uniform in +-1/sqrt(fan_in), PyTorch's fan-in (out * k * k for a
    transposed conv): every value within the bound and the extremes close to it."""
    m, d = cond_model, 8
    layers = {
        "conv 3x3, 1 -> D": (m.conv_in.conv1.conv, 1 * 9),
        "conv 3x3 stride 2, D -> 2D": (m.down2.down.conv, d * 9),
        "transposed 4x4, 4D -> D": (m.up1.up.conv, d * 16),
        "transposed 7x7, 2D -> 2D": (m.unflatten.conv, 2 * d * 49),
        "linear 1 -> 2D": (m.fc1_t.fc1, 1),
        "linear 10 -> D": (m.fc2_c.fc1, 10),
    }
    for name, (layer, fan_in) in layers.items():
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.kernel[...], layer.bias[...]):
            p = np.abs(np.asarray(p))
            assert p.max() <= bound * (1 + 1e-6), name
            if p.size >= 256:  # max of n uniforms < 0.95 bound: probability 0.95 ** n
                assert p.max() > 0.95 * bound, name


# ---------------------------------------------------------------------------------------------
# Conditioning


def test_time_conditioning_changes_the_output_and_normalises_t(cond_model):
    """t enters as t / (T - 1): the same normalised time gives the same output for any T, and
    different times give different outputs; a scalar t broadcasts; images are independent."""
    a, x, y = cond_model, _inputs(), jnp.full((4,), 3)
    b = nnx.clone(a)
    b.num_timesteps = 1000  # same parameters, another T
    t = jnp.array([0, 100, 299, 299])
    out = a(x, t, y)
    assert not np.allclose(out[0], out[2], atol=1e-4)
    assert not np.allclose(out[1], out[2], atol=1e-4)
    np.testing.assert_allclose(a(x, 299, y), b(x, 999, y), rtol=1e-5, atol=1e-5)  # t/(T-1) = 1
    np.testing.assert_allclose(a(x, 100, y)[1], out[1], rtol=1e-5, atol=1e-5)  # scalar t
    np.testing.assert_allclose(a(x[:1], t[:1], y[:1])[0], out[0], rtol=1e-5, atol=1e-5)


def test_class_conditioning_and_the_null_label(cond_model):
    """Different classes give different outputs; y = None is the null label K (the all-zero
    one-hot vector, the same as every row dropped); a label-free model rejects labels."""
    model, x, t = cond_model, _inputs(), jnp.full((4,), 150)
    y3, y7, null = jnp.full((4,), 3), jnp.full((4,), 7), jnp.full((4,), 10)
    assert model.null_label == 10
    assert not np.allclose(model(x, t, y3), model(x, t, y7), atol=1e-4)
    np.testing.assert_array_equal(model(x, t, None), model(x, t, null))
    assert not np.allclose(model(x, t, null), model(x, t, y3), atol=1e-4)
    mixed = model(x, t, jnp.array([3, 10, 7, 10]))
    np.testing.assert_allclose(mixed[0], model(x, t, y3)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[1], model(x, t, null)[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[2], model(x, t, y7)[2], rtol=1e-5, atol=1e-5)
    unconditional = nnx.clone(model)
    unconditional.num_classes = 0
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, y3)


def test_bad_inputs_are_refused(cond_model):
    with pytest.raises(ValueError, match="28x28"):
        CourseUNet(image_size=32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs t"):
        cond_model(_inputs(), None)
    with pytest.raises(ValueError, match="shape"):
        cond_model(jnp.zeros((4, 32, 32, 1)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="does not divide"):
        nnx.eval_shape(lambda: CourseUNet(hidden=6, num_groups=4, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------------
# BatchNorm (the denoiser's variant)


def test_batchnorm_running_statistics_follow_pytorchs_momentum():
    """A train-mode call sets running mean = 0.9 * 0 + 0.1 * batch mean and running var =
    0.9 * 1 + 0.1 * batch var (biased) of the first norm's input; eval mode uses and keeps the
    running statistics, so an image's output does not depend on its batch."""
    model = CourseUNet(hidden=4, norm="batch", rngs=nnx.Rngs(3))
    x = _inputs(6, seed=1)
    first = model.conv_in.conv1
    h = np.asarray(first.conv(x), np.float64)
    model(x, None, train=True)
    np.testing.assert_allclose(first.norm.norm.mean[...], 0.1 * h.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(
        first.norm.norm.var[...], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-5, atol=1e-5
    )
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    out = model(x, None, train=False)
    jax.tree.map(np.testing.assert_array_equal, stats, nnx.state(model, nnx.BatchStat))
    np.testing.assert_allclose(out[:2], model(x[:2], None), rtol=1e-5, atol=1e-6)
    train_out = model(x[:2], None, train=True)  # batch statistics of 2 images: not the same
    assert not np.allclose(train_out, model(x, None, train=True)[:2], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# As DDPM's network


def _ddpm_config(**overrides):
    config = tiny_config("unused", **overrides)
    config.model.arch = "course"
    config.model.course_hidden = 4
    config.model.course_groups = 2
    config.train.batch_size = 4
    return config


def _fresh_state(config) -> tuple[nnx.GraphDef, state_lib.TrainState]:
    """DDPM's `init_state`, run eagerly (seconds here, where compiling it takes a minute)."""
    return ddpm.METHODS["ddpm"].init_state(config)


def test_build_model_builds_the_course_unet_from_the_config():
    config = _ddpm_config(model__num_classes=10)
    state_lib.validate_config(config)
    model = state_lib.abstract_model(config)
    assert isinstance(model, CourseUNet)
    assert (model.hidden, model.num_timesteps, model.num_classes) == (4, 100, 10)
    assert count_params(model) == _course_param_count(1, 4, 10, True)
    config.model.arch = "unet"  # the course settings do not reach unet.UNet
    assert not isinstance(state_lib.abstract_model(config), CourseUNet)


@pytest.mark.parametrize(
    ("setting", "value", "match"),
    [
        ("arch", "resnet", r"config.model.arch='resnet' is not one of"),
        ("course_hidden", 0, r"config.model.course_hidden=0 must be a positive integer"),
        ("course_groups", 3, r"num_groups=3 does not divide 4 channels"),
    ],
)
def test_bad_course_settings_name_the_setting(setting, value, match):
    config = _ddpm_config()
    config.model[setting] = value
    with pytest.raises(UserError, match=match):
        state_lib.validate_config(config)


def test_course_arch_needs_28x28():
    config = _ddpm_config(data__image_size=32)
    with pytest.raises(UserError, match=r"config.data.image_size=32 must be 28"):
        state_lib.build_model(config, nnx.Rngs(0))


def test_one_ddpm_train_step_with_the_course_unet():
    """DDPM's train step (methods.ddpm, through the Method contract) runs on the
    class-conditional course U-Net: the loss is finite and every parameter moves."""
    config = _ddpm_config(model__num_classes=10, train__label_dropout=0.5)
    graphdef, state = _fresh_state(config)
    rng = np.random.default_rng(0)
    train_data = batches.TrainData(
        images=jnp.asarray(rng.integers(0, 256, (1, 8, 28, 28, 1), dtype=np.uint8)),
        labels=jnp.asarray(rng.integers(0, 10, (1, 8)), jnp.int32),
    )
    method = ddpm.METHODS["ddpm"]  # the contract's train step, as the loop calls it
    step = jax.jit(
        functools.partial(method.train_step, config=config, static=graphdef, batch_sharding=None)
    )
    new_state, metrics = step(state, train_data)
    loss = float(metrics["loss"])
    assert np.isfinite(loss) and 0.1 < loss < 10  # eps-MSE of an untrained network: ~1
    assert int(new_state.step) == 1
    before, after = jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)
    moved = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(moved)  # every parameter (time and class FCBlocks included) got a gradient


def test_guidance_through_denoise_fn_for():
    """Sampling's eps function on the course U-Net is eps_null + w (eps_y - eps_null)."""
    config = _ddpm_config(model__num_classes=10, sample__guidance=5.0)
    graphdef, state = _fresh_state(config)
    labels = jnp.array([1, 2, 3])
    fn = state_lib.denoise_fn_for(
        config, graphdef, state.params, state_lib.build_schedule(config), labels
    )
    x, t = _inputs(3), jnp.array([5, 50, 99])
    model = nnx.merge(graphdef, state.params)
    cond, null = model(x, t, labels), model(x, t, jnp.full((3,), 10))
    np.testing.assert_allclose(fn(x, t), null + 5.0 * (cond - null), rtol=1e-4, atol=1e-5)


def test_time_layers_tell_every_timestep_apart_under_bfloat16():
    """The time FCBlocks run in float32: under bf16 compute t / (T - 1) took only 507 distinct
    values for T = 1000 (t = 998 and 999 were one input); now all 1000 embeddings differ, and at
    the course's width (D = 64) they still do after the cast to bf16 where they join the
    features."""
    model = CourseUNet(
        in_channels=1, hidden=64, num_timesteps=1000, dtype="bfloat16", rngs=nnx.Rngs(0)
    )
    t1, t2 = model.time_embeddings(jnp.arange(1000), 1000)
    assert t1.dtype == t2.dtype == jnp.float32
    for e in (t1, t2):
        assert len(np.unique(np.asarray(e), axis=0)) == 1000
        rows = np.asarray(e.astype(jnp.bfloat16).astype(jnp.float32))
        assert len(np.unique(rows, axis=0)) == 1000
    assert bool(jnp.isfinite(model(jnp.zeros((2, 28, 28, 1)), jnp.array([998, 999]))).all())
