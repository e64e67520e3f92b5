"""The training config of `mnist_cond` (written by --mode=export; see model.json)."""

from diffusion_jax import pretrained


def get_config():
    return pretrained.config_of(__file__)
