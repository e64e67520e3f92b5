"""DCGAN (Radford et al. 2016) on MNIST (28x28x1): the baselines comparison's DCGAN.

Generator z(100) -> 7x7x128 -> 14x14x64 (transposed 4x4 stride-2 convs, BatchNorm + ReLU) ->
28x28x1 (tanh); discriminator 28 -> 14x14x64 (no BatchNorm) -> 7x7x128 (BatchNorm), LeakyReLU
0.2, one logit. The training recipe of gan_mnist.py (BCE on logits, non-saturating G loss,
Adam 2e-4 b1 0.5, batch 128, 25 epochs, N(0, 0.02) init, no EMA); the sampler runs the generator
with its BatchNorm running statistics. See diffusion_jax/methods/gan.py and nets/gan.py.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "gan_mnist")
    c.method = "dcgan"
    c.gan.g_width = 64
    c.gan.d_width = 64
    return c
