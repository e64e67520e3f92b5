"""Pretrained model folders: --mode=export writes one, --pretrained samples from it with no
training and no --config, and the shipped models load, match their sha256 and sample."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from train_utils import flags_for, run_main, tiny_config

from diffusion_jax import checkpoint, methods, parallel, pretrained, sampling, train
from diffusion_jax.errors import CheckpointError


@pytest.fixture(scope="module")
def exported(tiny_mnist_dir, tmp_path_factory):
    """(workdir, model folder): a tiny run of 4 steps and its latest EMA exported."""
    root = tmp_path_factory.mktemp("pretrained")
    workdir, folder = root / "run", root / "tiny_model"
    config = tiny_config(tiny_mnist_dir, train__num_steps=4)
    train.train_and_evaluate(config, str(workdir))
    config.sample.num_steps = 7  # the export's sampling defaults become the folder's
    sampling.export(config, str(workdir), str(folder))
    return workdir, folder, config


def test_export_writes_weights_config_and_checksum(exported):
    workdir, folder, config = exported
    model = json.loads((folder / pretrained.MODEL_FILE).read_text())
    assert model["step"] == 4 and model["num_params"] == 163_985
    assert model["sha256"] == pretrained.sha256_of(folder / pretrained.WEIGHTS_FILE)
    assert model["meta"]["train_clock"]["wall_s"] > 0  # the training time travels with it
    again = pretrained.config_of(folder / pretrained.CONFIG_FILE)
    as_json = [json.loads(c.to_json_best_effort()) for c in (again, config)]
    # the training machine's data folder is not carried: a model folder works anywhere
    assert checkpoint.config_differences(*as_json) == [
        f"config.data.data_dir: checkpoint None, now {config.data.data_dir!r}"
    ]
    assert isinstance(again.model.ch_mult, tuple)  # JSON lists come back as the schema's tuples
    assert again.sample.num_steps == 7 and model["meta"]["config"]["sample"]["num_steps"] == 7


def test_pretrained_weights_are_the_checkpoints_ema(exported):
    workdir, folder, config = exported
    mesh = parallel.make_mesh()
    a, step_a = sampling.load_ema_params(config, str(workdir), mesh)
    b, step_b = sampling.load_ema_params(config, "/nonexistent", mesh, f"pretrained:{folder}")
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_damaged_weights_file_is_refused(exported, tmp_path):
    _, folder, config = exported
    copy = tmp_path / "damaged"
    copy.mkdir()
    for name in (pretrained.MODEL_FILE, pretrained.WEIGHTS_FILE, pretrained.CONFIG_FILE):
        (copy / name).write_bytes((folder / name).read_bytes())
    blob = bytearray((copy / pretrained.WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 1
    (copy / pretrained.WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        sampling.load_ema_params(config, str(tmp_path), parallel.make_mesh(), f"pretrained:{copy}")


def test_cli_samples_from_a_model_folder_as_from_its_workdir(exported, tmp_path):
    """`--pretrained=FOLDER --mode=sample` (no --config) gives the images `--workdir=RUN
    --mode=sample` gives: same weights, same config, same per-image keys."""
    workdir, folder, _ = exported
    n = ["--config.sample.num_samples=2", "--config.sample.batch_size=2"]
    out = tmp_path / "out"
    result = run_main(f"--pretrained={folder}", "--mode=sample", f"--workdir={out}", *n)
    assert result.returncode == 0, result.stderr[-2000:]
    flags = flags_for(str(exported[2].data.data_dir), train__num_steps=4)
    steps = "--config.sample.num_steps=7"  # the folder's sampling default (set at export)
    result = run_main(*flags, "--mode=sample", f"--workdir={workdir}", *n, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    with (
        np.load(out / "sample" / "samples.npz") as a,
        np.load(workdir / "sample" / "samples.npz") as b,
    ):
        assert a["images"].shape == (2, 28, 28, 1)
        np.testing.assert_array_equal(a["images"], b["images"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pretrained=no_such_model", "--mode=sample"], "no such model"),
        (["--mode=export"], "--export_to"),
    ],
)
def test_pretrained_user_errors(tiny_mnist_dir, tmp_path, args, needle):
    extra = [] if args[0].startswith("--pretrained") else flags_for(tiny_mnist_dir)
    result = run_main(*extra, *args, f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_pretrained_refuses_training_and_a_second_checkpoint(exported, tmp_path):
    _, folder, _ = exported
    for args, needle in (
        (["--mode=train"], "not --mode=train"),
        (["--mode=sample", "--checkpoint=best"], "give one"),
    ):
        result = run_main(f"--pretrained={folder}", *args, f"--workdir={tmp_path / 'w'}")
        assert result.returncode == 2, result.stderr[-2000:]
        assert needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", pretrained.available())
def test_shipped_model_loads_and_samples(name):
    """Each model in the package: its sha256, its parameter count against the config's
    network, and a 2-image sample."""
    folder = pretrained.resolve(name)
    model = pretrained.read_model(folder)
    assert pretrained.sha256_of(folder / pretrained.WEIGHTS_FILE) == model["sha256"]
    config = pretrained.config_of(folder)
    mesh = parallel.make_mesh()
    _, abstract = methods.abstract_state(config, parallel.replicated(mesh))
    assert checkpoint.make_meta(config, abstract.params)["num_params"] == model["num_params"]
    params, step = sampling.load_ema_params(config, "/nonexistent", mesh, f"pretrained:{name}")
    assert step == model["step"]
    config.sample.num_steps = 4
    generator = sampling.make_generator(
        config, methods.abstract_state(config)[0], mesh, batch_size=2
    )
    x, _ = sampling.generate_all(generator, params, 2, jax.random.PRNGKey(0))
    assert x.shape == (2, config.data.image_size, config.data.image_size, config.data.channels)
    assert x.dtype == np.uint8 and x.std() > 0
