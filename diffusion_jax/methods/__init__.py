"""The methods the shared training loop trains: DDPM and the baselines users compare it with.

What belongs here: one module per method (`ddpm`, `gan`, `vae`, `vae_gan`, `denoiser`, `dip`)
giving the loop a state, a pure train step, a sampler and optionally a held-out metric and a
report (the `Method` contract of `base`); no loop, checkpoints, FID or I/O of their own (an
import-linter contract). Each module is imported only when a config asks for it: `get(config)`
is the `Method` of `config.method`.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import ml_collections

from diffusion_jax.errors import UserError
from diffusion_jax.methods.base import Method

# config.method -> module of diffusion_jax.methods defining `METHODS[name]`
_MODULES = {
    "ddpm": "ddpm",
    "gan": "gan",
    "dcgan": "gan",
    "vae": "vae",
    "vae_gan": "vae_gan",
    "denoiser": "denoiser",
    "dip": "dip",
}
NAMES = tuple(_MODULES)


def get(config: ml_collections.ConfigDict | str) -> Method:
    """The method of `config.method` (or of a name)."""
    name = config if isinstance(config, str) else config.get("method", "ddpm")
    if name not in _MODULES:
        raise UserError(f"config.method={name!r} is not one of {NAMES}.")
    module = importlib.import_module(f"diffusion_jax.methods.{_MODULES[name]}")
    return module.METHODS[name]


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Every check of a config: the shared settings and DDPM's (`state.validate_config`, which
    skips DDPM's for other methods), then the method's own (`Method.validate`)."""
    from diffusion_jax import state as state_lib

    state_lib.validate_config(config)
    get(config).validate(config)


def init_state(
    config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None
) -> tuple[Any, Any]:
    """(static, fresh state) of `config.method`, created in place on the devices: the method's
    `init_state` compiled with `sharding` (usually replicated) as output layout, so the state is
    the same for any number of devices."""
    method = get(config)
    static = None

    def init():
        nonlocal static  # static structure, recorded while tracing
        static, state = method.init_state(config)
        return state

    state = jax.jit(init, out_shardings=sharding)()
    return static, state


def abstract_state(
    config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None
) -> tuple[Any, Any]:
    """(static, the state's shapes, dtypes and `sharding`) without computing anything: restore
    targets and checkpoint compatibility checks."""
    method = get(config)
    static = None

    def init():
        nonlocal static
        static, state = method.init_state(config)
        return state

    shapes = jax.eval_shape(init)
    return static, jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes
    )


def best_metric(config: ml_collections.ConfigDict) -> str | None:
    """The metric that picks `workdir/best`: `config.train.best_metric`, with "auto" meaning FID
    when periodic FID is on, else the held-out loss when the method has one and it is on, else
    the method's own choice (DDPM: the training loss; None: no best checkpoint)."""
    name = config.train.best_metric
    if name != "auto":
        return name
    if config.fid.every and config.fid.num_samples:
        return "fid"
    method = get(config)
    if method.heldout is not None and config.train.heldout_examples:
        return "heldout_loss"
    return method.best_metric


__all__ = [
    "NAMES",
    "Method",
    "abstract_state",
    "best_metric",
    "get",
    "init_state",
    "validate_config",
]
