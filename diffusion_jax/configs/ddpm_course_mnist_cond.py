"""Class-conditional DDPM on MNIST with the course's U-Net (CS180/280A "Project 5, part B").

`ddpm_course_mnist.py` plus class conditioning: one-hot digits through FCBlocks multiply the
features (c * h + t), the label is dropped to the null (all-zero) vector with probability 0.1
during training, and samples use classifier-free guidance with weight 5 (the course's gamma).
Same deviation: GroupNorm for BatchNorm; the same exponential learning-rate decay.
"""

from diffusion_jax.config import from_sibling


def get_config():
    c = from_sibling(__file__, "ddpm_course_mnist")
    c.model.num_classes = 10
    c.train.label_dropout = 0.1
    c.sample.guidance = 5.0
    return c
