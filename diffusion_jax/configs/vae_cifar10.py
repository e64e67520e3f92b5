"""VAE on CIFAR-10 (methods/vae.py): the baselines comparison's VAE, full-size recipe.

Encoder: stride-2 4x4 convs of 64, 128, 256 channels (32 -> 16 -> 8 -> 4 px) and a dense layer
to the mean and log-variance of a 128-dimensional Gaussian; the decoder mirrors it (transposed
convs) and ends in tanh. Loss: summed squared error (a Gaussian likelihood of variance 1/2 in
[-1, 1]) + KL (beta 1), one z per image. Adam 1e-3 (b1 0.9, b2 0.999), no warmup or clipping,
batch 128, random flips, 100k steps (~256 epochs), EMA 0.999 (warmed up). The held-out loss
(negative ELBO on the first 256 test images, fixed noise) picks workdir/best.
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import vae


def get_config():
    c = base_config()
    c.method = "vae"
    c.vae = vae.settings()
    c.vae.latent_dim = 128
    c.vae.widths = (64, 128, 256)
    c.vae.beta = 1.0
    c.vae.recon = "mse"

    c.data.dataset = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True

    c.train.batch_size = 128
    c.train.num_steps = 100_000
    c.train.lr = 1e-3
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
