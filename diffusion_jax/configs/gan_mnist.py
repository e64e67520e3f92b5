"""The course's fully connected GAN on MNIST (28x28x1): the baselines comparison's GAN.

Generator z(100) -> 256 -> 512 -> 1024 -> 784 (LeakyReLU 0.2, tanh out), discriminator
784 -> 1024 -> 512 -> 256 -> 1 (LeakyReLU 0.2; dropout 0.3 of the course is optional,
config.gan.dropout, off by default), N(0, 0.02) init, BCE on logits with the non-saturating
generator loss, Adam 2e-4 (b1 0.5, b2 0.999) for both players, batch 128, 25 epochs (468 steps
each). No EMA (config.train.ema_decay 0: the sampler uses the generator itself), no warmup, no
clipping, no held-out loss (DDPM-only). See diffusion_jax/methods/gan.py.
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import gan


def get_config():
    c = base_config()
    c.method = "gan"
    c.gan = gan.settings()

    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    t = c.train
    t.batch_size = 128
    t.lr = 2e-4
    t.num_steps = 25 * (60_000 // 128)  # 25 epochs: 11_700 steps
    t.warmup_steps = 0
    t.grad_clip = 0.0
    t.ema_decay = 0.0  # EMA == the generator; raise (e.g. 0.999) to sample from an EMA
    t.ema_warmup = False
    t.ema_halflife_images = 0.0
    t.label_dropout = 0.0
    t.log_every = 50
    t.ckpt_every = 1000
    t.sample_every = 1000
    t.heldout_examples = 0  # the held-out loss is DDPM's eps-MSE
    c.sample.batch_size = 256
    return c
