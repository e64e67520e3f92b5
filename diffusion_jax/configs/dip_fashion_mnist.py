"""Deep Image Prior on Fashion-MNIST: `configs/dip.py` (the original's settings) on images 0-7
of the Fashion-MNIST test split (28x28 grey, same net and iterations)."""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "dip")
    c.data.dataset = "fashion_mnist"
    return c
