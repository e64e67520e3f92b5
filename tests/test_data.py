"""diffusion_jax.data: import round trip, sharding, TF-free reading, errors and the CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax import data
from diffusion_jax.errors import DataNotFoundError, UserError

REPO = Path(__file__).resolve().parents[1]
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")


def tfds_order(split: str, n: int) -> np.ndarray:
    """The record order TFDS gives examples keyed 0..n-1 (md5 of the key, salted by split)."""
    from tensorflow_datasets.core import hashing

    hasher = hashing.Hasher(split)
    return np.array(sorted(range(n), key=hasher.hash_key))


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True
    )


# ----------------------------------------------------------------------------- round trip


def test_real_mnist_round_trip(mnist_tfds_dir, mnist_npz):
    """The import is lossless and in the order a TFDS download would have."""
    npz = np.load(mnist_npz)
    test = data.load_split("mnist", "test", data_dir=mnist_tfds_dir, progress=False)
    order = tfds_order("test", 10_000)
    assert test.num_examples == 10_000
    assert test.images.dtype == np.uint8 and test.images.shape == (1, 10_000, 28, 28, 1)
    assert test.labels.dtype == np.int32 and test.labels.shape == (1, 10_000)
    np.testing.assert_array_equal(test.images[0, ..., 0], npz["x_test"][order])
    np.testing.assert_array_equal(test.labels[0], npz["y_test"][order])

    # One sixth of train, as gray -> RGB: checks the train split without decoding all 60k.
    train = data.load_split(
        "mnist", "train", data_dir=mnist_tfds_dir, channels=3, shards=(1,), num_shards=6
    )
    rows = tfds_order("train", 60_000)[10_000:20_000]
    assert train.num_examples == 60_000 and train.images.shape == (1, 10_000, 28, 28, 3)
    expected = np.repeat(npz["x_train"][rows][..., None], 3, axis=-1)
    np.testing.assert_array_equal(train.images[0], expected)
    np.testing.assert_array_equal(train.labels[0], npz["y_train"][rows])


def test_tiny_round_trip(tiny_mnist_dir, tiny_mnist_arrays):
    for split, (images, labels) in tiny_mnist_arrays.items():
        got = data.load_split("mnist", split, data_dir=tiny_mnist_dir, progress=False)
        order = tfds_order(split, len(labels))
        np.testing.assert_array_equal(got.images[0, ..., 0], images[order])
        np.testing.assert_array_equal(got.labels[0], labels[order])


def test_cifar_layout_round_trip(tmp_path):
    """RGB images and the extra `id` feature of TFDS's cifar10 builder."""
    rng = np.random.default_rng(1)
    arrays = {
        s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
        for s, n in (("train", 40), ("test", 8))
    }
    data.import_arrays("cifar10", arrays, str(tmp_path), full=False)
    got = data.load_split("cifar10", "train", data_dir=str(tmp_path), image_size=32, progress=False)
    order = tfds_order("train", 40)
    np.testing.assert_array_equal(got.images[0], arrays["train"][0][order])
    np.testing.assert_array_equal(got.labels[0], arrays["train"][1][order])

    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    assert builder.info.features["label"].names == list(data.DATASETS["cifar10"].label_names)
    example = builder.as_data_source("test")[0]
    assert example["id"].startswith(b"test_") and example["image"].shape == (32, 32, 3)


def test_to_model_space():
    import jax.numpy as jnp

    x = np.array([0, 127, 255], np.uint8)
    for arr in (x, jnp.asarray(x)):
        y = data.to_model_space(arr)
        assert y.dtype == np.float32
        np.testing.assert_allclose(np.asarray(y), [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-7)


# ----------------------------------------------------------------------------- sharding


def test_shards_concatenate_to_the_split_prefix(tiny_mnist_dir):
    full = data.load_split("mnist", data_dir=tiny_mnist_dir, progress=False)
    three = data.load_split(
        "mnist", data_dir=tiny_mnist_dir, shards=(0, 1, 2), num_shards=3, progress=False
    )
    assert three.num_examples == 512 and three.images.shape[:2] == (3, 170)  # 2 dropped
    np.testing.assert_array_equal(three.images.reshape(510, 28, 28, 1), full.images[0, :510])
    np.testing.assert_array_equal(three.labels.reshape(510), full.labels[0, :510])
    # Shards come back in the order asked for.
    two_zero = data.load_split(
        "mnist", data_dir=tiny_mnist_dir, shards=(2, 0), num_shards=3, progress=False
    )
    np.testing.assert_array_equal(two_zero.images, three.images[[2, 0]])


def test_each_process_reads_only_its_shards(tiny_mnist_dir, monkeypatch):
    requested: list[int] = []
    open_source = data._open_source

    class Recording:
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitems__(self, keys):
            requested.extend(keys)
            return self.source.__getitems__(keys)

    def recording_source(*args):
        builder, source = open_source(*args)
        return builder, Recording(source)

    monkeypatch.setattr(data, "_open_source", recording_source)
    data.load_split("mnist", data_dir=tiny_mnist_dir, shards=(1, 3), num_shards=4, progress=False)
    assert requested == list(range(128, 256)) + list(range(384, 512))


# ----------------------------------------------------------------------------- TF-free


def test_reading_works_with_tensorflow_absent(tiny_mnist_dir):
    """What the GPU machine does: no TensorFlow installed at all."""
    code = textwrap.dedent(
        """
        import importlib.machinery, sys

        class HideTensorFlow(importlib.machinery.PathFinder):  # as if not installed
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.partition(".")[0] == "tensorflow":
                    return None
                return super().find_spec(name, path, target)

        sys.meta_path = [
            HideTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path
        ]
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("tensorflow was not hidden")
        except ModuleNotFoundError:
            pass

        from diffusion_jax import data
        assert "tensorflow_datasets" not in sys.modules, "tfds imported at module import"
        split = data.load_split("mnist", data_dir=sys.argv[1], progress=False)
        assert not [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]
        print(int(split.images.sum()), int(split.labels.sum()))
        """
    )
    result = run_python(code, tiny_mnist_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    here = data.load_split("mnist", data_dir=tiny_mnist_dir, progress=False)
    assert result.stdout.split() == [str(int(here.images.sum())), str(int(here.labels.sum()))]


# ----------------------------------------------------------------------------- errors


def test_missing_data_fails_fast_with_the_command(tmp_path):
    for dataset, source in (("cifar10", "--npz="), ("fashion_mnist", "--idx_dir=")):
        start = time.perf_counter()
        with pytest.raises(DataNotFoundError) as info:
            data.load_split(dataset, data_dir=str(tmp_path))
        assert time.perf_counter() - start < 5
        message = str(info.value)
        command = f"python -m diffusion_jax.data import --dataset={dataset} --data_dir={tmp_path}"
        assert f"{command} {source}" in message
        assert f"download --dataset={dataset} --data_dir={tmp_path}" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dataset="imagenet"), "Unknown dataset 'imagenet'"),
        (dict(split="validation"), "Unknown split 'validation'"),
        (dict(channels=2), "channels must be 1 or 3"),
        (dict(dataset="cifar10", channels=1), "cifar10 is RGB"),
        (dict(image_size=32), "image_size=32 but mnist images are 28x28"),
        (dict(num_shards=0), "num_shards must be a positive integer"),
        (dict(shards=(3,), num_shards=3), r"shards \[3\] out of range for num_shards=3"),
        (dict(shards=(0, 0), num_shards=2), "distinct"),
        (dict(shards=()), "distinct"),
    ],
)
def test_bad_settings_fail_before_touching_disk(tmp_path, kwargs, match):
    kwargs = {"dataset": "mnist", **kwargs}
    with pytest.raises(UserError, match=match) as info:
        data.load_split(data_dir=str(tmp_path / "empty"), **kwargs)
    assert not isinstance(info.value, DataNotFoundError)


def test_more_shards_than_examples(tiny_mnist_dir):
    with pytest.raises(UserError, match="num_shards=1000 is more than the 512 examples"):
        data.load_split("mnist", data_dir=tiny_mnist_dir, num_shards=1000, progress=False)


def test_tfrecord_data_is_refused_with_advice(tmp_path, tiny_mnist_arrays):
    """TFDS's default format needs TensorFlow to read; say how to re-prepare."""
    small = {s: (x[:8], y[:8]) for s, (x, y) in tiny_mnist_arrays.items()}
    info_file = data.import_arrays("mnist", small, str(tmp_path), full=False) / "dataset_info.json"
    info = json.loads(info_file.read_text())
    info["fileFormat"] = "tfrecord"
    info_file.write_text(json.dumps(info))
    with pytest.raises(DataNotFoundError, match="(?s)stored as tfrecord.*--overwrite"):
        data.load_split("mnist", data_dir=str(tmp_path))


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/somewhere")
    assert data.default_data_dir("/given") == "/given"
    assert data.default_data_dir(None) == "/somewhere"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.default_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


# ----------------------------------------------------------------------------- import


def test_reimport_needs_overwrite_and_replaces_cleanly(tmp_path, tiny_mnist_arrays):
    small = {s: (x[:16], y[:16]) for s, (x, y) in tiny_mnist_arrays.items()}
    data.import_arrays("mnist", small, str(tmp_path), full=False)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        data.import_arrays("mnist", small, str(tmp_path), full=False)
    inverted = {s: (255 - x, y) for s, (x, y) in small.items()}
    data.import_arrays("mnist", inverted, str(tmp_path), full=False, overwrite=True)
    got = data.load_split("mnist", "test", data_dir=str(tmp_path), progress=False)
    np.testing.assert_array_equal(
        got.images[0, ..., 0], inverted["test"][0][tfds_order("test", 16)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]  # no temporary folders left


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.uint8), r"uint8 \[N, 28, 28\]"),
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.uint8), r"got uint8 \[4, 32, 32\]"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8), r"integers of shape \[4\]"),
        (np.zeros((4, 28, 28), np.uint8), np.full(4, 10), r"labels must be in \[0, 10\)"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8), "official split has 60000"),
    ],
)
def test_bad_arrays_are_named(tmp_path, images, labels, match):
    arrays = {"train": (images, labels), "test": (images, labels)}
    with pytest.raises(UserError, match=match):
        data.import_arrays("mnist", arrays, str(tmp_path))
    assert not (tmp_path / "mnist").exists()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def test_read_idx_dir(tmp_path, tiny_mnist_arrays):
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
    for split, (images, labels) in tiny_mnist_arrays.items():
        write_idx(tmp_path / f"{names[split][0]}.gz", images)
        write_idx(tmp_path / names[split][1], labels)  # plain files are accepted too
    got = data.read_idx_dir(tmp_path)
    for split, (images, labels) in tiny_mnist_arrays.items():
        np.testing.assert_array_equal(got[split][0], images)
        np.testing.assert_array_equal(got[split][1], labels)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01")
    with pytest.raises(UserError, match="not a uint8 idx file"):
        data.read_idx_dir(tmp_path)


@pytest.mark.skipif(
    not FASHION_IDX.is_dir(), reason=f"{FASHION_IDX} absent (dataset-fashion-mnist)"
)
def test_debian_fashion_mnist_idx():
    arrays = data.read_idx_dir(FASHION_IDX)
    images, labels = arrays["train"]
    assert images.shape == (60_000, 28, 28) and arrays["test"][0].shape == (10_000, 28, 28)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert images.mean() / 255 == pytest.approx(0.2860405969887955, abs=1e-12)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (dict(a=np.zeros(3)), "lacks ['x_train', 'y_train', 'x_test', 'y_test']"),
        (
            dict(x_train=np.zeros((2, 28, 28)), y_train=np.zeros(2, np.uint8),
                 x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2, np.uint8)),
            "mnist train images must be uint8 [N, 28, 28], got float64 [2, 28, 28]",
        ),
    ],
)  # fmt: skip
def test_cli_names_what_the_npz_should_hold(tmp_path, capsys, content, match):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **content)
    code = data.main(["import", "--dataset=mnist", f"--npz={npz}", f"--data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err


def test_cli_bad_dataset_and_missing_file(tmp_path, capsys):
    assert data.main(["import", "--dataset=imagenet", "--npz=x.npz"]) == 2
    assert "Unknown dataset 'imagenet'" in capsys.readouterr().err
    args = ["import", "--dataset=mnist", f"--npz={tmp_path}/nope.npz", f"--data_dir={tmp_path}"]
    assert data.main(args) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_says_when_already_prepared(tiny_mnist_dir, capsys):
    args = ["import", "--dataset=mnist", "--npz=unused.npz", f"--data_dir={tiny_mnist_dir}"]
    assert data.main(args) == 0
    assert "already prepared" in capsys.readouterr().err


def test_cli_download_asks_tfds_for_array_record(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    calls = []
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", lambda self, **kw: calls.append(kw)
    )
    assert data.main(["download", "--dataset=mnist", f"--data_dir={tmp_path}"]) == 0
    assert calls and calls[0]["file_format"] == "array_record"


def test_cli_process_exit_code_and_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_jax.data", "import", "--dataset=cifar10",
         f"--npz={tmp_path}/missing.npz", f"--data_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr
