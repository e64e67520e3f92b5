"""Class-conditional MNIST reduced to train on a 2-core CPU in ~35 minutes (the editing demos).

The recipe of `mnist_cond.py` (T=1000 linear, label dropout 0.1 for classifier-free guidance,
guidance 3) on the reduced model of results/training_cpu.md: ch 32, mult (1, 2), one block per
level, no attention, time embedding 128, grey 28x28 (1 channel), batch 32, Adam 1e-3. Training
stops at `train.time_budget_s` (35 min) or `train.num_steps`, whichever comes first; the
results in results/applications.md come from this config.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_cond")
    c.data.channels = 1

    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.0
    c.model.time_emb_dim = 128

    c.train.batch_size = 32
    c.train.lr = 1e-3
    c.train.num_steps = 4000
    c.train.time_budget_s = 35 * 60.0
    c.train.log_every = 50
    c.train.sample_every = 0
    c.train.ckpt_every = 250
    c.train.keep_checkpoints = 2
    c.train.heldout_examples = 64
    c.train.heldout_timesteps = 4
    c.train.tensorboard = False

    c.sample.num_samples = 64
    c.sample.batch_size = 64
    c.sample.sampler = "ddim"
    c.sample.num_steps = 50
    return c
