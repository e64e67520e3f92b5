"""VAE-GAN on CIFAR-10 (methods/vae_gan.py, Larsen et al. 2016 simplified), full-size recipe.

The VAE of `vae_cifar10.py` with a 256-dimensional latent, plus a discriminator of stride-2 4x4
convs (64, 128, 256 channels, leaky ReLU) that sees real, reconstructed and generated images.
Encoder + decoder minimise summed squared error + KL + 0.1 * the non-saturating GAN loss on
reconstructed and generated images. Two Adams at 2e-4 (b1 0.5, b2 0.999), no warmup or
clipping, batch 128, random flips, 100k steps, EMA 0.999 of the VAE side (warmed up). The
held-out loss is the VAE's (recon + KL on 256 test images); it picks workdir/best.
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import vae_gan


def get_config():
    c = base_config()
    c.method = "vae_gan"
    c.vae_gan = vae_gan.settings()
    c.vae_gan.latent_dim = 256
    c.vae_gan.widths = (64, 128, 256)
    c.vae_gan.disc_widths = (64, 128, 256)
    c.vae_gan.adv_weight = 0.1

    c.data.dataset = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True

    c.train.batch_size = 128
    c.train.num_steps = 100_000
    c.train.lr = 2e-4
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True
    c.train.log_every = 50
    c.train.ckpt_every = 1000
    c.train.sample_every = 5000
    c.train.heldout_examples = 256

    c.sample.num_samples = 50_000
    c.sample.batch_size = 500
    return c
