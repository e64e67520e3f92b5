"""The course's single-step denoiser on MNIST (CS180/280A "Project 5, part B", part 1).

The unconditional course U-Net (D = 128, BatchNorm) maps x + sigma * eps back to x at sigma = 0.5
(in [0, 1] pixel units, as in the course; see diffusion_jax/methods/denoiser.py), L2 loss, Adam
at 1e-4 without warm-up or clipping, batch 256, 5 epochs (60000 // 256 = 234 steps per epoch), no
EMA (ema_decay 0: the evaluated model is the trained one). `--mode=sample` writes the report:
MSE/PSNR at sigma in {0, 0.2, 0.4, 0.5, 0.6, 0.8, 1} on the first 1000 test images.
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import denoiser

EPOCHS, BATCH, TRAIN_IMAGES = 5, 256, 60_000


def get_config():
    c = base_config()
    c.method = "denoiser"
    c.denoiser = denoiser.settings()

    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    t = c.train
    t.batch_size = BATCH
    t.num_steps = EPOCHS * (TRAIN_IMAGES // BATCH)  # 1170
    t.lr = 1e-4
    t.warmup_steps = 0
    t.grad_clip = 0.0
    t.ema_decay = 0.0  # no EMA, as in the course
    t.ema_warmup = False
    t.ema_halflife_images = 0.0
    t.log_every = 18  # divides 1170
    t.ckpt_every = 234  # once per epoch
    t.sample_every = 0
    t.heldout_examples = 0  # DDPM's held-out eps loss does not apply
    t.best_metric = "loss"
    t.tensorboard = False

    c.sample.batch_size = 250  # the report's batch
    return c
