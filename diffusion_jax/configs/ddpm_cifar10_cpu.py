"""DDPM on CIFAR-10 reduced to a 2-core CPU: the baselines comparison's DDPM (linear, T = 300).

results/baselines.md trains every method of a dataset on the same number of training images
(here 100 steps at batch 64 = 6,400 images, with `--config.train.time_budget_s=0`; the 8-minute
default budget is for a quick run on its own). This is Ho et al.'s recipe with T = 300 (the course
reports' setting) on a small U-Net (ch 32, mult (1, 2, 2), one block per level, no attention:
1,063,651 parameters), batch 64, Adam 1e-3, EMA by half-life (10k images, EDM's ramp-up).
`ddpm_cosine_cifar10_cpu.py` is the same with the cosine schedule.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "cifar10")
    c.diffusion.num_timesteps = 300

    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.1
    c.model.num_groups = 8
    c.model.time_emb_dim = 128

    c.train.batch_size = 64
    c.train.lr = 1e-3
    c.train.warmup_steps = 100
    c.train.num_steps = 20_000
    c.train.time_budget_s = 8 * 60.0
    c.train.ema_halflife_images = 10_000.0
    c.train.ema_rampup_ratio = 0.05
    c.train.log_every = 50
    c.train.sample_every = 0
    c.train.ckpt_every = 500
    c.train.keep_checkpoints = 2
    c.train.heldout_examples = 64
    c.train.heldout_timesteps = 4
    c.train.tensorboard = False

    c.sample.num_samples = 64
    c.sample.batch_size = 100
    c.sample.sampler = "ddim"
    c.sample.num_steps = 50
    c.fid.batch_size = 50
    return c
