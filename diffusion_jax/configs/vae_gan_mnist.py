"""VAE-GAN on MNIST (methods/vae_gan.py, Larsen et al. 2016): grey 28x28, full-size recipe.

The networks of `vae_mnist.py` (stride-2 4x4 convs of 32 and 64 channels, a 128-dimensional
latent) plus a discriminator of stride-2 4x4 convs of 32, 64 and 128 channels (28 -> 14 -> 7 ->
4 px, leaky ReLU). Dis_l is its second conv's output (7x7x64): the encoder's loss is KL + the
reconstruction error there, the decoder's 1e-2 * that error + the non-saturating GAN loss, D's
the BCE of real vs reconstructed and generated images. Two Adams at 2e-4 (b1 0.5), batch 128,
EMA 0.999 (warmed up); the held-out diagnostic is the VAE's summed BCE + KL on 256 test images.
Extends `vae_mnist.py` (data, batch, steps, EMA, sampling), with `config.vae_gan` for `config.vae`.
"""

from diffusion_jax.config import from_sibling
from diffusion_jax.methods import vae_gan


def get_config():
    c = from_sibling(__file__, "vae_mnist")
    del c.vae
    c.method = "vae_gan"
    c.vae_gan = vae_gan.settings()
    c.vae_gan.latent_dim = 128
    c.vae_gan.widths = (32, 64)
    c.vae_gan.disc_widths = (32, 64, 128)
    c.vae_gan.feature_layer = 1
    c.vae_gan.gamma = 1e-2  # the authors' code's weight
    c.vae_gan.recon = "bce"  # the held-out diagnostic only

    c.train.lr = 2e-4
    return c
