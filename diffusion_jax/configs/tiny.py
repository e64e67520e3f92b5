"""A tiny MNIST model that trains in seconds on a CPU: for tests and smoke runs only.

28x28 grey MNIST, a 2-level U-Net (ch 16, 1 block per level, no attention), T=100, batch 32.
"""

from diffusion_jax.config import base_config


def get_config():
    c = base_config()
    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    c.model.ch = 16
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.0
    c.model.num_groups = 4
    c.model.time_emb_dim = 64

    c.diffusion.num_timesteps = 100
    c.diffusion.schedule = "linear"

    c.train.batch_size = 32
    c.train.num_steps = 200
    c.train.lr = 1e-3
    c.train.warmup_steps = 0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.99
    c.train.ema_warmup = True
    c.train.log_every = 20
    c.train.sample_every = 100
    c.train.ckpt_every = 100
    c.train.keep_checkpoints = 2
    c.train.heldout_examples = 32
    c.train.heldout_timesteps = 4

    c.sample.num_samples = 64
    c.sample.batch_size = 64
    c.sample.sampler = "ddim"
    c.sample.num_steps = 10
    return c
