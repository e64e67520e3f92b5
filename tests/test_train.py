"""The train step and loop: learning, bit-exact resume, device-count invariance, time budget."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import (
    assert_trees_equal,
    compilation_cache,
    flags_for,
    run_main,
    tiny_config,
)

from diffusion_jax import checkpoint, parallel, sampling, train, writers
from diffusion_jax import state as state_lib


@pytest.fixture(scope="module", autouse=True)
def _cache():
    with compilation_cache():
        yield


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_ema_starts_from_the_parameters_and_warms_up():
    config = tiny_config("unused")
    _, state = state_lib.init_train_state(config)
    assert_trees_equal(state.params, state.ema_params)
    assert int(state.step) == 0
    assert float(state_lib.ema_decay(config, 0)) == pytest.approx(0.1)  # (1+0)/(10+0)
    assert float(state_lib.ema_decay(config, 10**6)) == pytest.approx(config.train.ema_decay)
    config.train.ema_warmup = False
    assert float(state_lib.ema_decay(config, 0)) == pytest.approx(config.train.ema_decay)


def test_learning_rate_warms_up_linearly_then_stays():
    config = tiny_config("unused", train__lr=1e-3, train__warmup_steps=10)
    lr = state_lib.learning_rate(config)
    assert [float(lr(s)) for s in (0, 5, 10, 100)] == pytest.approx([0, 5e-4, 1e-3, 1e-3])


def test_learning_rate_decays_in_stairs_after_the_warmup():
    config = tiny_config(
        "unused", train__lr=1e-3, train__warmup_steps=10, train__lr_decay_rate=0.5,
        train__lr_decay_steps=20,
    )  # fmt: skip
    lr = state_lib.learning_rate(config)
    steps = (0, 5, 10, 29, 30, 49, 50, 90)
    want = [0, 5e-4, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 6.25e-5]  # 90: 80 // 20 = 4 halvings
    assert [float(lr(s)) for s in steps] == pytest.approx(want)


def test_course_config_decays_by_ten_over_its_twenty_epochs():
    from train_utils import load_config

    config = load_config("ddpm_course_mnist")
    lr, epoch = state_lib.learning_rate(config), 60_000 // 128
    gamma = 0.1 ** (1 / 20)
    assert float(lr(0)) == pytest.approx(1e-3)
    assert float(lr(epoch - 1)) == pytest.approx(1e-3)
    assert float(lr(epoch)) == pytest.approx(1e-3 * gamma)
    assert float(lr(config.train.num_steps - 1)) == pytest.approx(1e-3 * gamma**19)
    assert float(lr(config.train.num_steps)) == pytest.approx(1e-4)
    state_lib.validate_config(config)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"train__lr_decay_rate": 0.0}, r"config.train.lr_decay_rate=0.0 must be in \(0, 1\]"),
        ({"train__lr_decay_rate": 0.5}, r"config.train.lr_decay_steps=0 must be a positive"),
        ({"train__lr_decay_steps": -3}, r"config.train.lr_decay_steps=-3 must be an integer >= 0"),
    ],
)
def test_bad_learning_rate_decay_is_refused(overrides, match):
    from diffusion_jax.errors import UserError

    with pytest.raises(UserError, match=match):
        state_lib.validate_config(tiny_config("unused", **overrides))


def test_batches_cover_each_shard_once_per_epoch_whatever_the_devices():
    """Rows of an epoch are distinct and each shard gives batch/num_shards rows per step."""
    n, size, batch = 2, 12, 4
    images = jnp.arange(n * size, dtype=jnp.uint8).reshape(n, size, 1, 1, 1)
    labels = jnp.arange(n * size, dtype=jnp.int32).reshape(n, size)
    data = train.TrainData(images=images, labels=labels)
    key = jax.random.PRNGKey(0)
    epoch = [train.select_batch(data, key, jnp.int32(s), batch) for s in range(size * n // batch)]
    rows = np.concatenate([np.asarray(y) for _, y in epoch])
    assert len(set(rows.tolist())) == len(rows) == n * size  # a permutation of the split
    for x, y in epoch:
        np.testing.assert_array_equal(np.asarray(x).ravel(), np.asarray(y))  # labels follow
        assert sorted(np.asarray(y) // size) == [0, 0, 1, 1]  # 2 rows from each shard
    again = train.select_batch(data, key, jnp.int32(size * n // batch), batch)[1]
    assert not np.array_equal(np.asarray(again), np.asarray(epoch[0][1]))  # a new epoch order


def test_loss_falls_on_real_mnist(mnist_tfds_dir, tmp_path):
    config = tiny_config(
        mnist_tfds_dir, train__num_steps=100, train__log_every=25, train__ckpt_every=100
    )
    state = train.train_and_evaluate(config, str(tmp_path))
    losses = [m["loss"] for m in _metrics(tmp_path)]  # means over steps 1-25, ..., 76-100
    assert int(state.step) == 100 and len(losses) == 4
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 0.67 -> 0.12
    assert losses[-1] < 0.2, losses
    assert (tmp_path / "loss.png").is_file()


def test_resume_is_bit_exact(tiny_mnist_dir, tmp_path):
    """6 steps in one go == a restart from the step-3 checkpoint, then 3 more steps."""
    config = tiny_config(
        tiny_mnist_dir, train__num_steps=6, train__ckpt_every=3, train__log_every=3
    )
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    # The run as if it had stopped at step 3: its checkpoint and its metrics up to there.
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "3", tmp_path / "resumed/checkpoints/3")
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "resumed" / "metrics.jsonl").write_text(lines[0] + "\n")
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(resumed.step) == int(straight.step) == 6
    assert_trees_equal(straight.params, resumed.params)
    assert_trees_equal(straight.ema_params, resumed.ema_params)
    assert_trees_equal(straight.opt_state, resumed.opt_state)
    assert_trees_equal(straight.rng, resumed.rng)
    logged = [m["loss"] for m in _metrics(tmp_path / "resumed")]
    assert logged == [m["loss"] for m in _metrics(tmp_path / "straight")]


def test_one_and_eight_devices_train_the_same(tiny_mnist_dir, tmp_path):
    """The batch is split over 8 simulated devices in a subprocess; results match 1 device."""
    overrides = dict(train__num_steps=4, train__ckpt_every=4)
    result = run_main(
        *flags_for(tiny_mnist_dir, **overrides), f"--workdir={tmp_path / 'eight'}", devices=8
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = tiny_config(tiny_mnist_dir, **overrides)
    one = train.train_and_evaluate(config, str(tmp_path / "one"))

    mesh = parallel.make_mesh()
    _, abstract = state_lib.abstract_train_state(config, parallel.replicated(mesh))
    ckpts = checkpoint.Checkpoints(str(tmp_path / "eight"), read_only=True)
    eight = ckpts.restore(abstract, checkpoint.make_meta(config, abstract.params))
    ckpts.close()
    assert int(eight.step) == 4
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-5)
    losses = [[m["loss"] for m in _metrics(tmp_path / d)] for d in ("one", "eight")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_time_budget_stops_and_checkpoints(tiny_mnist_dir, tmp_path, caplog):
    config = tiny_config(tiny_mnist_dir, train__num_steps=1000, train__time_budget_s=1e-3)
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    ckpts = checkpoint.Checkpoints(str(tmp_path), read_only=True)
    assert ckpts.all_steps() == [1]
    ckpts.close()
    assert "stopped by the time budget" in caplog.text


def test_a_finished_run_says_so_and_loads_nothing(tiny_mnist_dir, tmp_path, caplog, monkeypatch):
    config = tiny_config(tiny_mnist_dir, train__num_steps=1000, train__time_budget_s=1e-3)
    train.train_and_evaluate(config, str(tmp_path))  # stops at step 1 (the budget)
    from train_utils import snapshot

    before = snapshot(tmp_path)

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run must not load the training data")

    monkeypatch.setattr(train, "load_train_data", no_data)
    done = tiny_config(tiny_mnist_dir, train__num_steps=1)
    state = train.train_and_evaluate(done, str(tmp_path))
    assert int(state.step) == 1
    assert "Nothing to train" in caplog.text and "Raise --config.train.num_steps" in caplog.text
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("resume", [False, True])
def test_sigterm_before_the_first_step_stops_at_once_and_keeps_the_checkpoint(
    tiny_mnist_dir, tmp_path, monkeypatch, resume
):
    """A signal while data loads (or the state restores, or evaluators build) stops the run
    right there with a message saying what is on disk; nothing is written or lost."""
    import os
    import signal

    from train_utils import snapshot

    config = tiny_config(tiny_mnist_dir, train__num_steps=4, train__ckpt_every=4)
    if resume:
        train.train_and_evaluate(config, str(tmp_path))
        config.train.num_steps = 8
    before = snapshot(tmp_path)
    handler_before = signal.getsignal(signal.SIGTERM)
    real_load = train.load_train_data
    reached = []

    def load_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, before loading finishes
        reached.append("after the signal")  # not reached: the handler raises
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train, "load_train_data", load_then_signal)
    with pytest.raises(train.TrainingStopped, match="SIGTERM received before training") as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert not reached
    if resume:
        assert "checkpoint of step 4" in str(e.value) and "intact" in str(e.value)
    else:
        assert "no checkpoint was written" in str(e.value)
    assert snapshot(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored


def test_quality_run_stopped_by_a_signal_saves_and_skips_the_final_fid(monkeypatch):
    """SIGTERM during the quality run's training: the checkpoint is saved (by the loop) and the
    run ends there, instead of spending the final FID's time after the user asked to stop."""
    import signal

    from diffusion_jax import evaluate

    class FakeEvaluator:
        def periodic(self):
            return None

    def trained_until_sigterm(config, workdir, *, evaluate_fn=None, stop=None):
        stop.reason, stop.signum = "SIGTERM", signal.SIGTERM
        return state_lib.TrainState(step=jnp.int32(7), params={}, ema_params={}, opt_state=(),
                                    rng=jax.random.PRNGKey(0))  # fmt: skip

    def no_eval(*args, **kwargs):
        raise AssertionError("the final FID must not run after a stop request")

    monkeypatch.setattr(evaluate.Evaluator, "create", staticmethod(lambda c, **kw: FakeEvaluator()))
    monkeypatch.setattr(train, "train_and_evaluate", trained_until_sigterm)
    monkeypatch.setattr(evaluate, "run_eval", no_eval)
    with pytest.raises(train.TrainingStopped, match="saved at step 7; the final FID was not"):
        train.train_and_eval(tiny_config("unused"), "/nonexistent")


def test_a_time_budget_spans_resumes(tiny_mnist_dir, tmp_path, caplog, monkeypatch):
    """Each checkpoint keeps the training clock (wall and CPU seconds over every resume): a
    resumed run counts its budget from there, and one whose budget is spent loads nothing."""
    config = tiny_config(tiny_mnist_dir, train__num_steps=1000, train__time_budget_s=1e-3)
    train.train_and_evaluate(config, str(tmp_path))  # stops at step 1 (the budget)
    first = sampling.training_of(str(tmp_path), None, 1)
    assert first["train_wall_s"] > 0 and first["train_cpu_s"] > 0
    assert first["train_steps"] == 1 and first["images_seen"] == config.train.batch_size
    from train_utils import snapshot

    before = snapshot(tmp_path)
    real = train.load_train_data

    def no_data(*args, **kwargs):
        raise AssertionError("a run whose budget is spent must not load the training data")

    monkeypatch.setattr(train, "load_train_data", no_data)
    spent = tiny_config(
        tiny_mnist_dir, train__num_steps=1000, train__time_budget_s=first["train_wall_s"] * 0.99
    )
    assert int(train.train_and_evaluate(spent, str(tmp_path)).step) == 1
    assert "Nothing to train" in caplog.text and "time_budget_s" in caplog.text
    assert snapshot(tmp_path) == before

    monkeypatch.setattr(train, "load_train_data", real)
    more = tiny_config(
        tiny_mnist_dir, train__num_steps=2, train__time_budget_s=first["train_wall_s"] + 3600
    )
    assert int(train.train_and_evaluate(more, str(tmp_path)).step) == 2
    second = sampling.training_of(str(tmp_path), "latest", 2)
    assert second["train_wall_s"] > first["train_wall_s"]
    assert second["train_cpu_s"] > first["train_cpu_s"]


def test_a_relative_workdir_trains_saves_and_resumes(tiny_mnist_dir, tmp_path, monkeypatch):
    """`--workdir=runs/x` as the README writes it: Orbax needs absolute paths (a relative one
    failed the first save), so the checkpoints resolve it."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tiny_mnist_dir, train__num_steps=4)
    assert int(train.train_and_evaluate(config, "runs/rel").step) == 4
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "4").is_dir()
    more = tiny_config(tiny_mnist_dir, train__num_steps=6, train__ckpt_every=2)
    assert int(train.train_and_evaluate(more, "runs/rel").step) == 6


def test_a_tensorboard_run_logs_through_clu_and_writes_both_files(tiny_mnist_dir, tmp_path):
    """The CLI with TensorBoard on and TF installed: CLU's writer (its log lines pass the log
    filter), the parameter table, CLU's progress line, tf.summary events and metrics.jsonl;
    two steps per compiled call, so the metrics Collection is merged inside the scan's call
    and across calls."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("clu.metric_writers")
    workdir = tmp_path / "run"
    args = flags_for(
        tiny_mnist_dir, train__tensorboard=True, train__steps_per_call=2, train__log_every=4
    )
    result = run_main(*args, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "Parameters (ddpm) at step 0" in log and "Total: " in log
    assert "] examples_per_sec=" in log and "loss_std=" in log  # CLU's LoggingWriter, sorted
    assert "Setting work unit notes: " in log and "(8/8)" in log  # ReportProgress
    records = _metrics(workdir)
    assert [r["step"] for r in records] == [4, 8]
    assert set(records[0]) == {
        "step", "loss", "loss_std", "grad_norm", "lr", "steps_per_sec", "examples_per_sec",
        "heldout_loss", "heldout_loss_std",  # step 4 is a checkpoint
    }  # fmt: skip
    assert records[0]["loss_std"] > 0
    assert any(p.name.endswith(".v2") for p in workdir.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("through_clu", [True, False])
def test_profile_steps_write_one_trace_for_tensorboard(
    tiny_mnist_dir, tmp_path, monkeypatch, through_clu
):
    """config.train.profile_steps: one trace of those steps after the compile, into
    workdir/plugins/profile/<run>/ (TensorBoard's Profile tab), through CLU's Profile where
    CLU's periodic actions import, else jax.profiler; a run that ends inside the trace closes it."""
    if through_clu:
        pytest.importorskip("tensorflow")
    else:
        monkeypatch.setattr(writers, "clu_metric_writers", lambda: None)
    config = tiny_config(
        tiny_mnist_dir, train__num_steps=4, train__profile_steps=2, train__profile_start=1
    )
    train.train_and_evaluate(config, str(tmp_path / "a"))
    traces = list((tmp_path / "a" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    longer = tiny_config(
        tiny_mnist_dir, train__num_steps=2, train__profile_steps=50, train__profile_start=1
    )
    train.train_and_evaluate(longer, str(tmp_path / "b"))  # ends inside the trace
    assert len(list((tmp_path / "b" / "plugins" / "profile").glob("*/*.xplane.pb"))) == 1
