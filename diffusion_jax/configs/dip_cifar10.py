"""Deep Image Prior on CIFAR-10: `configs/dip.py` on images 0-7 of the CIFAR-10 test split
(32x32 RGB). Four scales (32 -> 16 -> 8 -> 4 -> 2 px) of 48 channels: natural images have more
detail to fit than digits. 2000 iterations (the output EMA's PSNR is still rising at 300): about
0.3-0.5 s per iteration on a busy 2-core CPU, ~15 minutes. A 300-iteration check (train images
0-7, before the test split was the default): noisy input 20.5 dB, output EMA 26.3 dB (oracle
best iterate 26.6 dB)."""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "dip")
    c.data.dataset = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.dip.channels_down = (48, 48, 48, 48)
    c.dip.channels_up = (48, 48, 48, 48)
    c.dip.channels_skip = (4, 4, 4, 4)
    c.train.num_steps = 2000
    return c
