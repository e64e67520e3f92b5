"""Unconditional DDPM on MNIST reduced to a 2-core CPU: the baselines comparison's DDPM.

The model of `mnist_cond_cpu.py` without classes (ch 32, mult (1, 2), one block per level, no
attention, grey 28x28), T = 1000 linear, batch 64, Adam 1e-3, EMA by half-life (10k images),
trained on as many images as the MNIST GAN and DCGAN (results/baselines.md: 400 steps = 25,600). Its
workdir also serves the toolbox's figures from an unconditional model (results/applications.md).
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_cond_cpu")
    c.model.num_classes = 0
    c.train.label_dropout = 0.0
    c.sample.guidance = 1.0
    c.train.batch_size = 64
    c.train.num_steps = 20_000
    c.train.time_budget_s = 10 * 60.0
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = False
    c.train.ema_halflife_images = 10_000.0
    c.train.ema_rampup_ratio = 0.05
    c.train.ckpt_every = 500
    c.sample.batch_size = 100
    c.fid.batch_size = 50
    return c
