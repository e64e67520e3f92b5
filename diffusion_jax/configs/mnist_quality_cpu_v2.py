"""MNIST's quality recipe, second run: 4 CPU devices from step 0, the decay stretched (issue 28).

    nice python -m diffusion_jax.main --config=configs/mnist_quality_cpu_v2.py \
        --workdir=/work/runs/mnist_quality_cpu_v2            # resumes; the budget spans resumes

The first run of `mnist_quality_cpu.py` (FID 6.645, results/quality/mnist_cpu.md) trained 70% of
its 150 minutes on one JAX device while other work shared the CPU: 5,203 steps. On 4 devices
(`--cpu_devices=auto`, the default) the benchmark's train step ran at 62-97 img/s; this run's
first 5 minutes (an idle machine, the train loop with its logging and EMA) went at 0.92-1.04
steps/s, so 150 minutes is ~8,500 steps. Everything stays as in the first run except what
follows from that: the learning rate still falls 10x over the run, in 10 stairs of 850 steps
instead of 500, and every 1,000th checkpoint is kept for the FID-vs-minutes curve.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_quality_cpu")
    c.train.lr_decay_steps = 850
    c.train.ckpt_every = 1000
    c.train.keep_checkpoints = 100
    return c
