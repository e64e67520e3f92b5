"""VAE on MNIST (methods/vae.py): grey 28x28, Bernoulli likelihood, full-size recipe.

Encoder: stride-2 4x4 convs of 32 and 64 channels (28 -> 14 -> 7 px; 28 px allows two levels)
and a dense layer to a 128-dimensional Gaussian; the decoder mirrors it and the image is
tanh(logits). Loss: the summed binary cross-entropy of the pixel intensities (recon "bce", the
classic MNIST choice of Kingma & Welling) + KL (beta 1). Adam 1e-3, batch 128, no flips,
50k steps (~107 epochs), EMA 0.999 (warmed up); the held-out loss on 256 test images picks
workdir/best.
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import vae


def get_config():
    c = base_config()
    c.method = "vae"
    c.vae = vae.settings()
    c.vae.latent_dim = 128
    c.vae.widths = (32, 64)
    c.vae.beta = 1.0
    c.vae.recon = "bce"

    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    c.train.batch_size = 128
    c.train.num_steps = 50_000
    c.train.lr = 1e-3
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True
    c.train.log_every = 50
    c.train.ckpt_every = 1000
    c.train.sample_every = 5000
    c.train.heldout_examples = 256

    c.sample.num_samples = 10_000
    c.sample.batch_size = 500
    return c
