"""Class-conditional Fashion-MNIST reduced to a 2-core CPU: the toolbox's Fashion-MNIST demos.

`mnist_cond_cpu.py` (T = 1000 linear, label dropout 0.1, guidance 3, the 652k-parameter U-Net)
on Fashion-MNIST, with EMA by half-life (10k images) and a 12-minute budget; the figures of
results/applications.md "Fashion-MNIST" come from it.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_cond_cpu")
    c.data.dataset = "fashion_mnist"
    c.train.time_budget_s = 12 * 60.0
    c.train.ema_warmup = False
    c.train.ema_halflife_images = 10_000.0
    c.train.ema_rampup_ratio = 0.05
    c.edit.pairs = "1,3;5,7"  # trouser <-> dress, sandal <-> sneaker
    return c
