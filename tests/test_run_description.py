"""Every FID record says what was run (`evaluate.run_description`): config file, method, dataset,
the sampled network's architecture and parameter count, batch, and for DDPM schedule, T and
sampler with its steps; for the other methods the DDPM-only fields are None. Shapes only (no
training, no Inception), so this is fast; the end-to-end record is in test_quality.py."""

from __future__ import annotations

import pytest
from train_utils import load_config

from diffusion_jax import evaluate, methods


def _describe(name: str, **changes):
    config = load_config(name)
    for key, value in changes.items():
        section, field = key.split("__")
        config[section][field] = value
    _, abstract = methods.abstract_state(config)
    return evaluate.run_description(config, abstract.ema_params, f"configs/{name}.py")


def test_ddpm_record_names_schedule_model_batch_and_sampler():
    d = _describe("cifar10_fast")
    assert d["config_file"] == "configs/cifar10_fast.py" and d["method"] == "ddpm"
    assert d["dataset"] == "cifar10" and (d["image_size"], d["channels"]) == (32, 3)
    assert d["num_params"] == d["model"]["num_params"] == 35_746_307  # README: Ho et al.'s U-Net
    assert d["model"]["ch"] == 128 and d["model"]["ch_mult"] == [1, 2, 2, 2]
    assert d["model"]["dtype"] == "bfloat16"
    assert d["batch_size"] == 512
    assert (d["schedule"], d["num_timesteps"], d["prediction"]) == ("linear", 1000, "eps")
    assert (d["sampler"], d["steps"]) == ("ddim", 100)


def test_ddpm_sampler_steps_follow_the_sampler():
    d = _describe("tiny", diffusion__schedule="cosine", diffusion__num_timesteps=300,
                  sample__sampler="ddpm")  # fmt: skip
    assert (d["schedule"], d["num_timesteps"]) == ("cosine", 300)
    assert (d["sampler"], d["steps"]) == ("ddpm", 300)  # DDPM runs every timestep
    d = _describe("tiny", sample__sampler="dpm++2m", sample__num_steps=25)
    assert (d["sampler"], d["steps"], d["spacing"]) == ("dpm++2m", 25, "logsnr")


@pytest.mark.parametrize("name", ["dcgan_mnist", "vae_mnist"])
def test_other_methods_have_no_ddpm_fields(name):
    d = _describe(name)
    method = load_config(name).method
    assert d["method"] == method and d["model"]["arch"] == method
    assert d["num_params"] > 0 and d["batch_size"] > 0
    for key in evaluate.DDPM_ONLY_FIELDS:
        assert d[key] is None, key
