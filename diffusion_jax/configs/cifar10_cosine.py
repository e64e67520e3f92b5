"""CIFAR-10 with the cosine schedule (Nichol & Dhariwal 2021) and T=300; otherwise as cifar10.py."""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "cifar10")
    c.diffusion.num_timesteps = 300
    c.diffusion.schedule = "cosine"
    return c
