"""diffusion_jax: DDPM (Ho et al. 2020) in JAX/Flax NNX."""

__version__ = "0.1.0"
