"""Fashion-MNIST with the MNIST recipe (configs/mnist.py): 28x28 RGB, U-Net 64/128/256, 50 epochs
at batch 64, no flips (kept as in mnist.py so the two runs compare)."""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist")
    c.data.dataset = "fashion_mnist"
    return c
