"""VAE on MNIST (methods/vae.py): grey 28x28, Bernoulli likelihood, full-size recipe.

Encoder: stride-2 4x4 convs of 32 and 64 channels (28 -> 14 -> 7 px; 28 px allows two levels)
and a dense layer to a 128-dimensional Gaussian; the decoder mirrors it and the image is
tanh(logits). Loss: the summed binary cross-entropy of the pixel intensities (recon "bce", the
classic MNIST choice of Kingma & Welling) + KL (beta 1). Adam 1e-3, batch 128, no flips,
50k steps (~107 epochs), EMA 0.999 (warmed up); the held-out loss on 256 test images picks
workdir/best. Extends `vae_cifar10.py` (what is not set here is as there).
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "vae_cifar10")
    c.vae.widths = (32, 64)
    c.vae.recon = "bce"

    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    c.train.num_steps = 50_000
    c.sample.num_samples = 10_000
    return c
