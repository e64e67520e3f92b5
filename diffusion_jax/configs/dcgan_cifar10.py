"""DCGAN (Radford et al. 2016) on CIFAR-10 (32x32x3, random horizontal flips).

The PyTorch DCGAN tutorial's networks at 32 px: generator z(100) -> 4x4x256 -> 8x8x128 ->
16x16x64 (transposed 4x4 stride-2 convs, BatchNorm + ReLU) -> 32x32x3 (tanh); discriminator
32 -> 16x16x64 (no BatchNorm) -> 8x8x128 -> 4x4x256 (BatchNorm), LeakyReLU 0.2, one logit.
BCE on logits, non-saturating G loss, Adam 2e-4 b1 0.5, batch 128, 25 epochs (390 steps each),
N(0, 0.02) init, no EMA. See diffusion_jax/methods/gan.py and nets/gan.py.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "dcgan_mnist")
    c.data.dataset = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.train.num_steps = 25 * (50_000 // 128)  # 25 epochs: 9_750 steps
    return c
