"""From a config to the things a run is made of: model, schedule, optimizer and `TrainState`.

`validate_config` is the one place that checks a config; every workflow calls it first so a bad
value fails before anything is compiled, with a message that names the setting.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from diffusion_jax import data, diffusion, samplers
from diffusion_jax.errors import UserError
from diffusion_jax.nets.course_unet import IMAGE_SIZE, CourseUNet
from diffusion_jax.nets.unet import UNet


@flax.struct.dataclass
class TrainState:
    """Everything training needs to continue exactly where it stopped (all of it checkpointed).

    `rng` is the root key of the data order, the diffusion noise, timesteps and dropout: each
    step derives its keys with `fold_in(rng, step)`, so a resumed run repeats the same draws.
    """

    step: jax.Array  # int32 scalar: number of optimizer updates done
    params: nnx.State
    ema_params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32[2] PRNG key


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> UNet | CourseUNet:
    """The network of `config.model` for `config.data`'s image size and channels.

    `config.model.arch`: "unet" is Ho et al.'s `nets.unet.UNet`; "course" is the CS180/280A course's
    28x28 U-Net (`nets.course_unet.CourseUNet`, GroupNorm, conditioned on t / (T - 1) and on classes
    when `num_classes > 0`), width `course_hidden`.
    """
    m = config.model
    arch = m.get("arch", "unet")  # configs saved before the setting existed are U-Nets
    _check(arch in ("unet", "course"), "model.arch", arch, "is not one of ('unet', 'course')")
    if arch == "course":
        _positive_int(config, "model.course_hidden")
        _positive_int(config, "model.course_groups")
        size = config.data.image_size
        need = f"must be {IMAGE_SIZE} for config.model.arch='course' (the course's MNIST U-Net)"
        _check(size == IMAGE_SIZE, "data.image_size", size, need)
        try:
            return CourseUNet(
                image_size=size,
                in_channels=config.data.channels,
                hidden=m.course_hidden,
                num_timesteps=config.diffusion.num_timesteps,
                num_classes=m.num_classes,
                norm="group",
                num_groups=m.course_groups,
                dtype=m.dtype,
                rngs=rngs,
            )
        except ValueError as e:
            raise UserError(f"config.model (arch='course') does not build a U-Net: {e}") from e
    kwargs = m.to_dict()
    for name in ("arch", "course_hidden", "course_groups"):  # CourseUNet's settings
        kwargs.pop(name, None)
    kwargs["ch_mult"] = tuple(kwargs["ch_mult"])
    kwargs["attn_resolutions"] = tuple(kwargs["attn_resolutions"])
    try:
        return UNet(
            image_size=config.data.image_size,
            in_channels=config.data.channels,
            rngs=rngs,
            **kwargs,
        )
    except ValueError as e:
        raise UserError(f"config.model does not build a U-Net: {e}") from e


def abstract_model(config: ml_collections.ConfigDict) -> UNet:
    """The model with shapes only (no memory, no compute): for graphdefs and restore templates."""
    return nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))


def build_schedule(config: ml_collections.ConfigDict) -> diffusion.Schedule:
    return diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps` (Ho et al.), then constant, or with
    `lr_decay_rate < 1` multiplied by it once every `lr_decay_steps` steps after the warm-up
    (staircase exponential decay)."""
    t = config.train
    after: optax.Schedule = optax.constant_schedule(t.lr)
    if t.lr_decay_rate < 1:
        after = optax.exponential_decay(
            t.lr, transition_steps=int(t.lr_decay_steps), decay_rate=float(t.lr_decay_rate),
            staircase=True,
        )  # fmt: skip
    if t.warmup_steps > 0:
        warmup = optax.linear_schedule(0.0, t.lr, t.warmup_steps)
        return optax.join_schedules([warmup, after], [t.warmup_steps])
    return after


def adam(
    config: ml_collections.ConfigDict, b1: float = 0.9, b2: float = 0.999, *, clip: bool = True
) -> optax.GradientTransformation:
    """Adam (eps 1e-8) at `config.train`'s learning rate (warm-up, decay), behind global-norm
    clipping at `config.train.grad_clip` unless `clip=False` (a method that clips per network).

    A disabled clip (grad_clip = 0) is `identity`, so the optimizer state has the same
    structure either way (a checkpoint restores whether or not clipping is on). Every method's
    optimizer is this one, with its own betas.
    """
    opt = optax.adam(learning_rate(config), b1=float(b1), b2=float(b2), eps=1e-8)
    if not clip:
        return opt
    g = config.train.grad_clip
    return optax.chain(optax.clip_by_global_norm(g) if g > 0 else optax.identity(), opt)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """DDPM's optimizer: `adam` with Ho et al.'s betas, clipped."""
    return adam(config)


def ema_update(config: ml_collections.ConfigDict, step: jax.Array, ema: Any, new: Any) -> Any:
    """decay * ema + (1 - decay) * new, leaf by leaf, with `ema_decay(config, step)`: the one
    EMA update of every method (parameters, and BatchNorm statistics where a net has them)."""
    decay = ema_decay(config, step)
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def ema_decay(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
    """EMA decay of update `step` (0-based: `step * batch_size` images seen before it).

    By half-life (`ema_halflife_images > 0`, EDM's rule): `0.5 ** (batch / h)` with
    `h = min(halflife, ema_rampup_ratio * images_seen)` (ratio 0: no ramp-up), so after N
    images the initial parameters weigh `0.5 ** (N / halflife)` for any batch size. Otherwise
    the fixed `ema_decay`, with `ema_warmup` capping it at `(1 + n) / (10 + n)`.
    """
    t = config.train
    if t.ema_halflife_images > 0:
        batch = float(t.batch_size)
        halflife = jnp.float32(t.ema_halflife_images)
        if t.ema_rampup_ratio > 0:
            seen = jnp.asarray(step, jnp.float32) * batch
            halflife = jnp.minimum(halflife, t.ema_rampup_ratio * seen)
        return jnp.power(0.5, batch / jnp.maximum(halflife, 1e-8)).astype(jnp.float32)
    decay = jnp.float32(t.ema_decay)
    if t.ema_warmup:
        n = jnp.asarray(step, jnp.float32)
        decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return decay


def _init_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, TrainState]:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    model = build_model(config, nnx.Rngs(params=init_key))
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),  # EMA starts at the init, not at zeros
        opt_state=build_optimizer(config).init(params),
        rng=train_key,
    )
    return graphdef, state


def graphdef_of(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The static structure that `nnx.merge(graphdef, params)` turns back into a model."""
    graphdef, _ = nnx.split(abstract_model(config), nnx.Param)
    return graphdef


def init_train_state(
    config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """Fresh parameters (float32), EMA = parameters, Adam state, step 0.

    Initialisation is compiled, with `sharding` (usually replicated) as the output layout, so the
    state is created in place on the devices and is the same for any number of devices.
    `nnx.merge(graphdef, state.params)` is the model.
    """
    graphdef = None

    def init() -> TrainState:
        nonlocal graphdef  # static structure, recorded while tracing (the model is built once)
        graphdef, state = _init_state(config)
        return state

    state = jax.jit(init, out_shardings=sharding)()
    return graphdef, state


def abstract_train_state(
    config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef and the shapes, dtypes and shardings of `init_train_state`'s state, without
    computing anything (restore targets, checkpoint compatibility checks)."""
    graphdef, params = nnx.split(abstract_model(config), nnx.Param)
    shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=jax.eval_shape(build_optimizer(config).init, params),
        rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)),
    )
    with_sharding = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes
    )
    return graphdef, with_sharding


def eps_fn_for(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    schedule: diffusion.Schedule,
):
    """The network as eps(x_t, t, labels or None) for the given (EMA or any) parameters:
    x0/v predictions converted to eps. Labels are [B] ints (`num_classes` = the null label) on
    class-conditional models, None on unconditional ones. `denoise_fn_for` and the toolbox
    (`edit_workflow.Model`, `dip_prior`) all build on it."""
    model = nnx.merge(graphdef, params)
    prediction = config.diffusion.prediction

    def cond_fn(x, t, y=None):
        return diffusion.eps_from_output(schedule, x, t, model(x, t, y), prediction)

    return cond_fn


def labelled_fn(
    cond_fn, num_classes: int, labels: jax.Array | int | None = None, guidance: float = 1.0
) -> diffusion.DenoiseFn:
    """An eps(x_t, t, labels) function (`eps_fn_for`) as the (x_t, t) -> eps the samplers take:
    the plain model on unconditional models (`num_classes` 0; labels ignored); on conditional
    ones the null label's estimate (the unconditional one, one forward) when `labels` is None,
    else classifier-free guidance with weight `guidance` toward `labels` ([B] ints, or one
    class for every image)."""
    if not num_classes:
        return lambda x, t: cond_fn(x, t, None)
    if labels is None:
        return lambda x, t: cond_fn(x, t, jnp.full(x.shape[:1], num_classes, jnp.int32))
    if isinstance(labels, int):
        label = labels

        def guided(x, t):
            y = jnp.full(x.shape[:1], label, jnp.int32)
            return samplers.classifier_free_guidance(cond_fn, y, guidance, num_classes)(x, t)

        return guided
    return samplers.classifier_free_guidance(cond_fn, labels, guidance, num_classes)


def denoise_fn_for(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    schedule: diffusion.Schedule,
    labels: jax.Array | None = None,
) -> diffusion.DenoiseFn:
    """The eps-predicting function the samplers take, for EMA (or any) parameters.

    Converts x0/v predictions to eps, and for class-conditional models applies classifier-free
    guidance with `config.sample.guidance` toward `labels`.
    """
    num_classes = config.model.num_classes
    if num_classes and labels is None:
        raise ValueError("a class-conditional model needs labels to sample")
    cond_fn = eps_fn_for(config, graphdef, params, schedule)
    return labelled_fn(cond_fn, num_classes, labels, config.sample.guidance)


def record_steps(config: ml_collections.ConfigDict, count: int = 8) -> tuple[int, ...]:
    """Timesteps of the denoising picture: `config.sample.record_steps`, or by default `count`
    evenly spaced among the timesteps the configured sampler visits (noisiest first)."""
    steps = tuple(int(s) for s in config.sample.record_steps)
    if steps:
        return steps
    visited = samplers.visited_timesteps(build_schedule(config), **sample_settings(config))
    picks = np.round(np.linspace(0, len(visited) - 1, min(count, len(visited)))).astype(int)
    return tuple(dict.fromkeys(int(visited[i]) for i in picks))


def num_shards(config: ml_collections.ConfigDict) -> int:
    """`config.data.num_shards`, with 0 meaning one shard per process."""
    return int(config.data.num_shards) or jax.process_count()


# ---------------------------------------------------------------------------------------------
# Validation


def _check(ok: bool, name: str, value, requirement: str) -> None:
    if not ok:
        raise UserError(f"config.{name}={value!r} {requirement}.")


def _positive_int(config, name: str) -> None:
    value = _get(config, name)
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _check(ok, name, value, "must be a positive integer")


def _get(config, name: str):
    node = config
    for part in name.split("."):
        node = node[part]
    return node


def _one_of(config, name: str, choices) -> None:
    value = _get(config, name)
    _check(value in choices, name, value, f"is not one of {tuple(choices)}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise `UserError` naming the first bad setting (e.g. `config.train.lr=-1 ...`).

    Checks the settings every method shares (seed, data, train, fid, sample batch) and, for
    `config.method == "ddpm"`, DDPM's. `methods.validate_config` adds another method's own.
    """
    if config is None:
        raise UserError("No config given: pass --config=configs/<name>.py.")
    try:
        _validate(config)
    except (KeyError, AttributeError) as e:
        raise UserError(
            f"The config lacks the setting {e}; start configs from "
            "diffusion_jax.config.base_config() so every field exists."
        ) from e


def _non_finite(node, prefix: str = "") -> list[str]:
    """`a.b=inf` for every float setting that is NaN or infinite (no setting means those)."""
    out = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out += _non_finite(value, f"{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"config.{name}={value}")
    return out


def _unknown_settings(config: ml_collections.ConfigDict) -> list[str]:
    """`config.train.lrx (did you mean lr?)` for every setting of a shared section that
    `base_config()` does not have: a typo in a config file would otherwise be ignored (flags
    are checked by ml_collections already). Method sections (config.gan, ...) are the
    method's to check."""
    import difflib

    from diffusion_jax.config import base_config

    base, out = base_config(), []
    for section, defaults in base.items():
        if not isinstance(defaults, ml_collections.ConfigDict) or section not in config:
            continue
        given = config[section]
        if not isinstance(given, ml_collections.ConfigDict):
            continue
        for key in given:
            if key not in defaults:
                near = difflib.get_close_matches(key, list(defaults.keys()), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                out.append(f"config.{section}.{key}{hint}")
    return out


def _validate(config: ml_collections.ConfigDict) -> None:
    unknown = _unknown_settings(config)
    if unknown:
        raise UserError(
            f"{', '.join(unknown)}: no such setting. The config file sets a field that "
            "diffusion_jax.config.base_config() does not have; fix the name there."
        )
    bad = _non_finite(config)
    if bad:
        raise UserError(f"{', '.join(bad)}: settings must be finite numbers.")
    seed = config.seed
    ok = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63
    _check(ok, "seed", seed, "must be an integer in [0, 2**63)")
    _one_of(config, "data.dataset", data.DATASETS)
    _positive_int(config, "data.image_size")
    _one_of(config, "data.channels", (1, 3))
    shards = config.data.num_shards
    _check(isinstance(shards, int) and shards >= 0, "data.num_shards", shards, "must be >= 0")

    t = config.train
    for name in ("batch_size", "num_steps", "log_every", "ckpt_every", "keep_checkpoints"):
        _positive_int(config, f"train.{name}")
    _positive_int(config, "train.steps_per_call")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _check(
        0 < t.lr_decay_rate <= 1, "train.lr_decay_rate", t.lr_decay_rate, "must be in (0, 1]"
    )  # fmt: skip
    steps = t.lr_decay_steps
    ok = isinstance(steps, int) and steps >= 0
    _check(ok, "train.lr_decay_steps", steps, "must be an integer >= 0")
    _check(
        t.lr_decay_rate == 1 or steps > 0,
        "train.lr_decay_steps",
        t.lr_decay_steps,
        f"must be a positive integer when config.train.lr_decay_rate={t.lr_decay_rate} < 1 "
        "(the steps between two decays, e.g. one epoch)",
    )
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 = off)")
    _check(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "must be in [0, 1)")
    _check(
        t.ema_halflife_images >= 0,
        "train.ema_halflife_images",
        t.ema_halflife_images,
        "must be >= 0 (0 = use config.train.ema_decay)",
    )
    _check(t.ema_rampup_ratio >= 0, "train.ema_rampup_ratio", t.ema_rampup_ratio, "must be >= 0")
    _check(t.sample_every >= 0, "train.sample_every", t.sample_every, "must be >= 0 (0 = off)")
    _check(t.time_budget_s >= 0, "train.time_budget_s", t.time_budget_s, "must be >= 0 (0 = off)")
    k = t.steps_per_call
    for name in ("num_steps", "log_every", "ckpt_every", "sample_every"):
        value = t[name]
        _check(
            value % k == 0,
            f"train.{name}",
            value,
            f"must be a multiple of config.train.steps_per_call={k} (steps run {k} at a time)",
        )
    every = config.fid.every
    _check(every >= 0 and every % k == 0, "fid.every", every, f"must be >= 0 and a multiple of {k}")
    f = config.fid
    _one_of(config, "fid.protocol", ("tf", "pytorch_fid", "both"))
    _one_of(config, "fid.ref_split", data.SPLITS)
    _positive_int(config, "fid.batch_size")
    _check(f.eval_samples >= 2, "fid.eval_samples", f.eval_samples, "must be >= 2")
    _check(
        f.num_samples == 0 or f.num_samples >= 2,
        "fid.num_samples",
        f.num_samples,
        "must be 0 (off) or >= 2",
    )
    fid_metrics = ("fid", "fid_tf", "fid_pytorch_fid")
    periodic_fid = bool(every and f.num_samples)
    _check(
        t.best_metric in ("auto", "loss", "heldout_loss", *fid_metrics),
        "train.best_metric",
        t.best_metric,
        f"must be 'auto', 'loss', 'heldout_loss' or one of {fid_metrics}",
    )
    _check(
        t.best_metric not in fid_metrics or periodic_fid,
        "train.best_metric",
        t.best_metric,
        "needs periodic FID (config.fid.every and config.fid.num_samples > 0)",
    )
    _check(
        t.best_metric != "heldout_loss" or t.heldout_examples > 0,
        "train.best_metric",
        t.best_metric,
        "needs config.train.heldout_examples > 0",
    )
    for name in ("heldout_examples", "heldout_timesteps", "profile_steps", "profile_start"):
        value = t[name]
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        _check(ok, f"train.{name}", value, "must be an integer >= 0")
    _check(
        not t.heldout_examples or t.heldout_timesteps > 0,
        "train.heldout_timesteps",
        t.heldout_timesteps,
        "must be > 0 when config.train.heldout_examples > 0",
    )
    n = shards or jax.process_count()
    _check(
        t.batch_size % n == 0,
        "train.batch_size",
        t.batch_size,
        f"must be a multiple of the number of data shards ({n}; config.data.num_shards)",
    )

    _positive_int(config, "sample.batch_size")
    s = config.sample
    _check(s.num_samples >= 0, "sample.num_samples", s.num_samples, "must be >= 0")
    if config.get("method", "ddpm") == "ddpm":
        _validate_ddpm(config)


def _validate_ddpm(config: ml_collections.ConfigDict) -> None:
    """DDPM's own settings: model, diffusion, sampler, guidance."""
    t = config.train
    emb = config.model.time_emb_dim
    ok = emb is None or (isinstance(emb, int) and not isinstance(emb, bool) and emb > 0)
    _check(ok, "model.time_emb_dim", emb, "must be a positive integer or None (4 * ch)")

    _one_of(config, "diffusion.schedule", diffusion.SCHEDULES)
    _one_of(config, "diffusion.prediction", diffusion.PREDICTIONS)
    _one_of(config, "diffusion.loss_weighting", diffusion.LOSS_WEIGHTINGS)
    gamma = config.diffusion.min_snr_gamma
    ok = isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0
    _check(ok, "diffusion.min_snr_gamma", gamma, "must be a number > 0")
    _positive_int(config, "diffusion.num_timesteps")

    _check(0 <= t.label_dropout < 1, "train.label_dropout", t.label_dropout, "must be in [0, 1)")
    s = config.sample
    _one_of(config, "sample.sampler", samplers.SAMPLERS)
    _one_of(config, "sample.variance", samplers.VARIANCES)
    spacings = ("auto", *samplers.spacings(s.sampler))
    _check(
        s.spacing in spacings,
        "sample.spacing",
        s.spacing,
        f"is not a spacing of config.sample.sampler={s.sampler!r}; use one of {spacings}"
        + (" (DDPM's previews run DDIM)" if s.sampler == "ddpm" else ""),
    )
    _check(s.eta >= 0, "sample.eta", s.eta, "must be >= 0")
    _check(
        s.eta == 0 or s.sampler in ("ddpm", "ddim"),
        "sample.eta",
        s.eta,
        f"is DDIM's noise and does nothing for config.sample.sampler={s.sampler!r}; set it "
        "to 0" + ("" if s.sampler.endswith("_sde") else " (or use sampler='dpm++2m_sde')"),
    )
    _check(s.guidance >= 0, "sample.guidance", s.guidance, "must be >= 0")
    num_t = config.diffusion.num_timesteps
    if s.sampler != "ddpm" or t.sample_every:
        low = samplers.min_steps(s.sampler)
        what = "DDIM steps" if s.sampler in ("ddpm", "ddim") else "network calls"
        order = f"; {s.sampler} is a multistep solver of order {low}" if low > 1 else ""
        _check(
            isinstance(s.num_steps, int) and low <= s.num_steps <= num_t,
            "sample.num_steps",
            s.num_steps,
            f"must be in [{low}, config.diffusion.num_timesteps={num_t}] ({what}{order})",
        )
    steps = tuple(s.record_steps)
    ints = all(isinstance(r, int) and not isinstance(r, bool) for r in steps)
    _check(ints, "sample.record_steps", steps, "must be integer timesteps")
    bad = [r for r in steps if not 0 <= r < num_t]
    _check(not bad, "sample.record_steps", steps, f"must lie in [0, {num_t})")
    if s.guidance != 1 and not config.model.num_classes:
        raise UserError(
            f"config.sample.guidance={s.guidance} needs a class-conditional model; set "
            "config.model.num_classes > 0 or leave guidance at 1."
        )

    abstract_model(config)  # model settings: raises UserError naming what does not fit


def sample_settings(config: ml_collections.ConfigDict, *, fast: bool = False) -> dict:
    """Keyword arguments of `samplers.sample` for `config.sample`.

    `fast` (previews during training): DDIM with `num_steps` in place of DDPM's T steps; the
    few-step samplers (DDIM, DPM-Solver++) run as configured. Spacing "auto" is the sampler's
    default (`samplers.default_spacing`).
    """
    s = config.sample
    sampler = "ddim" if fast and s.sampler == "ddpm" else s.sampler
    settings = dict(
        sampler=sampler,
        num_steps=None if sampler == "ddpm" else s.num_steps,
        variance=s.variance,
        spacing=None if s.spacing == "auto" else s.spacing,
    )
    if sampler in ("ddpm", "ddim"):
        settings["eta"] = s.eta
    return settings
