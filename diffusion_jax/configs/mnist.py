"""MNIST at 28x28 RGB: a 3-level U-Net (ch 64, mult 1,2,4), plain Adam, 50 epochs at batch 64.

50 epochs = 50 * 60000 / 64 = 46875 steps. No warmup, no clipping, no flips (digits are not
mirror-symmetric). T = 1000 with the linear schedule, as for CIFAR-10.
"""

from diffusion_jax.config import base_config


def get_config():
    c = base_config()
    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 3
    c.data.random_flip = False

    c.model.ch = 64
    c.model.ch_mult = (1, 2, 4)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = ()  # attention in the middle block only: 14.4M parameters
    c.model.dropout = 0.1
    c.model.num_groups = 8
    c.model.time_emb_dim = 256

    c.diffusion.num_timesteps = 1000
    c.diffusion.schedule = "linear"

    c.train.batch_size = 64
    c.train.num_steps = 46_875
    c.train.lr = 2e-4
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = True
    c.train.log_every = 125
    c.train.sample_every = 5000
    c.train.ckpt_every = 5000

    c.sample.num_samples = 10_000
    c.sample.sampler = "ddpm"
    return c
