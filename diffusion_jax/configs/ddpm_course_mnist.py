"""DDPM on MNIST with the course's time-conditioned U-Net (CS180/280A "Project 5, part B", part 2).

The course's recipe: T = 300 linear betas 1e-4..0.02, eps prediction, the small U-Net
(`config.model.arch = "course"`, D = 64, t / (T - 1) through FCBlocks; GroupNorm where the course
has BatchNorm, see diffusion_jax/nets/course_unet.py), grey 28x28, batch 128, Adam 1e-3, 20 epochs
(60000 // 128 = 468 steps per epoch), the course's exponential learning-rate decay (gamma =
0.1 ** (1 / epochs) once per epoch: 1e-3 -> 1e-4 over the run), no gradient clipping, no EMA
(the course has none).
"""

from diffusion_jax.config import base_config

EPOCHS, BATCH, TRAIN_IMAGES = 20, 128, 60_000


def get_config():
    c = base_config()
    c.method = "ddpm"
    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.random_flip = False

    c.model.arch = "course"
    c.model.course_hidden = 64
    c.model.course_groups = 8
    c.model.num_classes = 0

    c.diffusion.num_timesteps = 300
    c.diffusion.schedule = "linear"  # 1e-4 .. 0.02 (diffusion.make_betas' defaults)
    c.diffusion.prediction = "eps"

    t = c.train
    t.batch_size = BATCH
    t.num_steps = EPOCHS * (TRAIN_IMAGES // BATCH)  # 9360
    t.lr = 1e-3
    t.warmup_steps = 0
    t.lr_decay_rate = 0.1 ** (1 / EPOCHS)  # the course's ExponentialLR, stepped once per epoch
    t.lr_decay_steps = TRAIN_IMAGES // BATCH
    t.grad_clip = 0.0
    t.ema_decay = 0.0  # no EMA, as in the course
    t.ema_warmup = False
    t.ema_halflife_images = 0.0
    t.label_dropout = 0.0
    t.log_every = 78  # divides 9360
    t.ckpt_every = 468  # once per epoch
    t.sample_every = 0
    t.heldout_examples = 256
    t.heldout_timesteps = 4
    t.tensorboard = False

    s = c.sample
    s.sampler = "ddpm"  # the course samples with all T steps
    s.num_steps = 50  # DDIM previews only
    s.num_samples = 64
    s.batch_size = 100
    s.guidance = 1.0
    c.fid.batch_size = 50
    return c
