"""VAE-GAN on CIFAR-10 (methods/vae_gan.py, Larsen et al. 2016), full-size recipe.

The VAE of `vae_cifar10.py` with a 256-dimensional latent, plus a discriminator of stride-2 4x4
convs (64, 128, 256 channels, leaky ReLU) that sees real, reconstructed and generated images.
The encoder minimises KL + the reconstruction error in D's last conv features, the decoder
1e-2 * that error + the non-saturating GAN loss, D the BCE of real vs the two generated kinds.
Two Adams at 2e-4 (b1 0.5, b2 0.999), no warmup or clipping, batch 128, random flips, 100k
steps, EMA 0.999 of the VAE side (warmed up). The held-out loss is a pixel diagnostic (summed
squared error + KL on 256 test images); it picks workdir/best. Extends
`vae_cifar10.py` (data, batch, steps, EMA, sampling), with `config.vae_gan` for `config.vae`.
"""

from diffusion_jax.config import from_sibling
from diffusion_jax.methods import vae_gan


def get_config():
    c = from_sibling(__file__, "vae_cifar10")  # data, schedule, EMA, sampling
    del c.vae
    c.method = "vae_gan"
    c.vae_gan = vae_gan.settings()
    c.vae_gan.latent_dim = 256
    c.vae_gan.widths = (64, 128, 256)
    c.vae_gan.disc_widths = (64, 128, 256)
    c.vae_gan.gamma = 1e-2  # the authors' code's weight

    c.train.lr = 2e-4
    return c
