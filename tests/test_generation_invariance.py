"""Image i is a function of (seed, i) alone: the same for any batch size and device count.

One subprocess with 8 CPU devices draws the first images of a stream with DDPM, DDIM (eta 0
and 1), guided DDIM, DPM-Solver++(2M) and guided SDE-DPM-Solver++(2M), on 1 device at batch 8
and on 8 devices at batches 8 and 16, and compiles each sampler on the 8-device mesh to count
collectives in its HLO.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from train_utils import REPO, subprocess_env

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from diffusion_jax import parallel, samplers, sampling, state as state_lib
    from diffusion_jax.config import base_config

    def config_for(sampler, eta, guidance):
        c = base_config()
        c.data.dataset, c.data.image_size, c.data.channels = "mnist", 8, 1
        c.model.ch, c.model.ch_mult, c.model.num_res_blocks = 8, (1,), 1
        c.model.attn_resolutions, c.model.num_groups, c.model.dropout = (8,), 4, 0.0
        c.model.num_classes = 3 if guidance is not None else 0
        c.diffusion.num_timesteps = 20
        c.sample.sampler, c.sample.num_steps, c.sample.eta = sampler, 5, eta
        c.sample.guidance = 1.0 if guidance is None else guidance
        return c

    def random_params(config):
        graphdef, params = nnx.split(state_lib.abstract_model(config), nnx.Param)
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.2, p.shape), p.dtype), params)
        return graphdef, params

    COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all",
                   "reduce-scatter")

    def count_collectives(hlo):
        return {c: len(re.findall(r"\\b" + c + r"(-start)?\\(", hlo)) for c in COLLECTIVES}

    mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(jax.devices()[:1])
    rng = jax.random.fold_in(jax.random.PRNGKey(7), 2)
    cases = {"ddpm": ("ddpm", 0.0, None), "ddim_eta0": ("ddim", 0.0, None),
             "ddim_eta1": ("ddim", 1.0, None), "guided": ("ddim", 1.0, 3.0),
             "dpm++2m": ("dpm++2m", 0.0, None), "dpm++2m_sde_guided": ("dpm++2m_sde", 0.0, 3.0)}
    out, hlo = {}, {}
    for name, (sampler, eta, guidance) in cases.items():
        config = config_for(sampler, eta, guidance)
        graphdef, params = random_params(config)
        for label, mesh, batch in (("1dev_b8", mesh1, 8), ("8dev_b8", mesh8, 8),
                                   ("8dev_b16", mesh8, 16)):
            gen = sampling.make_generator(config, graphdef, mesh, batch_size=batch)
            x = np.concatenate([
                np.asarray(jax.device_get(gen.fn(params, rng, jnp.int32(k))[0]))
                for k in range(16 // batch)
            ])
            np.save(f"{sys.argv[1]}/{name}_{label}.npy", x)
            if label == "8dev_b16":
                text = gen.fn.lower(params, rng, jnp.int32(0)).compile().as_text()
                hlo[name] = count_collectives(text)

    # The layout this replaced: [x, x] concatenated along the sharded batch axis.
    def concat_guidance(cond_fn, labels, w, n):
        def fn(x, t):
            null = jnp.full_like(labels, n)
            eps = cond_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([labels, null]))
            a, b = jnp.split(eps, 2)
            return b + w * (a - b)
        return fn

    original = samplers.classifier_free_guidance
    samplers.classifier_free_guidance = concat_guidance
    config = config_for("ddim", 1.0, 3.0)
    graphdef, params = random_params(config)
    gen = sampling.make_generator(config, graphdef, mesh8, batch_size=16)
    hlo["guided_concatenated"] = count_collectives(
        gen.fn.lower(params, rng, jnp.int32(0)).compile().as_text())
    samplers.classifier_free_guidance = original
    print("HLO=" + json.dumps(hlo))
    """
)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("invariance")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)],
        cwd=REPO,
        env=subprocess_env(devices=8),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HLO="))
    return out, json.loads(line[4:])


NAMES = ["ddpm", "ddim_eta0", "ddim_eta1", "guided", "dpm++2m", "dpm++2m_sde_guided"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_images_do_not_depend_on_batch_size_or_device_count(drawn, name):
    out, _ = drawn
    ref = np.load(out / f"{name}_1dev_b8.npy")
    assert ref.shape == (16, 8, 8, 1) and np.isfinite(ref).all()
    assert np.std(ref) > 0.1  # not a degenerate chain
    for label in ("8dev_b8", "8dev_b16"):
        other = np.load(out / f"{name}_{label}.npy")
        np.testing.assert_allclose(other, ref, rtol=0, atol=2e-6, err_msg=label)
    assert not np.allclose(ref[:8], ref[8:])  # different images, not one repeated draw


@pytest.mark.slow
def test_guided_sampling_on_8_devices_has_no_collectives(drawn):
    _, hlo = drawn
    for name in NAMES:
        assert sum(hlo[name].values()) == 0, (name, hlo[name])
    # The concatenated [x, x] layout does move data between devices: the count can fail.
    assert sum(hlo["guided_concatenated"].values()) > 0, hlo["guided_concatenated"]
