"""Every method through the shared loop: bit-exact resume, checkpoint items, sampling, eval.

Each method's test module supplies a tiny config (`tiny_config()`); here they all run the same
loop code as DDPM: train 6 steps straight, or 3 + a restart from the step-3 checkpoint + 3, and
the two final states (every field, BatchNorm statistics included) must be identical bit for bit.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import checkpoint, methods, parallel, sampling, train

sys.path.insert(0, str(Path(__file__).parent))

# method -> (test module, its tiny-config function)
TINY = {
    "gan": ("test_gan", "tiny_config_mlp"),
    "dcgan": ("test_gan", "tiny_config"),
}


def tiny(method: str, data_dir: str):
    module, fn = TINY[method]
    config = getattr(importlib.import_module(module), fn)()
    assert config.method == method
    config.data.data_dir = data_dir
    config.train.heldout_examples = 0
    return config


def _metrics(workdir: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("method", sorted(TINY))
def test_resume_is_bit_exact(method, tiny_mnist_dir, tmp_path):
    config = tiny(method, tiny_mnist_dir)
    config.train.num_steps, config.train.ckpt_every, config.train.log_every = 6, 3, 3
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    shutil.copytree(tmp_path / "straight/checkpoints/3", tmp_path / "resumed/checkpoints/3")
    lines = (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    (tmp_path / "resumed/metrics.jsonl").write_text(lines[0] + "\n")
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(straight.step) == int(resumed.step) == 6
    _assert_same(straight, resumed)  # every field: params, EMA, optimizers, model state, rng
    logged = [{k: v for k, v in m.items() if not k.endswith("_per_sec")} for m in
              _metrics(tmp_path / "resumed")]  # fmt: skip
    expected = [{k: v for k, v in m.items() if not k.endswith("_per_sec")} for m in
                _metrics(tmp_path / "straight")]  # fmt: skip
    assert logged == expected

    # The checkpoint holds one item per state field, and restores to the same state.
    mesh = parallel.make_mesh()
    _, abstract = methods.abstract_state(config, parallel.replicated(mesh))
    saved = sorted(p.name for p in (tmp_path / "straight/checkpoints/6").iterdir())
    assert set(checkpoint.item_names(abstract)) <= set(saved)
    ckpts = checkpoint.Checkpoints(str(tmp_path / "straight"), read_only=True, state=abstract)
    again = ckpts.restore(abstract, checkpoint.make_meta(config, abstract.params))
    ckpts.close()
    _assert_same(straight, again)

    # Sampling reads the EMA item alone, and image i does not depend on the batch size.
    params, step = sampling.load_ema_params(config, str(tmp_path / "straight"), mesh)
    assert step == 6
    _assert_same(params, straight.ema_params)
    static, _ = methods.abstract_state(config)
    rng = jax.random.PRNGKey(3)
    big = sampling.generate_all(sampling.make_generator(config, static, mesh, batch_size=8),
                                params, 8, rng)[0]  # fmt: skip
    small = sampling.generate_all(sampling.make_generator(config, static, mesh, batch_size=4),
                                  params, 8, rng)[0]  # fmt: skip
    assert big.shape == (8, 28, 28, 1) and big.dtype == np.uint8
    np.testing.assert_allclose(big.astype(int), small.astype(int), atol=1)
