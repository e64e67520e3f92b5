"""Class-conditional Fashion-MNIST with MNIST's 150-minute CPU recipe (issue 28).

`mnist_quality_cpu_v2.py` (MNIST's second run: 4 CPU devices from step 0, the decay in stairs
of 850 steps, every 1,000th checkpoint kept) unchanged but for the data (and the toolbox's
class pairs), so its quality record says what the same recipe and budget reach on garments:

    python -m diffusion_jax.data import --dataset=fashion_mnist \
        --idx_dir=/usr/share/datasets/fashion-mnist          # apt-get install dataset-fashion-mnist
    nice python -m diffusion_jax.main --config=fashion_mnist_quality_cpu \
        --workdir=$HOME/runs/fashion_mnist_quality_cpu      # resumes; the budget spans resumes
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "mnist_quality_cpu_v2")
    c.data.dataset = "fashion_mnist"
    c.edit.pairs = "1,3;5,7"  # trouser <-> dress, sandal <-> sneaker
    return c
