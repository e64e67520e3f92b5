"""`--mode=edit` on an RGB 32x32 unconditional model with T = 50, and the T-scaled defaults.

The tiny workdir is a 2-step unconditional model on random `cifar10` images (3 channels) with
T = 50, edited with config.py's edit defaults: "auto" for the T-dependent settings, which
`resolve_defaults` fills with the T = 1000 demos scaled to T: noise levels 13/25/38, stride 2
(25 steps), inpaint stride 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_utils import compilation_cache, tiny_config

from diffusion_jax import data, edit_settings, edit_workflow, pixels, train
from diffusion_jax.config import base_config
from diffusion_jax.errors import UserError

T = 50


@pytest.fixture(scope="module")
def rgb_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {
        split: (
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8),
        )
        for split, n in (("train", 64), ("test", 32))
    }


def rgb_config(data_dir: str, **edit) -> object:
    config = tiny_config(
        data_dir,
        train__num_steps=2,
        train__ckpt_every=2,
        train__batch_size=16,
        train__heldout_examples=16,
        train__heldout_timesteps=2,
        data__dataset="cifar10",
        data__image_size=32,
        data__channels=3,
        diffusion__num_timesteps=T,
        model__num_classes=0,
        model__ch=8,
        model__ch_mult=(1,),  # one level: the least to trace
        model__time_emb_dim=16,
    )
    config.edit.indices = "0-1"
    config.edit.jump_length, config.edit.jump_count = 5, 2  # RePaint: 2 climbs, kept quick
    for k, v in edit.items():
        config.edit[k] = v
    return config


@pytest.fixture(scope="module")
def rgb_workdir(tmp_path_factory, rgb_arrays):
    data_dir = tmp_path_factory.mktemp("rgb_tfds")
    data.import_arrays("cifar10", rgb_arrays, str(data_dir), full=False)
    workdir = tmp_path_factory.mktemp("rgb_workdir")
    with compilation_cache():
        train.train_and_evaluate(rgb_config(str(data_dir)), str(workdir))
    return str(data_dir), workdir


def edit_files(workdir) -> list[str]:
    out = workdir / "edit"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def npz(workdir, kind: str) -> dict[str, np.ndarray]:
    with np.load(workdir / "edit" / f"{kind}.npz") as f:
        return {k: f[k] for k in f.files}


def rgb_png(path) -> np.ndarray:
    """The figure as uint8 [H, W, 3] (matplotlib writes RGBA PNGs), checking it is a PNG."""
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode in ("RGB", "RGBA")
        return np.asarray(img.convert("RGB"))


def red_blue_file(path, size=(64, 48)) -> str:
    """Left half pure red, right half pure blue (wider than tall: centre-cropped)."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2, 0] = 255
    arr[:, size[0] // 2 :, 2] = 255
    Image.fromarray(arr, "RGB").save(path)
    return str(path)


# ------------------------------------------------------------------------- the T-scaling


def test_defaults_are_scaled_to_t_and_set_values_are_kept():
    for num_t, expected in [
        (1000, ((250, 500, 750), 30, 4, (1, 3, 5, 7, 10, 20), 10)),
        (300, ((75, 150, 225), 9, 1, (1, 3, 5, 7, 10, 20), 10)),  # stride 9: 34 steps, 297..0
        (50, ((13, 25, 38), 2, 1, (1, 2, 4, 5, 7, 15), 7)),  # stride 2: 25 steps, 48..0
    ]:
        config = base_config()
        config.diffusion.num_timesteps = num_t
        resolved, notes = edit_settings.resolve_defaults(config)
        e = resolved.edit
        got = (tuple(e.noise_levels), e.stride, e.inpaint_stride, tuple(e.i_start))
        assert got + (e.translate_i_start,) == expected, num_t
        assert len(notes) == 6  # a header and the five settings, at every T (logged)
        assert config.edit.stride == 0  # the caller's config is not changed (still auto)
        grid = edit_settings.edit.strided_timesteps(num_t, e.stride)
        # the SDEdit starts keep their fraction of the grid: 20 / 34 of the way down
        assert abs(e.i_start[-1] / len(grid) - 20 / 34) < 0.5 / len(grid) + 1e-9
        for kind in edit_settings.KINDS:  # every kind's defaults now fit T (classes: conditional)
            resolved.edit.kind = kind
            resolved.model.num_classes = 10
            edit_settings.validate(resolved)
    config = base_config()
    config.diffusion.num_timesteps = 300
    config.edit.noise_levels, config.edit.stride, config.edit.i_start = (10, 290), 10, (2, 29)
    resolved, notes = edit_settings.resolve_defaults(config)
    assert (tuple(resolved.edit.noise_levels), resolved.edit.stride) == ((10, 290), 10)
    assert tuple(resolved.edit.i_start) == (2, 29)  # set by the user: kept (grid of 30)
    # the defaults left alone follow: inpaint stride to T, translate's start to the 30-step grid
    assert (resolved.edit.inpaint_stride, resolved.edit.translate_i_start) == (1, 9)
    assert len(notes) == 3


def test_a_set_value_equal_to_a_t1000_demo_value_is_used_as_given():
    # --config.edit.stride=30 on T = 300 is stride 30 (a 10-step grid 270 .. 0), not 9
    config = base_config()
    config.diffusion.num_timesteps = 300
    config.edit.stride = 30
    config.edit.translate_i_start = 0  # 0 is a start (the noisiest), not "auto"
    resolved, notes = edit_settings.resolve_defaults(config)
    e = resolved.edit
    assert (e.stride, e.translate_i_start) == (30, 0)
    assert tuple(e.noise_levels) == (75, 150, 225) and e.inpaint_stride == 1  # auto: scaled
    assert tuple(e.i_start) == (0, 1, 2, 3, 6)  # auto: (1, 3, 5, 7, 10, 20) / 34 of 10 steps
    assert not any("stride=30" in n or "translate_i_start" in n for n in notes)
    # and every T-dependent setting given at its T = 1000 demo value on T = 300 stays as given
    demo = {"noise_levels": (250, 500, 750), "stride": 30, "inpaint_stride": 4,
            "i_start": (1, 3, 5, 7), "translate_i_start": 9}  # fmt: skip
    for k, v in demo.items():
        config.edit[k] = v
    resolved, notes = edit_settings.resolve_defaults(config)
    assert {k: resolved.edit[k] for k in demo} == demo and notes == []
    resolved.model.num_classes = 10
    for kind in ("sdedit", "inpaint", "translate"):
        resolved.edit.kind = kind
        edit_settings.validate(resolved)  # they fit T = 300
    resolved.edit.kind = "denoise"  # t = 500, 750 do not: refused as given, not rescaled
    with pytest.raises(UserError, match=r"noise_levels=\(250, 500, 750\).*\[0, 300\)"):
        edit_settings.validate(resolved)


def test_set_values_that_do_not_fit_t_are_refused_naming_the_setting(tmp_path):
    for settings, message in [
        ({"kind": "denoise", "noise_levels": (100, 300)}, r"noise_levels=\(100, 300\).*\[0, 300\)"),
        ({"kind": "sdedit", "stride": 10, "i_start": (3, 30)}, r"i_start=30.*\[0, 29\]"),
        ({"kind": "inpaint", "inpaint_stride": 301}, r"inpaint_stride=301.*num_timesteps=300"),
        ({"kind": "denoise", "stride": -1}, r"stride=-1.*0 = auto"),
    ]:
        config = rgb_config(str(tmp_path), **settings)  # no data, no checkpoint: refused first
        config.diffusion.num_timesteps = 300
        with pytest.raises(UserError, match=message):
            edit_workflow.run(config, str(tmp_path))
        assert not (tmp_path / "edit").exists()


# --------------------------------------------------------------------- RGB end to end


def test_denoise_rgb_with_t_scaled_levels(rgb_workdir, rgb_arrays):
    data_dir, workdir = rgb_workdir
    with compilation_cache():
        paths = edit_workflow.run(rgb_config(data_dir, kind="denoise"), str(workdir))
    arrays = npz(workdir, "denoise")
    assert arrays["timesteps"].tolist() == [13, 25, 38]  # (250, 500, 750) of T = 1000
    test_images = rgb_arrays["test"][0]  # TFDS stores the split in its own order
    for x in arrays["original"]:  # each input is one of them, channels in order, bit for bit
        assert any(np.array_equal(x, y) for y in test_images)
    for name in ("noisy", "one_step", "iterative", "blurred"):
        assert arrays[name].shape == (3, 2, 32, 32, 3) and arrays[name].dtype == np.uint8
    # one noise draw per image for every t: the noise grows with t (PSNR against the original)
    p = [pixels.psnr(arrays["noisy"][k] / 127.5 - 1, arrays["original"] / 127.5 - 1) for k in
         range(3)]  # fmt: skip
    assert np.all(p[0] > p[1]) and np.all(p[1] > p[2])
    for name in ("forward.png", "denoise_t13.png", "denoise_t25.png", "denoise_t38.png",
                 "denoise_steps.png"):  # fmt: skip
        figure = rgb_png(workdir / "edit" / name)
        assert figure.shape[0] > 64 and figure.shape[1] > 64
        assert paths[name] == str(workdir / "edit" / name)


def test_sdedit_rgb_files_and_strength_near_zero_returns_the_input(rgb_workdir, tmp_path):
    data_dir, workdir = rgb_workdir
    colour = red_blue_file(tmp_path / "red_blue.png")
    grey = tmp_path / "grey.jpg"  # a light border: grey models would invert it, RGB never
    g = np.full((40, 40), 230, np.uint8)
    g[10:30, 10:30] = 20
    Image.fromarray(g, "L").save(grey, quality=95)
    config = rgb_config(data_dir, kind="sdedit", images=f"{colour},{grey}", strength=(0.05, 1.0))
    with compilation_cache():
        edit_workflow.run(config, str(workdir))
    arrays = npz(workdir, "sdedit")
    x = arrays["inputs"]
    assert x.shape == (2, 32, 32, 3) and arrays["outputs"].shape == (2, 2, 32, 32, 3)
    assert arrays["i_start"].tolist() == [24, 0]  # 25 steps: 25 - int(25 * strength)
    # the colour file: red left, blue right, after the centre crop and Lanczos resize
    np.testing.assert_array_equal(x[0, :, :12], np.broadcast_to([255, 0, 0], (32, 12, 3)))
    np.testing.assert_array_equal(x[0, :, -12:], np.broadcast_to([0, 0, 255], (32, 12, 3)))
    # the greyscale file: three equal channels, not inverted
    assert np.array_equal(x[1, ..., 0], x[1, ..., 1]) and np.array_equal(x[1, ..., 0], x[1, ..., 2])
    assert x[1, 0, 0, 0] > 200 and x[1, 16, 16, 0] < 60
    # strength 0.05 = the last grid step (t = 0): the input back up to the t = 0 noise
    ref = x / 127.5 - 1
    near = pixels.psnr(arrays["outputs"][0] / 127.5 - 1, ref)
    far = pixels.psnr(arrays["outputs"][1] / 127.5 - 1, ref)
    assert np.all(near > 25) and np.all(far < 15), (near, far)
    figure = rgb_png(workdir / "edit" / "sdedit.png")
    red = (figure[..., 0] > 220) & (figure[..., 1] < 40) & (figure[..., 2] < 40)
    blue = (figure[..., 2] > 220) & (figure[..., 0] < 40) & (figure[..., 1] < 40)
    assert red.sum() > 500 and blue.sum() > 500  # drawn in colour, not through a grey colormap


def test_inpaint_rgb_keeps_the_known_pixels_in_every_channel(rgb_workdir, tmp_path):
    data_dir, workdir = rgb_workdir
    m = np.full((32, 32), 255, np.uint8)
    m[:, 8:20] = 0  # a band to fill; one grey PNG mask applies to all three channels
    mask = str(tmp_path / "band.png")
    Image.fromarray(m, "L").save(mask)
    with compilation_cache():
        paths = edit_workflow.run(rgb_config(data_dir, kind="inpaint", mask=mask), str(workdir))
    arrays = npz(workdir, "inpaint")
    x = arrays["inputs"]
    assert x.shape == (2, 32, 32, 3) and arrays["keep_mask"].shape == (2, 32, 32, 1)
    keep = np.broadcast_to(arrays["keep_mask"].astype(bool), x.shape)
    assert 0.4 < keep.mean() < 0.8
    for name in ("replacement", "repaint"):
        out = arrays[name]
        assert out.shape == x.shape
        np.testing.assert_array_equal(out[keep], x[keep])  # all three channels, exactly
        assert np.abs(out[~keep].astype(int) - x[~keep]).mean() > 10  # the hole was generated
    assert "inpaint_band.png" in paths
    rgb_png(workdir / "edit" / "inpaint_band.png")


@pytest.mark.parametrize("kind", ["translate", "anagram", "hybrid"])
def test_class_kinds_on_the_unconditional_rgb_workdir_are_refused(rgb_workdir, kind):
    data_dir, workdir = rgb_workdir
    before = edit_files(workdir)
    with pytest.raises(UserError, match=f"kind={kind} needs a class-conditional model") as err:
        edit_workflow.run(rgb_config(data_dir, kind=kind), str(workdir))
    assert "\n" not in str(err.value)
    assert edit_files(workdir) == before
