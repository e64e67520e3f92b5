"""Checkpoints and pretrained models written before the networks moved into `diffusion_jax.nets`
(issue 26) still restore, with the same parameter tree, parameter count and outputs.

tests/fixtures/nets_compat.tar.xz was written once by `python tests/test_nets_compat.py` at
commit 8515cee, when the networks lived in model.py, course_unet.py, methods/gan_nets.py,
methods/vae.py, methods/vae_gan.py and methods/dip.py. It holds, for each case of `CASES`,
`<case>/`: a workdir with one Orbax checkpoint as the training loop saves it (the method's state
at step 5, every float leaf of params, EMA and BatchNorm statistics moved off the init so that
every parameter reaches the output); `ddpm_unet_export/`: that DDPM checkpoint's EMA as a
pretrained model folder (what `--mode=export` writes); and `expected.npz`: the networks' outputs
on fixed inputs then. An archive because Orbax's metadata (JSON per item, a few hundred files)
is ten times the parameters and compresses well. Do not rewrite it: it stands for files users
already have.
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import checkpoint, errors, methods, parallel, pretrained, sampling
from diffusion_jax.config import base_config
from diffusion_jax.methods import dip, gan, vae_gan

ARCHIVE = Path(__file__).resolve().parent / "fixtures" / "nets_compat.tar.xz"
ROOT = "nets_compat"  # the archive's top folder
EXPECTED = "expected.npz"
EXPORT = "ddpm_unet_export"
STEP = 5

# ---------------------------------------------------------------------------------------------
# The configs (written out in full: a recipe file may change, the saved checkpoints do not)


def _mnist(method: str) -> ml_collections.ConfigDict:
    c = base_config()
    c.method = method
    c.data.dataset = "mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.diffusion.num_timesteps = 100
    return c


def ddpm_unet() -> ml_collections.ConfigDict:
    """Ho et al.'s U-Net: two levels of 4 and 8 channels, attention at 14 px, 10 classes."""
    c = _mnist("ddpm")
    m = c.model
    m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 4, (1, 2), 1, (14,)
    m.dropout, m.num_groups, m.time_emb_dim, m.num_classes = 0.0, 2, 8, 10
    return c


def ddpm_course() -> ml_collections.ConfigDict:
    """The course's U-Net (GroupNorm) as DDPM's network, width 4, 10 classes."""
    c = _mnist("ddpm")
    c.model.arch, c.model.course_hidden, c.model.course_groups = "course", 4, 2
    c.model.num_classes = 10
    return c


def denoiser() -> ml_collections.ConfigDict:
    """The course's unconditional U-Net with BatchNorm, width 4."""
    from diffusion_jax.methods import denoiser as denoiser_lib

    c = _mnist("denoiser")
    c.denoiser = denoiser_lib.settings()
    c.denoiser.hidden = 4
    return c


def dcgan() -> ml_collections.ConfigDict:
    """DCGAN at 28 px, 4-channel networks, z of 8."""
    c = _mnist("dcgan")
    c.gan = gan.settings()
    c.gan.latent_dim, c.gan.g_width, c.gan.d_width = 8, 4, 4
    return c


def vae_gan_case() -> ml_collections.ConfigDict:
    """The VAE-GAN (the VAE's encoder and decoder, plus its discriminator): 4 and 8 channels."""
    c = _mnist("vae_gan")
    c.vae_gan = vae_gan.settings()
    s = c.vae_gan
    s.latent_dim, s.widths, s.disc_widths = 4, (4, 8), (4, 8)
    return c


def dip_case() -> ml_collections.ConfigDict:
    """Deep Image Prior: 2 images, a one-scale skip net of 4 channels with a 2-channel skip."""
    c = _mnist("dip")
    c.dip = dip.settings()
    d = c.dip
    d.indices, d.input_channels = "0-1", 4
    d.split = "train"  # DIP fitted train images then (config.dip.split came later)
    d.channels_down, d.channels_up, d.channels_skip, d.need1x1_up = (4,), (4,), (2,), False
    c.train.batch_size = 2
    return c


CASES: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "ddpm_unet": ddpm_unet,
    "ddpm_course": ddpm_course,
    "denoiser": denoiser,
    "dcgan": dcgan,
    "vae_gan": vae_gan_case,
    "dip": dip_case,
}

# Parameter counts (nnx.Param leaves of state.params) when the fixtures were written
NUM_PARAMS = {
    "ddpm_unet": 11_053,
    "ddpm_course": 8_361,
    "denoiser": 8_021,
    "dcgan": 4_726,
    "vae_gan": 7_486,
    "dip": 1_142,
}

# ---------------------------------------------------------------------------------------------
# One forward pass of every network of a state, on fixed inputs


def _inputs(seed: int, *shape: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def outputs(name: str, config: ml_collections.ConfigDict, static, state) -> dict[str, np.ndarray]:
    """{output name: array} of the networks of `state` (a restored or a fresh one)."""
    x = _inputs(0, 2, 28, 28, 1)
    t = jnp.asarray([3, 77], jnp.int32)
    y = jnp.asarray([1, 10], jnp.int32)  # 10: the null label
    ema = state.ema_params
    if name in ("ddpm_unet", "ddpm_course"):
        model = nnx.merge(static, ema)
        out = {"eps": model(x, t, y)}
    elif name == "denoiser":
        model = nnx.merge(static, ema["params"], ema["batch_stats"])
        out = {"denoised": model(x, None, train=False)}
    elif name == "dcgan":
        g = nnx.merge(static.generator, ema["params"], ema["batch_stats"])
        d = nnx.merge(
            static.discriminator,
            state.params["discriminator"],
            state.model_state["discriminator"],
        )
        out = {"generated": g(_inputs(1, 2, 8), train=False), "d_logits": d(x, train=False)}
    elif name == "vae_gan":
        model = nnx.merge(static.vae, ema)
        mean, logvar = model.encoder(x)
        d = nnx.merge(static.discriminator, state.params["discriminator"])
        out = {
            "mean": mean,
            "logvar": logvar,
            "decoded": model.decoder(_inputs(2, 2, 4)),
            "d_logits": d(x),
        }
    elif name == "dip":
        z = jnp.abs(_inputs(3, 1, 28, 28, 4)) * 0.1
        out = {
            f"net{j}": nnx.merge(static, jax.tree.map(lambda a, j=j: a[j], state.params))(z)
            for j in range(2)
        }
    else:
        raise KeyError(name)
    return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The test


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """The archive unpacked into a temporary folder (restoring must not touch the repository)."""
    where = tmp_path_factory.mktemp("nets_compat")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(where, filter="data")
    return where / ROOT


@pytest.fixture(scope="module")
def expected(fixtures) -> dict[str, np.ndarray]:
    with np.load(fixtures / EXPECTED) as f:
        return dict(f)


def _restore(name: str, workdir: Path):
    config = CASES[name]()
    mesh = parallel.make_mesh()
    static, abstract = methods.abstract_state(config, parallel.replicated(mesh))
    meta = checkpoint.make_meta(config, abstract.params)
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True, state=abstract)
    try:
        saved_meta = ckpts.read_meta(STEP)
        state = ckpts.restore(abstract, meta)
    finally:
        ckpts.close()
    return config, mesh, static, state, saved_meta


# The VAE-GAN became Larsen et al.'s after the archive was written (issue 24): its optimizer
# state (one clipped Adam then, clipping per network now) is not the new method's, so its
# training cannot resume; its weights (what sampling reads) still load, below.
RESUMABLE = [name for name in CASES if name != "vae_gan"]


@pytest.mark.parametrize("name", RESUMABLE)
def test_checkpoint_written_before_the_move_restores(name, fixtures, expected):
    workdir = fixtures / name
    config, mesh, static, state, saved_meta = _restore(name, workdir)
    assert int(state.step) == STEP
    shapes = checkpoint.tree_shapes(state.params)
    assert shapes == saved_meta["param_shapes"]  # the same tree paths and shapes
    assert sum(int(np.prod(s)) for s in shapes.values()) == NUM_PARAMS[name]
    assert saved_meta["num_params"] == NUM_PARAMS[name]
    got = outputs(name, config, static, state)
    keys = sorted(k.split("/", 1)[1] for k in expected if k.startswith(f"{name}/"))
    assert sorted(got) == keys
    for key in keys:
        np.testing.assert_allclose(got[key], expected[f"{name}/{key}"], rtol=1e-5, atol=1e-6)
    # what sampling reads (the EMA alone) is what the full restore gave
    ema, step = sampling.load_ema_params(config, str(workdir), mesh)
    assert step == STEP
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state.ema_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_vae_gan_checkpoint_before_larsen_says_why_it_cannot_resume(fixtures):
    """Resuming the earlier VAE-GAN's checkpoint stops with what it is and what to do, not with
    "may be corrupt"."""
    with pytest.raises(errors.CheckpointError) as info:
        _restore("vae_gan", fixtures / "vae_gan")
    message = str(info.value)
    assert "written by the earlier VAE-GAN method" in message
    assert "optimizer state" in message and "weights still load for sampling" in message
    assert "start a new --workdir" in message and "corrupt" not in message


def test_vae_gan_weights_written_before_the_move_load_for_sampling(fixtures, expected):
    config = CASES["vae_gan"]()
    mesh = parallel.make_mesh()
    ema, step = sampling.load_ema_params(config, str(fixtures / "vae_gan"), mesh)
    assert step == STEP
    static, _ = methods.abstract_state(config)
    model = nnx.merge(static.vae, ema)
    mean, logvar = model.encoder(_inputs(0, 2, 28, 28, 1))
    got = {"mean": mean, "logvar": logvar, "decoded": model.decoder(_inputs(2, 2, 4))}
    for key, value in got.items():
        want = expected[f"vae_gan/{key}"]
        np.testing.assert_allclose(np.asarray(value), want, rtol=1e-5, atol=1e-6)


def test_pretrained_export_written_before_the_move_loads(fixtures, expected):
    config = ddpm_unet()
    mesh = parallel.make_mesh()
    folder = fixtures / EXPORT
    ema, step = sampling.load_ema_params(
        config, "/nonexistent", mesh, f"{pretrained.PREFIX}{folder}"
    )
    assert step == STEP
    assert pretrained.read_model(folder)["num_params"] == NUM_PARAMS["ddpm_unet"]
    static, abstract = methods.abstract_state(config)
    got = outputs("ddpm_unet", config, static, abstract.replace(ema_params=ema))
    np.testing.assert_allclose(got["eps"], expected["ddpm_unet/eps"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Writing the fixtures (once, before the move; kept to show how they were made)


def _perturbed(tree, rng: np.random.Generator):
    """Every float leaf moved off its init by N(0, 0.05^2) (running variances scaled by
    exp(N(0, 0.05^2)), so they stay positive), then rounded to multiples of 1/64 so that the
    archive compresses."""

    def move(path, leaf):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating):
            return leaf
        noise = rng.standard_normal(a.shape).astype(a.dtype) * 0.05
        moved = a * np.exp(noise) if "'var'" in jax.tree_util.keystr(path) else a + noise
        return jnp.asarray(np.round(moved * 64) / 64, a.dtype)

    return jax.tree_util.tree_map_with_path(move, tree)


def write_fixtures() -> None:
    if ARCHIVE.exists():
        raise SystemExit(f"{ARCHIVE} exists: it stands for old files, keep it.")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ROOT
        root.mkdir()
        found = {}
        for i, (name, make) in enumerate(CASES.items()):
            config = make()
            methods.validate_config(config)
            static, state = methods.get(config).init_state(config)  # eager: no compile
            rng = np.random.default_rng(100 + i)
            fields = {"step": jnp.asarray(STEP, jnp.int32)}
            for field in ("params", "ema_params", "model_state"):
                if hasattr(state, field):
                    fields[field] = _perturbed(getattr(state, field), rng)
            state = state.replace(**fields)
            meta = checkpoint.make_meta(config, state.params)
            ckpts = checkpoint.Checkpoints(str(root / name), keep=1, state=state)
            ckpts.save(state, meta)
            ckpts.wait()
            ckpts.close()
            if name == "ddpm_unet":
                pretrained.export(state.ema_params, meta, STEP, root / EXPORT)
            for key, value in outputs(name, config, static, state).items():
                found[f"{name}/{key}"] = value
            print(name, meta["num_params"], flush=True)
        np.savez(root / EXPECTED, **found)
        with tarfile.open(ARCHIVE, "w:xz") as tar:
            tar.add(root, arcname=ROOT)
    print(ARCHIVE, ARCHIVE.stat().st_size, "bytes")


if __name__ == "__main__":
    sys.exit(write_fixtures())
