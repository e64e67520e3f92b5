"""The users' edges (issue 17): mistakes a user can fix are one line and exit 2, found before
anything slow runs or anything is created; bugs keep their traceback."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from train_utils import (
    REPO,
    flags_for,
    no_traceback,
    run_main,
    snapshot,
    subprocess_env,
    tiny_config,
)

from diffusion_jax import checkpoint, data, edit_inputs, edit_settings, main, train
from diffusion_jax import state as state_lib
from diffusion_jax.errors import CheckpointError, DataNotFoundError, UserError
from diffusion_jax.fid import FidStatistics, save_statistics
from diffusion_jax.fid import __main__ as fid_cli
from diffusion_jax.fid import weights as W

TINY = f"--config={REPO / 'configs' / 'tiny.py'}"


@pytest.fixture
def cli_flags():
    """Parses main's flags in-process (like the CLI would) and resets them afterwards."""

    def parse(*args: str) -> None:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["main", *args])

    yield parse
    flags.FLAGS.unparse_flags()


# ----------------------------------------------------------------------------- (a) data first


def test_missing_data_is_found_before_the_model_is_built(tmp_path, cli_flags, monkeypatch, caplog):
    def no_build(config):
        raise AssertionError("validate_config (the model build) ran before the data check")

    monkeypatch.setattr(state_lib, "validate_config", no_build)
    for mode in ("train", "train_and_eval", "fid_stats"):
        cli_flags(TINY, f"--workdir={tmp_path / 'w'}", f"--mode={mode}")
        main._CONFIG.value.data.data_dir = str(tmp_path / "empty")
        start = time.perf_counter()
        assert main.run(["main"]) == 2, mode
        assert time.perf_counter() - start < 5, mode
        assert "mnist is not prepared in" in caplog.text
        assert not (tmp_path / "w").exists()


def test_a_config_that_does_not_fit_the_dataset_says_every_fix_at_once(tmp_path):
    config = tiny_config(str(tmp_path / "empty"))  # 28x28x1
    config.data.dataset = "cifar10"
    with pytest.raises(UserError) as error:
        main.check_data(config, "train")  # before the data check: nothing is read or made
    message = str(error.value)
    assert "cifar10 images are 32x32x3, the config asks for 28x28x1" in message
    assert "--config.data.image_size=32" in message and "--config.data.channels=3" in message
    main.check_data(config, "sample")  # reads no data: the checkpoint's shapes decide
    assert not any(tmp_path.iterdir())


def test_a_typo_in_a_config_file_is_refused_with_the_name_it_meant():
    config = tiny_config("unused")
    config.train.lrx = 1e-3  # what a config file can do: its ConfigDict is not locked
    config.sample.stepz = 10
    with pytest.raises(UserError) as error:
        state_lib.validate_config(config)
    message = str(error.value)
    assert "config.train.lrx (did you mean lr?)" in message
    assert "config.sample.stepz" in message and "no such setting" in message


def test_eval_checks_data_only_when_it_needs_reference_statistics(tmp_path):
    config = tiny_config(str(tmp_path / "empty"))
    config.fid.ref_stats = str(tmp_path / "ref-{protocol}.npz")
    with pytest.raises(DataNotFoundError):
        main.check_data(config, "eval")
    (tmp_path / "ref-tf.npz").write_bytes(b"")  # exists: eval never reads the data
    main.check_data(config, "eval")
    main.check_data(config, "sample")  # sampling never reads the data


def test_check_prepared(tiny_mnist_dir, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match="import --dataset=cifar10"):
        data.check_prepared("cifar10", "train", str(tmp_path))
    data.check_prepared("mnist", "test", tiny_mnist_dir)
    assert time.perf_counter() - start < 2
    with pytest.raises(UserError, match="Unknown split 'validation'"):
        data.check_prepared("mnist", "validation", tiny_mnist_dir)


# ----------------------------------------------------------------------------- (b) bugs


def test_only_user_errors_are_exit_2_other_errors_keep_their_traceback(cli_flags, monkeypatch):
    def shape_bug(config, args):
        raise ValueError("Incompatible shapes for broadcasting: (3,) and (4,)")

    monkeypatch.setitem(main.MODES, "bug", shape_bug)
    monkeypatch.setattr(main, "check_data", lambda config, mode: None)
    monkeypatch.setattr(state_lib, "validate_config", lambda config: None)
    cli_flags(TINY, "--workdir=/nonexistent")
    flags.FLAGS["mode"].value = "bug"
    with pytest.raises(ValueError, match="Incompatible shapes"):
        main.run(["main"])


# ----------------------------------------------------------------------------- (c) files


def test_workdir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    for workdir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(UserError, match="is a file, not a folder"):
            main.check_workdir(str(workdir))
    main.check_workdir(str(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()


def test_data_dir_that_is_a_file_is_reported_as_such(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for data_dir in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(UserError, match="is a file, not a folder") as info:
            data.load_split("mnist", data_dir=str(data_dir))
        assert not isinstance(info.value, DataNotFoundError)
    np.savez(tmp_path / "m.npz", x=np.zeros(1))
    args = ["import", "--dataset=mnist", f"--npz={tmp_path / 'm.npz'}"]
    assert data.main([*args, f"--data_dir={tmp_path / 'file' / 'tfds'}"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_text_file_as_npz(tmp_path):
    text = tmp_path / "mnist.npz"
    text.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(UserError, match=r"is not an \.npz file \(it starts with b'x_trai'") as e:
        data.read_npz(text)
    assert "allow_pickle" not in str(e.value)


def test_truncated_array_record_names_the_file(tiny_mnist_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(tiny_mnist_dir, copy)
    (record,) = copy.rglob("mnist-train.array_record-*")
    with open(record, "r+b") as f:
        f.truncate(record.stat().st_size * 2 // 3)
    with pytest.raises(UserError) as info:
        data.load_split("mnist", data_dir=str(copy), progress=False)
    message = str(info.value)
    assert str(record) in message and "corrupt or truncated" in message
    assert "import --dataset=mnist" in message and "--overwrite" in message
    for command in ("import", "download"):  # pasted as printed, each replaces the data
        assert f"data {command} --dataset=mnist --data_dir={copy} --overwrite" in message
    record.write_bytes(b"not a record file\n")  # garbage from the first byte
    with pytest.raises(UserError, match="corrupt or truncated"):
        data.load_split("mnist", data_dir=str(copy), progress=False)


# ----------------------------------------------------------------------------- (d) labels


def test_labels_beyond_num_classes_are_refused():
    split = data.Split(
        images=np.zeros((1, 3, 2, 2, 1), np.uint8),
        labels=np.array([[0, 9, 4]], np.int32),
        num_examples=3,
    )
    with pytest.raises(UserError, match=r"labels go from 0 up to 9 but config.model.num_classes=5"):
        data.check_labels(split, 5, "mnist")
    data.check_labels(split, 10, "mnist")
    data.check_labels(split, 0, "mnist")  # unconditional: labels unused


# ----------------------------------------------------------------------------- (e) FID


def test_statistics_are_written_atomically(tmp_path, monkeypatch):
    stats = FidStatistics(np.zeros(4), np.eye(4), 10, "tf", "n" * 64, "mnist", "test")
    path = tmp_path / "ref.npz"
    save_statistics(path, stats)
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_statistics(path, FidStatistics(np.ones(4), np.eye(4), 10, "tf", "n" * 64))
    assert path.read_bytes() == before  # the old file is intact, no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]


def test_weights_message_names_the_real_config_field():
    text = W.how_to_get_weights()
    assert "config.fid.weights" in text and "weights_path" not in text


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("DJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(W, "download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))

    def never(*args, **kwargs):
        raise AssertionError("the FID network was loaded before both inputs were checked")

    monkeypatch.setattr(W, "load_weights", never)
    monkeypatch.setattr(W, "load_file", never)


def _pngs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_fid_cli_checks_both_inputs_before_any_work(tmp_path, capsys, no_network):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 8, 8, 3), np.uint8))
    (tmp_path / "text.npz").write_text("not numpy\n")
    _pngs(tmp_path / "corrupt", 3)
    png = tmp_path / "corrupt" / "1.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated
    _pngs(tmp_path / "bad_crc", 2)
    flipped = bytearray((tmp_path / "bad_crc" / "0.png").read_bytes())
    flipped[-20] ^= 0xFF  # a bit flip in the image data
    (tmp_path / "bad_crc" / "0.png").write_bytes(bytes(flipped))
    cases = {
        "missing.npz": "does not exist",
        "one.npz": "at least 2 images; it holds 1",
        "good.npz[:1]": "at least 2 images; it holds 1",
        "text.npz": "is neither an .npz file",
        "corrupt": f"{png} is not a readable image",
        "bad_crc": "0.png is not a readable image",
    }
    for spec, needle in cases.items():
        for a, b in ((str(good), str(tmp_path / spec)), (str(tmp_path / spec), str(good))):
            assert fid_cli.main([a, b, "--no_progress"]) == 2, spec
            err = capsys.readouterr().err
            assert needle in err and len(err.strip().splitlines()) == 1, (spec, err)


def test_image_decoding_errors_name_the_file(tmp_path):
    _pngs(tmp_path / "imgs", 2)
    bad = tmp_path / "imgs" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    with pytest.raises(UserError, match=f"{bad} is not a readable image"):
        next(fid_cli._batches_of_files(tmp_path / "imgs", sorted((tmp_path / "imgs").iterdir()), 2))


# ----------------------------------------------------------------------------- (g) config file


def _load_like_config_flags(path: Path) -> BaseException:
    """The exception config_flags raises for `path`: it imports the file, then calls
    get_config() (the traceback then runs through the file, as in the CLI)."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("cfg_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.get_config()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("the config loaded")


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("x = 1\n", ("has no get_config() function",)),
        (
            "def get_config():\n    raise RuntimeError('boom inside')\n",
            ("failed to load: RuntimeError: boom inside", "line 2"),
        ),
        ("import no_such_module_here\n", ("ModuleNotFoundError", "no_such_module_here")),
        ("def get_config(:\n", ("SyntaxError",)),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, body, needles):
    path = tmp_path / "my_config.py"
    path.write_text(body)
    message = main.config_file_error(_load_like_config_flags(path), str(path))
    assert message.startswith(f"the config file {path}") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    # An override of a field that does not exist is not about the file.
    unknown = AttributeError("'ConfigDict' object has no attribute 'lrr'")
    assert main.config_file_error(unknown, str(path)) is None


def test_config_file_error_on_the_command_line(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text("def get_config():\n    raise KeyError('oops')\n")
    result = run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and no_traceback(result.stderr), result.stderr[-3000:]
    assert f"error: the config file {path} failed to load: KeyError: 'oops'" in result.stderr
    assert "unknown config field" not in result.stderr


# ----------------------------------------------------------------------------- (h) JAX cache


@pytest.fixture
def restore_jax_cache_config():
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for n, v in before.items():
        jax.config.update(n, v)


def test_compilation_cache_default_override_and_off(tmp_path, restore_jax_cache_config):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    expected = str(tmp_path / "xdg" / "diffusion_jax" / "jax_cache")
    assert main.configure_compilation_cache(env) == expected
    assert jax.config.jax_compilation_cache_dir == expected
    assert jax.config.jax_persistent_cache_min_compile_time_secs == main.CACHE_MIN_COMPILE_TIME_S

    jax.config.update("jax_compilation_cache_dir", None)
    assert main.configure_compilation_cache({"DJAX_COMPILATION_CACHE": "off"}) is None
    assert jax.config.jax_compilation_cache_dir is None

    mine = str(tmp_path / "mine")
    assert main.configure_compilation_cache({"DJAX_COMPILATION_CACHE": mine}) == mine
    jax.config.update("jax_compilation_cache_dir", None)
    home = os.path.expanduser("~")
    assert main.compilation_cache_dir({}) == f"{home}/.cache/diffusion_jax/jax_cache"


def test_compilation_cache_keeps_the_users_jax_settings(tmp_path, restore_jax_cache_config):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "users"),
        "DJAX_COMPILATION_CACHE": str(tmp_path / "ours"),
    }
    assert main.configure_compilation_cache(env) == str(tmp_path / "users")
    assert jax.config.jax_compilation_cache_dir is None  # JAX reads its own variable itself
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "XDG_CACHE_HOME": str(tmp_path)}
    main.configure_compilation_cache(env)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


@pytest.mark.parametrize(
    "section,field,value,match",
    [
        ("model", "time_emb_dim", 0, "config.model.time_emb_dim=0"),
        ("model", "time_emb_dim", -4, "config.model.time_emb_dim=-4"),
        ("", "seed", 2**64, "config.seed=18446744073709551616"),
        ("", "seed", -1, "config.seed=-1"),
        ("sample", "record_steps", ("a",), "config.sample.record_steps"),
        (
            "diffusion",
            "loss_weighting",
            "snr",
            r"config.diffusion.loss_weighting='snr' is not one of \('uniform', 'min_snr'\)",
        ),
        (
            "diffusion",
            "min_snr_gamma",
            0.0,
            "config.diffusion.min_snr_gamma=0.0 must be a number > 0",
        ),
        ("diffusion", "min_snr_gamma", -1.0, "config.diffusion.min_snr_gamma=-1.0"),
    ],
)
def test_config_values_that_used_to_crash_are_user_errors(section, field, value, match):
    """These reached ZeroDivisionError / TypeError / OverflowError deep in JAX."""
    config = tiny_config("unused")
    (config[section] if section else config)[field] = value
    with pytest.raises(UserError, match=match):
        state_lib.validate_config(config)


# ----------------------------------------------------------------------------- (i) issue 25


@pytest.mark.parametrize("config_name", ["tiny", "gan_mnist", "vae_mnist", "denoiser_mnist", "dip"])
def test_a_file_where_the_workdir_keeps_a_folder_is_refused_before_any_work(
    tmp_path, cli_flags, monkeypatch, caplog, config_name
):
    """A regular file named checkpoints (best, eval, sample, edit, ...) made training see an
    empty workdir, replace best/ and rewrite metrics.jsonl, then hang on its first save. Every
    mode of every method, each folder replaced by a file: exit 2, nothing read or changed."""
    from diffusion_jax import methods

    def no_build(config):
        raise AssertionError("validate_config (the model build) ran before the workdir check")

    monkeypatch.setattr(state_lib, "validate_config", no_build)
    monkeypatch.setattr(methods, "validate_config", no_build)
    monkeypatch.setattr(main, "check_data", lambda config, mode: None)
    names = main.WORKDIR_FOLDERS if config_name == "tiny" else ("checkpoints", "report")
    for name in names:
        workdir = tmp_path / name
        (workdir / "best" if name != "best" else workdir / "checkpoints").mkdir(parents=True)
        (workdir / name).write_text("x")
        (workdir / "metrics.jsonl").write_text('{"step": 40}\n')
        before = snapshot(workdir)
        for mode in main.MODES:
            config = f"--config={REPO / 'configs' / f'{config_name}.py'}"
            cli_flags(config, f"--workdir={workdir}", f"--mode={mode}")
            caplog.clear()
            assert main.run(["main"]) == 2, (name, mode)
            assert f"holds a file where the run keeps a folder: {workdir / name}." in caplog.text
            assert snapshot(workdir) == before, (name, mode)


def test_a_run_from_scratch_never_replaces_a_best_checkpoint_it_did_not_write(tmp_path):
    """checkpoints/ gone, best/40 left: training would start at step 0 and replace best/40."""
    workdir = tmp_path / "w"
    (workdir / "best" / "40").mkdir(parents=True)
    (workdir / "best" / "40" / "meta").write_text("x")
    before = snapshot(workdir)
    config = tiny_config(str(tmp_path / "no_data"))  # refused before the data is read
    with pytest.raises(CheckpointError, match=r"best holds the best checkpoint of step 40, but"):
        train.train_and_evaluate(config, str(workdir))
    assert snapshot(workdir) == before and sorted(os.listdir(workdir)) == ["best"]
    (workdir / "checkpoints" / "36").mkdir(parents=True)  # a run to resume: its best is its own
    checkpoint.check_best_is_ours(str(workdir), ckpt_every=4)
    shutil.rmtree(workdir / "checkpoints")
    # Stopped before its first checkpoint completed: the restart repeats the same steps.
    checkpoint.check_best_is_ours(str(workdir), ckpt_every=40)
    (workdir / "checkpoints").write_text("x")
    with pytest.raises(CheckpointError, match="checkpoints is a file, not a folder"):
        checkpoint.Checkpoints(str(workdir), read_only=True)


_REPLACE_CHECKPOINTS_MID_RUN = """
import os, shutil, sys
from diffusion_jax import main, train
load = train.load_train_data
def load_then_break_the_folder(config, mesh):
    out = load(config, mesh)
    folder = os.path.join(sys.argv[-1].split("=", 1)[1], "checkpoints")
    shutil.rmtree(folder)
    open(folder, "w").close()  # every save now fails: Not a directory
    return out
train.load_train_data = load_then_break_the_folder
sys.argv = ["main", *sys.argv[1:]]
main.main()
"""


def test_a_failed_save_exits_2_instead_of_hanging(tiny_mnist_dir, tmp_path):
    """Orbax's save threads wait minutes for the signals of a save that failed: the CLI exits."""
    workdir = tmp_path / "w"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _REPLACE_CHECKPOINTS_MID_RUN, *flags_for(tiny_mnist_dir),
         f"--workdir={workdir}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.perf_counter() - start < 120
    assert no_traceback(result.stderr), result.stderr[-3000:]
    assert f"Saving the checkpoint of step 4 in {workdir / 'checkpoints'} failed" in result.stderr


def test_a_signal_inside_a_jax_call_is_raised_once_the_call_returns():
    """The handler used to raise inside JAX's tracing / dispatch (its Python under C++, XLA
    threads running): sample and edit then died of SIGSEGV (exit 139) after "Stopped."."""
    import jax.numpy as jnp

    reached = []

    def signalled_while_tracing(x):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside jax.jit's tracing
        reached.append("traced")
        return x + 1

    handler = signal.getsignal(signal.SIGTERM)
    trace = sys.gettrace()
    stop = train.StopRequest(when="during the test", note="nothing saved")
    with stop, pytest.raises(train.TrainingStopped, match="SIGTERM received during the") as e:
        out = jax.jit(signalled_while_tracing)(jnp.zeros(3))
        reached.append(np.asarray(out).tolist())  # the stop is raised before this line
    assert reached == ["traced"] and e.value.signum == signal.SIGTERM == stop.signum
    assert sys.gettrace() is trace and signal.getsignal(signal.SIGTERM) is handler


def test_a_signal_while_logging_writes_is_not_swallowed_by_the_handler():
    """logging's StreamHandler catches every Exception a write raises: a stop raised there was
    printed as "--- Logging error ---" and the mode ran on to the end (exit 0)."""

    class SignalOnWrite(io.StringIO):
        def write(self, text: str) -> int:
            os.kill(os.getpid(), signal.SIGTERM)
            return super().write(text)

    logger = logging.getLogger("test_signal_while_logging")
    logger.addHandler(logging.StreamHandler(SignalOnWrite()))
    try:
        with train.StopRequest(), pytest.raises(train.TrainingStopped):
            logger.warning("a line")
    finally:
        logger.handlers.clear()


@pytest.fixture(scope="module")
def trained_4_steps(tiny_mnist_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny run trained 4 steps by the CLI, and the flags of its config (512 samples, a small
    denoise edit)."""
    workdir = tmp_path_factory.mktemp("trained_4_steps")
    args = flags_for(tiny_mnist_dir, train__num_steps=4, sample__num_samples=512)
    args += ["--config.edit.kind=denoise", "--config.edit.indices=0-1"]
    args += ["--config.edit.psnr_images=8"]
    result = run_main(*args, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, args


def _gradient_file(folder: Path, mode: str) -> tuple[Path, np.ndarray]:
    """A 32x64 left-to-right gradient saved in PIL mode `mode` (or "animated": a 2-frame GIF
    whose first frame is the gradient), and the 8-bit grey values it must read as."""
    from PIL import Image

    g = np.tile(np.round(np.linspace(0, 255, 64)).astype(np.uint8), (32, 1))
    grey = [v for i in range(256) for v in (i, i, i)]
    path, expected = folder / f"{mode.replace(';', '_')}.png", g
    if mode == "1":
        img, expected = Image.fromarray(g > 127), np.where(g > 127, 255, 0).astype(np.uint8)
    elif mode in ("L", "RGB", "RGBA", "LA", "CMYK"):
        img = Image.fromarray(g).convert(mode)
        path = path.with_suffix(".tif") if mode == "CMYK" else path
    elif mode in ("P", "animated"):
        img = Image.fromarray(g, "P")
        img.putpalette(grey)
    elif mode == "I;16":
        img = Image.fromarray(g.astype(np.uint16) * 257)
    elif mode == "I":
        img, path = Image.fromarray(g.astype(np.int32) * 257), path.with_suffix(".tif")
    else:  # "F"
        img, path = Image.fromarray(g.astype(np.float32) / 255), path.with_suffix(".tif")
    if mode == "animated":
        path = path.with_suffix(".gif")
        second = Image.fromarray(255 - g, "P")
        second.putpalette(grey)
        img.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    else:
        img.save(path)
    with Image.open(path) as check:
        assert check.mode == {"animated": "P"}.get(mode, mode), (mode, check.mode)
    return path, expected


PIL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "animated")


@pytest.mark.parametrize("mode", PIL_MODES)
def test_every_pil_mode_reads_as_its_8_bit_values(tmp_path, mode):
    """16-bit, 32-bit and float files were clipped to 0/255 by convert("RGB"/"L"): a 16-bit
    gradient read as 99.5% white, in edit inputs, masks and the FID CLI's folder reader."""
    path, expected = _gradient_file(tmp_path, mode)
    tolerance = 2 if mode == "CMYK" else 0
    edit_input = edit_inputs.convert_image(edit_inputs.open_image(str(path)), 32, 1, invert=False)
    assert np.abs(edit_input[..., 0].astype(int) - expected[:, 16:48]).max() <= tolerance
    fid_image = fid_cli._load_image(path)
    assert fid_image.shape[:2] == (32, 64)
    assert fid_cli._check_image_file(path) == fid_image.shape
    assert np.abs(fid_image.astype(int) - expected[..., None]).max() <= tolerance


def test_wide_masks_and_out_of_range_files(tmp_path):
    from PIL import Image

    config = tiny_config("unused")
    half = np.zeros((28, 28)) + (np.arange(28) < 14)
    for name, values in (("m16.png", half.astype(np.uint16) * 65535), ("mf.tif", half)):
        Image.fromarray(values.astype(np.float32) if name.endswith("tif") else values).save(
            tmp_path / name
        )
        config.edit.mask = str(tmp_path / name)
        keep, _ = edit_inputs.load_mask(config, 1)
        np.testing.assert_array_equal(keep[0, ..., 0], half)  # F 1.0 was 1/255: refused as grey
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "big.tif")
    Image.fromarray(np.full((4, 4), 2.0, np.float32)).save(tmp_path / "two.tif")
    with pytest.raises(UserError, match=r"big.tif is a 32-bit integer image with values in \[7"):
        edit_inputs.open_image(str(tmp_path / "big.tif"))
    with pytest.raises(UserError, match=r"two.tif is a floating-point image with values in \[2"):
        fid_cli._load_image(tmp_path / "two.tif")


def _edit_error(**settings) -> str:
    config = tiny_config("unused", model__num_classes=10)
    for key, value in settings.items():
        config.edit[key] = value
    with pytest.raises(UserError) as error:
        edit_settings.validate(edit_settings.resolve_defaults(config)[0])  # before weights or data
    return str(error.value)


def test_edit_settings_that_raised_after_the_weights_are_refused_first():
    """Kernels larger than the image, and tuples the command line could not parse (kept as
    their text), were tracebacks (exit 1) after the weights were read."""
    assert "config.edit.blur_kernel=99: is too large for 28x28 images: at most 55" in _edit_error(
        kind="denoise", blur_kernel=99
    )
    assert "hybrid_kernel=57: is too large" in _edit_error(kind="hybrid", hybrid_kernel=57)
    for kind, name, text in (
        ("sdedit", "strength", "(nan,)"),
        ("sdedit", "strength", "nan"),
        ("denoise", "noise_levels", "(abc,)"),
        ("sdedit", "i_start", "(x,)"),
    ):
        message = _edit_error(kind=kind, **{name: (text,)})
        assert f"config.edit.{name}=('{text}',): give " in message and "like (" in message


def test_unparsable_tuple_override_on_the_command_line_is_exit_2(tmp_path, cli_flags, caplog):
    cli_flags(TINY, f"--workdir={tmp_path}", "--mode=edit")
    main._CONFIG.value.edit.kind = "sdedit"
    main._CONFIG.value.edit.strength = ("(nan,)",)  # what --config.edit.strength=(nan,) gives
    assert main.run(["main"]) == 2
    assert "config.edit.strength=('(nan,)',): give finite numbers" in caplog.text


def test_decompression_bomb_image_or_mask_is_one_message(tmp_path, monkeypatch):
    from PIL import Image

    _pngs(tmp_path / "big", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 8x8 = 64 > 2 * 16: a "bomb"
    path = str(tmp_path / "big" / "0.png")
    with pytest.raises(UserError, match="could be decompression bomb.* Give a smaller image"):
        edit_inputs.open_image(path)
    config = tiny_config("unused")
    config.edit.mask = path
    with pytest.raises(UserError, match="decompression bomb"):
        edit_inputs.load_mask(config, 1)


def test_save_stats_under_a_file_is_refused_before_the_network_runs(tmp_path, capsys, no_network):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "file").write_text("x")
    for flag, needle in (
        (f"--save_stats_a={tmp_path / 'file' / 's.npz'}", f"lies under {tmp_path / 'file'}"),
        (f"--save_stats_b={tmp_path}", "is a folder; give a file name"),
    ):
        assert fid_cli.main([str(good), str(good), flag, "--no_progress"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_metrics_that_cannot_be_written_are_a_user_error(tmp_path):
    from diffusion_jax import writers

    (tmp_path / writers.METRICS_FILE).mkdir()  # as a full disk: open() raises OSError
    with pytest.raises(UserError, match="Cannot write the run's metrics in .*free disk space"):
        writers.create_writer(str(tmp_path), is_main=True, tensorboard=True, resume_step=0)


def test_num_classes_too_small_is_found_before_the_data_is_read(tmp_path):
    config = tiny_config(str(tmp_path / "empty"), model__num_classes=5)
    with pytest.raises(UserError, match=r"mnist labels go from 0 up to 9 but .*num_classes=5"):
        main.check_data(config, "train")  # the data dir is empty: nothing was read
    config.model.num_classes = 10
    with pytest.raises(DataNotFoundError):
        main.check_data(config, "train")


@pytest.mark.parametrize(("body", "returned"), [("None", "None"), ("{'data': {}}", "a dict")])
def test_get_config_returning_no_config_dict_says_so(tmp_path, cli_flags, body, returned):
    path = tmp_path / "cfg.py"
    path.write_text(f"def get_config():\n    return {body}\n")
    cli_flags(f"--config={path}", f"--workdir={tmp_path / 'w'}")
    with pytest.raises(UserError, match=f"get_config\\(\\) returned {returned}, not an ml_coll"):
        main._load_config()  # was "--config is required" (None), "lacks the setting" (a dict)
    if body == "None":
        return
    # With an override it failed while parsing the flags: "unknown config field dataset".
    result = run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}", "--config.data.dataset=x")
    assert result.returncode == 2 and no_traceback(result.stderr), result.stderr[-3000:]
    assert f"error: the config file {path}: get_config() returned a dict, not" in result.stderr
    assert "unknown config field" not in result.stderr


def test_a_signal_during_the_final_fid_says_the_checkpoint_is_intact(monkeypatch, tmp_path):
    import jax.numpy as jnp

    from diffusion_jax import evaluate

    class FakeEvaluator:
        def periodic(self):
            return None

    def trained(config, workdir, *, evaluate_fn=None, stop=None):
        return state_lib.TrainState(step=jnp.int32(7), params={}, ema_params={}, opt_state=(),
                                    rng=jax.random.PRNGKey(0))  # fmt: skip

    def signalled_eval(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the handler raises before this line")

    monkeypatch.setattr(evaluate.Evaluator, "create", staticmethod(lambda c, **kw: FakeEvaluator()))
    monkeypatch.setattr(train, "train_and_evaluate", trained)
    monkeypatch.setattr(evaluate, "run_eval", signalled_eval)
    with pytest.raises(train.TrainingStopped) as e:
        train.train_and_eval(tiny_config("unused"), str(tmp_path))
    message = str(e.value)
    assert "during the final FID; the checkpoint of step 7 in" in message, message
    assert "is intact" in message and "nothing was saved" not in message


def test_watch_timeout_that_never_expires_is_refused(monkeypatch):
    from diffusion_jax import watch

    def no_build(config):
        raise AssertionError("the model was built before --watch_timeout was checked")

    monkeypatch.setattr(state_lib, "validate_config", no_build)
    for timeout in (float("nan"), float("inf"), -1.0):
        with pytest.raises(UserError, match=f"--watch_timeout={timeout}: give the seconds"):
            watch.run_watch(tiny_config("unused"), "/nonexistent", timeout_s=timeout)
    watch.check_timeout(0.0)


def test_a_second_watcher_on_one_workdir_is_refused(tmp_path):
    """Two watchers both evaluated every checkpoint and wrote every record twice."""
    from diffusion_jax import watch

    second = pytest.raises(UserError, match=f"process {os.getpid()}\\) is already following")
    with watch.only_watcher(str(tmp_path)), second, watch.only_watcher(str(tmp_path)):
        pass
    with watch.only_watcher(str(tmp_path)):  # released with the first watcher
        pass


def test_corrupt_checkpoint_message_has_no_tensorstore_repr():
    inner = ValueError(
        'OUT_OF_RANGE: Error reading "up.4.kernel.value/0.0" in OCDBT database at local file '
        '"/w/checkpoints/8/ema_params/": Requested byte range [0, 9) is not valid for value of '
        "size 7 [source locations='tensorstore/kvstore/ocdbt/io.cc:1']"
    )
    try:
        try:
            raise inner
        except ValueError as e:
            raise Exception(  # what Orbax raises around it
                "Encountered error while reading array index: (slice(0, 64, 1),). See full "
                "TensorStore details: <bound method pybind11_detail_function_record_v1_system_"
                "libstdcpp_gxx_abi_1xxx_use_cxx11_abi_1.spec of TensorStore({\n  'base': {"
            ) from e
    except Exception as outer:  # noqa: BLE001
        reason = checkpoint._first_reason(outer)
    assert reason.startswith("Requested byte range [0, 9) is not valid for value of size 7")
    assert "bound method" not in reason and "TensorStore({" not in reason


def test_a_corrupt_checkpoint_is_one_message_without_asyncio_noise(trained_4_steps, tmp_path):
    """Read failures left TensorStore's callbacks to print "Event loop is closed" tracebacks
    (thousands of lines in eval_watch); only failed saves were quieted."""
    workdir, args = trained_4_steps
    run = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", run / "checkpoints")
    for f in (run / "checkpoints" / "4" / "ema_params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage" * 100)
    result = run_main(*args, f"--workdir={run}", "--mode=sample")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot be read (" in result.stderr and no_traceback(result.stderr), result.stderr[
        -3000:
    ]
    assert "Event loop is closed" not in result.stderr


def test_a_checkpoint_of_another_method_is_named_as_such(trained_4_steps):
    """A DDPM checkpoint read with a GAN config (or the reverse) was a shape mismatch listing
    irrelevant config.model.* differences."""
    from train_utils import load_config

    from diffusion_jax import parallel, sampling

    workdir, _ = trained_4_steps
    gan = load_config("gan_mnist")
    with pytest.raises(CheckpointError) as error:
        sampling.load_ema_params(gan, str(workdir), parallel.make_mesh())
    message = str(error.value)
    assert "was trained with config.method='ddpm'; the config is a 'gan' config" in message
    assert "configs/mnist.py" in message and "config.model." not in message, message
    saved = {"config": {"method": "dcgan", "data": {"dataset": "cifar10"}}, "param_shapes": {}}
    expected = checkpoint.make_meta(tiny_config("unused"), {})
    with pytest.raises(CheckpointError, match=r"Give a 'dcgan' config \(e.g. configs/dcgan_cif"):
        checkpoint.check_compatible(saved, expected, "w/checkpoints/4")
