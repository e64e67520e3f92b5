"""`--mode=edit` end to end on a 4-step tiny class-conditional model, and its user errors.

Every bad input is refused with a one-line `UserError` before the weights are read, and
nothing is written (no `workdir/edit/`).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_utils import REPO, compilation_cache, no_traceback, run_main, tiny_config

from diffusion_jax import edit_inputs, edit_workflow, train
from diffusion_jax.config import from_sibling
from diffusion_jax.errors import UserError

SMALL = {  # T = 100: a grid of 10 timesteps (90, 80, ..., 0)
    "stride": 10,
    "inpaint_stride": 10,
    "noise_levels": (25, 50, 75),
    "i_start": (3, 8),
    "translate_i_start": 5,
    "indices": "0-1",
    "jump_count": 2,
    "jump_length": 2,
    "samples": 1,
    "pairs": "6,9",
}


def edit_config(data_dir, num_classes=10, **edit):
    config = tiny_config(data_dir, train__num_steps=4, model__num_classes=num_classes)
    for k, v in {**SMALL, **edit}.items():
        config.edit[k] = v
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist_dir):
    config = edit_config(tiny_mnist_dir)
    workdir = tmp_path_factory.mktemp("edit_trained")
    with compilation_cache():
        train.train_and_evaluate(config, str(workdir))
    return tiny_mnist_dir, workdir


def user_png(path, size=(50, 37), mode="RGBA"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr if len(mode) > 1 else arr[..., 0], mode).save(path)
    return str(path)


@pytest.mark.parametrize(
    "kind, extra, files",
    [
        ("denoise", {"psnr_images": 8}, ["denoise_t50.png", "forward.png", "denoise_steps.png",
                                         "psnr.json", "psnr.md"]),
        ("sdedit", {"strength": (0.5, 1.0)}, ["sdedit.png"]),
        ("inpaint", {"mask": "strokes"}, ["inpaint_strokes.png"]),
        ("translate", {"targets": "1,2"}, ["translate.png"]),
        ("anagram", {}, ["anagram.png"]),
        ("hybrid", {}, ["hybrid.png"]),
    ],
)  # fmt: skip
def test_every_kind_writes_its_figures_and_npz(trained, tmp_path, kind, extra, files):
    data_dir, workdir = trained
    if kind == "sdedit":
        extra = {**extra, "images": user_png(tmp_path / "drawing.png")}
    config = edit_config(data_dir, kind=kind, **extra)
    with compilation_cache():
        paths = edit_workflow.run(config, str(workdir))
    for name in files + [f"{kind}.npz"]:
        assert (workdir / "edit" / name).is_file(), name
    with np.load(workdir / "edit" / f"{kind}.npz") as npz:
        assert int(npz["step"]) == 4
        arrays = {k: npz[k] for k in npz.files}
    if kind == "denoise":
        assert arrays["iterative"].shape == (3, 2, 28, 28, 1)
        assert arrays["iterative"].dtype == np.uint8
    if kind == "sdedit":  # the RGBA 50x37 file became one 28x28 grey input
        assert arrays["inputs"].shape == (1, 28, 28, 1)
        assert arrays["outputs"].shape == (2, 1, 28, 28, 1)
        assert arrays["i_start"].tolist() == [5, 0]  # N = 10: 10 - int(10 * strength)
    if kind == "inpaint":
        keep = arrays["keep_mask"].astype(bool)
        assert 0 < keep.mean() < 1
        np.testing.assert_array_equal(arrays["repaint"][keep], arrays["inputs"][keep])
        np.testing.assert_array_equal(arrays["replacement"][keep], arrays["inputs"][keep])
    if kind == "anagram":
        np.testing.assert_array_equal(arrays["views"], arrays["images"][:, ::-1, ::-1])
    assert set(paths) >= set(files)


def test_convert_image_crops_resizes_and_inverts(tmp_path):
    img = edit_inputs.open_image(user_png(tmp_path / "a.png", (60, 30), "RGB"))
    assert edit_inputs.convert_image(img, 28, 3).shape == (28, 28, 3)
    white = Image.new("RGB", (40, 50), (255, 255, 255))
    assert edit_inputs.convert_image(white, 28, 1, "auto").max() == 0  # light border: inverted
    assert edit_inputs.convert_image(white, 28, 1, False).min() == 255
    assert edit_inputs.convert_image(white, 28, 3, "auto").min() == 255  # RGB models: never


BAD = [
    (10, {"kind": "paint"}, "config.edit.kind='paint'"),
    (0, {"kind": "translate"}, "needs a class-conditional model"),
    (0, {"kind": "anagram"}, "needs a class-conditional model"),
    (0, {"kind": "sdedit", "label": 3}, "class guidance needs a class-conditional model"),
    (10, {"kind": "sdedit", "label": 10}, "classes are 0..9"),
    (10, {"kind": "translate", "targets": "2,12"}, "classes are 0..9"),
    (10, {"kind": "hybrid", "pairs": "6,-1"}, "classes are 0..9"),
    (10, {"kind": "sdedit", "i_start": (3, 10)}, r"must be in \[0, 9\]"),
    (10, {"kind": "sdedit", "strength": (0.0,)}, r"strength must be in \(0, 1\]"),
    (10, {"kind": "denoise", "noise_levels": (50, 100)}, r"timesteps must be in \[0, 100\)"),
    (10, {"kind": "anagram", "view": "spin"}, "config.edit.view='spin'"),
    (10, {"kind": "sdedit", "indices": "0,64"}, "has images 0..63"),
]


@pytest.mark.parametrize("num_classes, settings, message", BAD, ids=lambda v: str(v)[:30])
def test_bad_settings_are_refused_before_anything_is_read(
    tmp_path, tiny_mnist_dir, num_classes, settings, message
):
    config = edit_config(tiny_mnist_dir, num_classes=num_classes, **settings)
    with pytest.raises(UserError, match=message) as err:
        edit_workflow.run(config, str(tmp_path))  # no checkpoint there: refused before reading it
    assert "\n" not in str(err.value)
    assert not (tmp_path / "edit").exists()


def test_bad_files_are_refused_and_nothing_is_written(trained, tmp_path):
    data_dir, workdir = trained
    (tmp_path / "broken.png").write_bytes(b"not an image")
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(grey)
    small = tmp_path / "small.npy"
    np.save(small, np.ones((5, 5)))
    cases = [
        ({"kind": "sdedit", "images": str(tmp_path / "broken.png")}, "cannot read the image file"),
        ({"kind": "sdedit", "images": str(tmp_path / "absent.jpg")}, "cannot read the image file"),
        ({"kind": "inpaint", "mask": str(grey)}, r"black and white \(0 and 255 only\)"),
        ({"kind": "inpaint", "mask": str(small)}, r"must have shape \(28, 28\)"),
        ({"kind": "inpaint", "mask": "circle"}, "use one of centre, half, strokes"),
    ]
    before = (
        sorted(p.name for p in (workdir / "edit").glob("*")) if (workdir / "edit").exists() else []
    )
    for settings, message in cases:
        with pytest.raises(UserError, match=message):
            edit_workflow.run(edit_config(data_dir, **settings), str(workdir))
        after = (
            sorted(p.name for p in (workdir / "edit").glob("*"))
            if (workdir / "edit").exists()
            else []
        )
        assert after == before, settings


def test_cli_on_an_unconditional_model_says_so_in_one_line(tmp_path):
    result = run_main(
        f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={tmp_path}", "--mode=edit",
        "--config.edit.kind=hybrid",
    )  # fmt: skip
    assert result.returncode == 2 and no_traceback(result.stderr), result.stderr[-2000:]
    assert "--config.edit.kind=hybrid needs a class-conditional model" in result.stderr
    assert not (tmp_path / "edit").exists()


@pytest.mark.parametrize("recipe", ["vae_mnist", "gan_mnist", "denoiser_mnist", "dip"])
def test_editing_run_refuses_a_config_that_is_not_ddpm(tmp_path, recipe):
    config = from_sibling(str(REPO / "configs" / "x.py"), recipe)
    with pytest.raises(
        UserError, match=rf"config.method='{config.method}' is not a diffusion"
    ) as e:
        edit_workflow.run(config, str(tmp_path))  # refused before any checkpoint is looked for
    assert "\n" not in str(e.value) and "config.method='ddpm'" in str(e.value)  # what to do
    assert not (tmp_path / "edit").exists()


def test_cli_on_a_vae_config_says_so_in_one_line(tmp_path):
    result = run_main(
        f"--config={REPO / 'configs' / 'vae_mnist.py'}", f"--workdir={tmp_path}", "--mode=edit"
    )
    assert result.returncode == 2 and no_traceback(result.stderr), result.stderr[-2000:]
    assert result.stderr.count("is not a diffusion model") == 1, result.stderr[-2000:]
    assert not (tmp_path / "edit").exists()
