"""`python -m diffusion_jax.main` as a user runs it: clear messages, exit codes, clean stops."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from train_utils import (
    REPO,
    compilation_cache,
    flags_for,
    main_command,
    no_traceback,
    run_main,
    snapshot,
    subprocess_env,
    tiny_config,
)

from diffusion_jax import checkpoint, main, parallel, train
from diffusion_jax import state as state_lib
from diffusion_jax.errors import TrainingDivergedError, UserError


def _assert_clean_failure(result, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert no_traceback(result.stderr), result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.train.lr=-1", "config.train.lr=-1"),
        ("--config.sample.sampler=euler", "config.sample.sampler='euler' is not one of"),
        ("--config.train.steps_per_call=3", "must be a multiple of config.train.steps_per_call=3"),
    ],
)
def test_bad_config_value_is_one_clear_message(tiny_mnist_dir, tmp_path, override, needle):
    result = run_main(*flags_for(tiny_mnist_dir), override, f"--workdir={tmp_path / 'w'}")
    _assert_clean_failure(result, 2, needle)
    assert not (tmp_path / "w").exists()


def test_missing_config_file_and_unknown_field(tmp_path):
    result = run_main("--config=configs/no_such.py", f"--workdir={tmp_path}")
    _assert_clean_failure(result, 2, "no_such.py")
    result = run_main(*flags_for(str(tmp_path)), "--config.train.lrr=1", f"--workdir={tmp_path}")
    _assert_clean_failure(result, 2, "lrr")


def test_missing_data_says_how_to_prepare_it(tmp_path):
    result = run_main(*flags_for(str(tmp_path / "empty")), f"--workdir={tmp_path / 'w'}")
    _assert_clean_failure(result, 2, "mnist is not prepared in", "python -m diffusion_jax.data")
    assert not (tmp_path / "w").exists()  # found before the workdir (or the model) is made


def test_modes_dispatch_and_errors_map_to_exit_codes(monkeypatch):
    """In-process: the dispatch table, and error types mapped to exit codes."""
    from absl import flags

    def diverge(config, args):
        raise TrainingDivergedError("loss became nan")

    def user_error(config, args):
        raise UserError("fix me")

    assert {"train", "sample", "eval", "fid_stats"} <= set(main.MODES)
    monkeypatch.setitem(main.MODES, "diverge", diverge)
    monkeypatch.setitem(main.MODES, "user_error", user_error)
    expected = {"diverge": 3, "user_error": 2}
    tiny = f"--config={REPO / 'configs' / 'tiny.py'}"
    try:
        for mode, code in expected.items():
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["main", tiny, "--workdir=/nonexistent"])
            flags.FLAGS["mode"].value = mode  # not among the enum's choices for the test modes
            assert main.run(["main"]) == code, mode
        assert main.run(["main", "stray"]) == 2
    finally:
        flags.FLAGS.unparse_flags()


def test_sigterm_saves_a_checkpoint_and_exits_0(tiny_mnist_dir, tmp_path):
    workdir = tmp_path / "run"
    args = flags_for(
        tiny_mnist_dir, train__num_steps=100_000, train__log_every=1, train__ckpt_every=50_000
    )
    process = subprocess.Popen(
        main_command(*args, f"--workdir={workdir}"),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    stopped = logged[-1]
    assert f"stopped by SIGTERM at step {stopped}; checkpoint saved" in stderr
    config = tiny_config(tiny_mnist_dir)
    _, abstract = state_lib.abstract_train_state(config, parallel.replicated(parallel.make_mesh()))
    ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
    restored = ckpts.restore(abstract, checkpoint.make_meta(config, abstract.params))
    ckpts.close()
    assert int(restored.step) == stopped


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tiny_mnist_dir, tmp_path):
    workdir = tmp_path / "run"
    with compilation_cache():
        train.train_and_evaluate(tiny_config(tiny_mnist_dir, train__num_steps=4), str(workdir))
    before = snapshot(workdir / "checkpoints")
    # An absurd learning rate blows the parameters up on the first update after the restart.
    args = flags_for(tiny_mnist_dir, train__num_steps=8, train__lr=1e30)
    result = run_main(*args, f"--workdir={workdir}")
    _assert_clean_failure(
        result, 3, "Training diverged", "last good checkpoint is step 4", "lower config.train.lr"
    )
    assert snapshot(workdir / "checkpoints") == before


def test_a_signal_before_anything_is_saved_stops_with_a_message(monkeypatch, tmp_path, caplog):
    """SIGTERM while a mode sets up (validation, compiling, loading) is one message, not a
    silent 143: exit 0 for the train modes (a clean stop), 128 + 15 for the others."""
    import os
    import signal

    from absl import flags

    def signalled(config, args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the handler raises before this line")

    handler = signal.getsignal(signal.SIGTERM)
    try:
        for mode, code in (("train", 0), ("eval", 143)):
            monkeypatch.setitem(main.MODES, mode, signalled)
            monkeypatch.setattr(main, "check_data", lambda config, mode: None)
            flags.FLAGS.unparse_flags()
            tiny = f"--config={REPO / 'configs' / 'tiny.py'}"
            flags.FLAGS(["main", tiny, f"--workdir={tmp_path / mode}"])
            flags.FLAGS["mode"].value = mode
            assert main.run(["main"]) == code, mode
            assert f"SIGTERM received during --mode={mode}" in caplog.text
    finally:
        flags.FLAGS.unparse_flags()
    assert signal.getsignal(signal.SIGTERM) is handler
