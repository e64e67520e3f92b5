"""diffusion_jax: DDPM (Ho et al. 2020) in JAX/Flax NNX.

`diffusion_jax.load(name_or_workdir)` returns a `Pipeline` (diffusion_jax/api.py) that samples,
edits and scores a shipped pretrained model or a training run; the command line is
`python -m diffusion_jax.main` (or `diffusion-jax`).
"""

from diffusion_jax.version import __version__

__all__ = ["Pipeline", "__version__", "load"]


def __getattr__(name: str):
    # The API imports JAX and the model code: only when asked for, so `import diffusion_jax`
    # (e.g. for __version__) stays light.
    if name in ("load", "Pipeline"):
        from diffusion_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffusion_jax' has no attribute {name!r}")
