"""Class-conditional MNIST for classifier-free guidance (Ho & Salimans 2022); else as mnist.py.

Labels are dropped to the null label with probability 0.1 during training; sampling mixes the
conditional and unconditional predictions with guidance weight 3 (1 = plain conditional model,
0 = unconditional); samples are class-balanced.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist")
    c.model.num_classes = 10
    c.train.label_dropout = 0.1
    c.sample.guidance = 3.0
    return c
