"""`ddpm_cifar10_cpu.py` with the cosine schedule (Nichol & Dhariwal 2021), T = 300."""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "ddpm_cifar10_cpu")
    c.diffusion.schedule = "cosine"
    return c
