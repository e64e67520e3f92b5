"""CIFAR-10 as in Ho et al. (2020): the 35.7M-parameter U-Net, 800k steps at batch 128."""

from diffusion_jax.config import base_config


def get_config():
    c = base_config()
    c.data.dataset = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True

    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.num_groups = 32

    c.diffusion.num_timesteps = 1000
    c.diffusion.schedule = "linear"

    c.train.batch_size = 128
    c.train.num_steps = 800_000
    c.train.lr = 2e-4
    c.train.warmup_steps = 5000
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.sample_every = 10_000
    c.train.ckpt_every = 10_000

    c.sample.num_samples = 50_000
    c.sample.sampler = "ddpm"
    return c
