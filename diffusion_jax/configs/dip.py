"""Deep Image Prior (Ulyanov et al. 2018) denoising of MNIST images: `config.method = "dip"`.

K = 8 images (test split, `dip.split`; indices 0-7), each fitted by its own skip net (3 scales of 32
channels, 4-channel skips, ~91k parameters) from a fixed 32-channel noise input to the image
plus Gaussian noise of std 25/255 (clipped), Adam lr 0.01, input perturbation 1/30, output EMA
0.99: the original denoising notebook's settings (diffusion_jax/methods/dip.py). 3000
iterations, PSNR logged every 25 (metrics.jsonl: the rise, early peak and decline as the nets
fit the noise; the output EMA starts at the first output, as in the original, so `psnr_ema`
trails `psnr` by a few hundred iterations); `--mode=sample` writes the report
(workdir/report/). About 0.1 s per iteration for the 8 images on a 2-core CPU (3000
iterations: ~5 minutes). On MNIST the noisy target's clipping halves the noise on the black
background: the noisy input is ~22.8 dB rather than 20.2 dB; an 800-iteration check (on train images
0-7, before the test split was the default) peaked at 25.0 dB (output, step ~200) and 24.7 dB
(output EMA, step ~500).

Shared settings DIP does not use: `train.batch_size` (kept = K; DIP fits its K images at every
step), the EMA of parameters (`train.ema_*`: DIP averages outputs instead, `dip.exp_weight`),
`model.*` and `diffusion.*` (the DDPM U-Net), `sample.*` and `fid.*` (DIP does not generate).
"""

from diffusion_jax.config import base_config
from diffusion_jax.methods import dip


def get_config():
    c = base_config()
    c.method = "dip"
    c.dip = dip.settings()

    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False
    c.data.num_shards = 1

    c.train.batch_size = 8  # ignored by DIP (= K, the number of images)
    c.train.lr = 0.01  # the original's Adam lr
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0  # the original does not clip (> 0: per network)
    c.train.num_steps = 3000
    c.train.log_every = 25
    c.train.ckpt_every = 500
    c.train.sample_every = 0
    c.train.keep_checkpoints = 2
    c.train.heldout_examples = 0
    c.train.tensorboard = False
    return c
