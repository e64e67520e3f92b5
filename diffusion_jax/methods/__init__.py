"""The methods the shared training loop trains: DDPM and the baselines users compare it with.

`get(config)` is the `Method` of `config.method` (see `methods.base` for the contract). Each
method lives in its own module here and is imported only when a config asks for it.
"""

from __future__ import annotations

import importlib

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
