"""Metric writers: TensorBoard event files with CLU's writers (TF present) and without TensorFlow
(our own), metrics.jsonl in both cases, and a resumed run that shows every step once.

Event files are read back with TensorBoard's own accumulators, in a subprocess with TensorFlow
blocked: that is the reader a TF-free machine has, and it starts in under a second (with TF
installed, the accumulator would import it: seconds).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax import writers

pytest.importorskip("tensorboard")

_ROOT = str(Path(__file__).resolve().parents[1])

_READ = """
import json, sys
sys.modules["tensorflow"] = None  # the TF-free reader, as on the GPU machines
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0},
                       purge_orphaned_data=True).Reload()
tags = acc.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height] for e in acc.Images(t)] for t in tags["images"]},
}))
"""


def _run_python(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _read_events(logdir: Path) -> dict:
    return json.loads(_run_python(_READ, str(logdir)).splitlines()[-1])


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


@pytest.fixture
def tf_free(monkeypatch):
    """Our TF-free writers, as on a machine without TensorFlow (in this process TF may be
    importable, which would pick CLU's writers)."""
    monkeypatch.setattr(writers, "clu_metric_writers", lambda: None)


def test_scalars_and_images_read_back_in_tensorboard(tmp_path, tf_free) -> None:
    w = writers.create_writer(str(tmp_path), is_main=True)
    for step in (1, 2, 5):
        w.write_scalars(step, {"loss": 1.0 / step, "lr": 2e-4})
    w.write_images(5, {"samples": np.zeros((1, 10, 14, 3), np.uint8)})  # [1,H,W,C] as train does
    w.write_images(5, {"gray": np.full((6, 8, 1), 200, np.uint8), "pair": np.ones((2, 4, 4, 3))})
    w.close()

    events = _read_events(tmp_path)
    loss = events["scalars"]["loss"]
    assert [s for s, _ in loss] == [1, 2, 5]
    np.testing.assert_allclose([v for _, v in loss], [1.0, 0.5, 0.2], rtol=1e-6)  # float32
    assert events["images"]["samples"] == [[5, 14, 10]]  # step, width, height
    assert events["images"]["gray"] == [[5, 8, 6]]
    assert events["images"]["pair/image/0"] == events["images"]["pair/image/1"] == [[5, 4, 4]]
    assert _steps(tmp_path / writers.METRICS_FILE) == [1, 2, 5]


def test_resume_shows_each_step_once(tmp_path, tf_free) -> None:
    w = writers.create_writer(str(tmp_path), is_main=True)
    for step in range(1, 11):  # the run that is killed after step 10, checkpointed at 6
        w.write_scalars(step, {"loss": float(step)})
    w.write_images(10, {"samples": np.zeros((8, 8, 3), np.uint8)})
    w.close()
    with open(tmp_path / writers.METRICS_FILE, "a") as f:
        f.write('{"step": 11, "lo')  # the kill came mid-write

    w = writers.create_writer(str(tmp_path), is_main=True, resume_step=6)
    for step in (7, 8):
        w.write_scalars(step, {"loss": -float(step)})
    w.close()

    path = tmp_path / writers.METRICS_FILE
    assert _steps(path) == list(range(1, 9))
    assert [r["loss"] for r in writers.read_metrics(str(path))] == [1, 2, 3, 4, 5, 6, -7, -8]
    events = _read_events(tmp_path)
    assert events["scalars"]["loss"] == [[s, float(s)] for s in range(1, 7)] + [[7, -7], [8, -8]]
    assert events["images"]["samples"] == []  # step 10 belonged to the dead branch


def test_fresh_start_truncates_a_stale_file(tmp_path) -> None:
    path = tmp_path / writers.METRICS_FILE
    path.write_text('{"step": 3, "loss": 1}\n')
    os.chmod(path, 0o644)
    w = writers.create_writer(str(tmp_path), is_main=True, tensorboard=False, resume_step=0)
    w.write_scalars(1, {"loss": 2.0})
    w.close()
    assert _steps(path) == [1]
    assert os.stat(path).st_mode & 0o777 == 0o644  # the rewrite keeps the file's mode
    assert not [p for p in os.listdir(tmp_path) if p != writers.METRICS_FILE]  # no temp file


def test_truncate_metrics_keeps_lines_verbatim(tmp_path) -> None:
    path = tmp_path / writers.METRICS_FILE
    kept = '{"step": 1, "loss": 0.5}\n{"step": 2, "fid": "nan"}\n{"step": 2, "loss": 0.25}\n'
    path.write_text(kept + 'garbage\n{"step": 3}\n{"step": 2, "loss": 9}')  # no final newline
    assert writers.truncate_metrics(str(path), 2) == 2
    assert path.read_text() == kept + '{"step": 2, "loss": 9}\n'  # a complete last line stays
    assert writers.truncate_metrics(str(path), 2) == 0
    assert writers.truncate_metrics(str(tmp_path / "missing.jsonl"), 2) == 0


def test_write_json_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "sub" / "record.json"
    assert writers.write_json(path, {"b": [1, 2], "a": "é"}, indent=1) == path  # makes sub/
    assert path.read_text() == json.dumps({"b": [1, 2], "a": "é"}, indent=1) + "\n"
    os.chmod(path, 0o640)
    writers.write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.stat(path).st_mode & 0o777 == 0o640  # an overwrite keeps the file's mode

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(writers.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        writers.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 1}  # the old file, whole
    assert os.listdir(path.parent) == ["record.json"]  # the temporary file is gone


def test_appending_after_a_cut_line_starts_a_new_line(tmp_path) -> None:
    path = tmp_path / writers.METRICS_FILE
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    w = writers.create_writer(str(tmp_path), is_main=True, tensorboard=False)
    w.write_scalars(3, {"loss": 1.0})
    w.close()
    assert [r["step"] for r in writers.read_metrics(str(path))] == [1, 3]


def test_writes_events_with_tensorflow_blocked(tmp_path) -> None:
    code = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
import numpy as np
from diffusion_jax import writers
w = writers.create_writer(sys.argv[1], is_main=True)
w.write_scalars(3, {"loss": 0.5})
w.write_images(3, {"samples": np.zeros((1, 6, 6, 1), np.uint8)})
w.close()
print(type(w.writers[1]).__name__)
"""
    assert _run_python(code, str(tmp_path)).split() == ["TensorBoardWriter"]
    events = _read_events(tmp_path)
    assert events["scalars"]["loss"] == [[3, 0.5]]
    assert events["images"]["samples"] == [[3, 6, 6]]


_BOTH_PATHS = """
import sys
if sys.argv[2] == "blocked":
    sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
import numpy as np
from diffusion_jax import writers
d = sys.argv[1]
w = writers.create_writer(d, is_main=True, resume_step=0)  # a fresh run, as the loop makes it
for step in range(1, 11):  # the run that is killed after step 10, checkpointed at 6
    w.write_scalars(step, {"loss": float(step)})
w.write_images(4, {"samples": np.zeros((1, 6, 8, 3), np.uint8)})
w.write_images(10, {"samples": np.zeros((1, 6, 8, 3), np.uint8)})
w.write_texts(4, {"note": "hello"})
w.write_hparams({"train.lr": 1e-4, "model.channel_mult": "(1, 2)"})
w.close()
first = type(w.writers[0]).__name__
w = writers.create_writer(d, is_main=True, resume_step=6)
for step in (7, 8):
    w.write_scalars(step, {"loss": -float(step)})
w.close()
bar = writers.train_bar(10, initial=0, time_budget_s=0, started=0, enabled=True, clu_progress=True)
bar.update(2)
bar.close()
print(first, type(bar).__name__, sys.modules.get("tensorflow") is not None)
"""

# TensorBoard's plugin loader (what `tensorboard --logdir` reads with): tf.summary's tensors and
# our simple_values and Summary.Images alike, TF blocked.
_READ_TENSORS = """
import json, sys
sys.modules["tensorflow"] = None
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util
acc = EventAccumulator(sys.argv[1], size_guidance={"tensors": 0}, purge_orphaned_data=True)
acc.Reload()
out = {}
for tag in acc.Tags()["tensors"]:
    meta = acc.SummaryMetadata(tag).plugin_data
    events = []
    for e in acc.Tensors(tag):
        v = tensor_util.make_ndarray(e.tensor_proto)
        if meta.plugin_name == "images":
            v = [int(v[0]), int(v[1])]  # width, height
        elif meta.plugin_name == "text":
            v = v.reshape(-1)[0].decode()
        elif meta.plugin_name == "scalars":
            v = float(v)
        else:
            v = sorted(plugin_data_pb2.HParamsPluginData.FromString(meta.content)
                       .session_start_info.hparams)
        events.append([e.step, v])
    out[tag] = {"plugin": meta.plugin_name, "events": events}
print(json.dumps(out))
"""


@pytest.mark.parametrize("tensorflow", ["present", "blocked"])
def test_both_backends_write_the_same_events_and_metrics(tmp_path, tensorflow) -> None:
    """TF importable: CLU's `create_default_writer` (tf.summary) and `ReportProgress`; TF
    blocked: our TF-free writer and tqdm. The same calls, read back the same."""
    if tensorflow == "present":
        pytest.importorskip("tensorflow")
        pytest.importorskip("clu.metric_writers")
    writer, bar, tf_loaded = _run_python(_BOTH_PATHS, str(tmp_path), tensorflow).split()[-3:]
    if tensorflow == "present":
        assert (writer, bar, tf_loaded) == ("AsyncMultiWriter", "ReportProgress", "True")
    else:
        assert writer == "LoggingWriter" and bar != "ReportProgress" and tf_loaded == "False"
    events = json.loads(_run_python(_READ_TENSORS, str(tmp_path)).splitlines()[-1])
    assert events["loss"]["plugin"] == "scalars"
    expected = [[s, float(s)] for s in range(1, 7)] + [[7, -7.0], [8, -8.0]]
    assert events["loss"]["events"] == expected  # the dead branch's steps 7-10 are gone
    assert events["samples"] == {"plugin": "images", "events": [[4, [8, 6]]]}  # not step 10's
    assert events["note"] == {"plugin": "text", "events": [[4, "hello"]]}
    hparams = events["_hparams_/session_start_info"]
    assert hparams["plugin"] == "hparams"
    assert hparams["events"] == [[0, ["model.channel_mult", "train.lr"]]]
    path = tmp_path / writers.METRICS_FILE  # written by both
    assert _steps(path) == list(range(1, 9))
    assert [r["loss"] for r in writers.read_metrics(str(path))] == [1, 2, 3, 4, 5, 6, -7, -8]


def test_hparams_of_a_config_are_flat_and_plain() -> None:
    import ml_collections

    config = ml_collections.ConfigDict({"train": {"lr": 2e-4, "flip": True}, "model": {}})
    config.model.channel_mult = (1, 2)
    config.model.name = None
    assert writers.hparams_of(config) == {
        "train.lr": 2e-4,
        "train.flip": True,
        "model.channel_mult": "(1, 2)",
        "model.name": "None",
    }


def test_without_tensorboard_falls_back_to_log_lines(
    tmp_path, monkeypatch, caplog, tf_free
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    with caplog.at_level(logging.WARNING):
        w = writers.create_writer(str(tmp_path), is_main=True)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    assert "No TensorBoard event files" in caplog.text
    assert os.listdir(tmp_path) == [writers.METRICS_FILE]


def test_other_processes_only_log(tmp_path) -> None:
    w = writers.create_writer(str(tmp_path), is_main=False, resume_step=0)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    assert os.listdir(tmp_path) == []


def test_budget_bar_fills_with_the_seconds_of_the_budget_and_shows_the_step():
    now = [100.0]
    out = io.StringIO()
    bar = writers.BudgetBar(10.0, started=100.0, initial_step=40, clock=lambda: now[0], file=out)
    now[0] = 102.5  # the first call (it compiled): no rate yet
    bar.update(8)
    assert bar.n == 2.5 and bar.postfix == "step 48"
    now[0] = 104.5
    bar.update(8)
    assert bar.postfix == "step 56, 4 step/s"  # 8 steps in the 2 s since the first call
    bar.set_postfix_str("loss=0.1234")
    assert bar.postfix == "step 56, 4 step/s, loss=0.1234"  # shown at once
    now[0] = 130.0  # past the budget: the bar stops at its total
    bar.update(8)
    assert bar.n == 10.0
    assert bar.postfix.startswith("step 64, ") and bar.postfix.endswith("loss=0.1234")
    bar.close()
    text = out.getvalue()
    assert "train (budget 10 s)" in text and "10/10 s" in text


def test_train_bar_counts_steps_without_a_budget():
    assert not isinstance(
        writers.train_bar(100, initial=0, time_budget_s=0.0, started=0.0, enabled=False),
        writers.BudgetBar,
    )
    bar = writers.train_bar(100, initial=3, time_budget_s=0.0, started=0.0, enabled=True)
    try:
        assert bar.total == 100 and bar.n == 3
    finally:
        bar.close()
