"""Class-conditional MNIST for the best FID a 2-core CPU reaches in 150 minutes (issue 28).

    python -m diffusion_jax.data import --dataset=mnist --npz=../shared/data/mnist.npz
    nice python -m diffusion_jax.main --config=configs/mnist_quality_cpu.py \
        --workdir=$HOME/runs/mnist_quality_cpu            # resumes; the budget spans resumes
    python -m diffusion_jax.main --config=configs/mnist_quality_cpu.py \
        --workdir=$HOME/runs/mnist_quality_cpu --mode=eval   # 10k samples, both protocols

What the measurements of results/quality/cpu_recipe.jsonl (this CPU, jax 0.10.2) decided, and
what is still a prior (results/quality/mnist_cpu.md keeps the evidence):
- Throughput sets the budget: XLA:CPU trains the 0.65M U-Net of mnist_cond_cpu.py at ~43 img/s
  (batch 64) and a 4.2M one (ch 64) at ~17; bfloat16, oneDNN and XNNPACK do not help here, batch
  128 is slower per image than 64. So the model stays small: ch 32 with three levels (28, 14,
  7; the 7x7 level is cheap and gives the net a whole-digit view), one block per level.
- Batch 64, Adam 2e-3 after a 200-step warm-up, clipped at 1, decayed 10x over the expected
  ~5,000 steps (staircase every 500 steps): a short run wants a high rate early and a low one at
  the end.
- EMA by half-life (EDM) ramped at 10% of the images seen: the EMA averages the last ~10% of a
  run of any length (the cap of 200k images is not reached in 150 minutes).
- Class-conditional with label dropout 0.1, so sampling can use classifier-free guidance;
  greyscale (1 channel; FID repeats it to RGB), T = 1000 linear, eps-prediction.
- Reference statistics: the full 10k test split; FID under both protocols on 10k samples.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_cond_cpu")  # grey, class-conditional, T = 1000 linear

    c.model.ch_mult = (1, 2, 2)  # the rest of the U-Net as mnist_cond_cpu.py: ch 32, 1 block

    c.train.batch_size = 64
    c.train.lr = 2e-3
    c.train.warmup_steps = 200
    c.train.grad_clip = 1.0
    c.train.lr_decay_rate = 0.1 ** (1 / 10)
    c.train.lr_decay_steps = 500
    c.train.ema_warmup = False
    c.train.ema_halflife_images = 200_000.0
    c.train.ema_rampup_ratio = 0.1
    c.train.num_steps = 1_000_000  # the time budget ends the run
    c.train.time_budget_s = 150 * 60.0
    c.train.log_every = 50
    c.train.ckpt_every = 500
    c.train.keep_checkpoints = 2
    c.train.sample_every = 1000
    c.train.heldout_examples = 256
    c.train.heldout_timesteps = 8
    c.train.tensorboard = True

    c.sample.sampler = "dpm++2m"
    c.sample.num_steps = 20
    c.sample.guidance = 1.0
    c.sample.batch_size = 500

    c.fid.protocol = "both"
    c.fid.ref_split = "test"
    c.fid.eval_samples = 10_000
    c.fid.batch_size = 100
    return c
