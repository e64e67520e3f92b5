"""Every shipped config loads, passes validation and describes the model it claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_utils import load_config

from diffusion_jax import state as state_lib

NAMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("name", NAMES)
def test_config_validates(name):
    config = load_config(name)
    state_lib.validate_config(config)


def test_recipes_keep_the_paper_configs_unchanged():
    paper, fast = load_config("cifar10"), load_config("cifar10_fast")
    assert paper.train.batch_size == 128 and paper.train.lr == 2e-4
    assert paper.model.dtype == "float32" and paper.train.ema_decay == 0.9999
    assert fast.model.to_dict() | {"dtype": "float32"} == paper.model.to_dict()
    assert fast.train.time_budget_s > 0 and fast.train.ema_halflife_images > 0
