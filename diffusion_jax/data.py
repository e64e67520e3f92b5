"""Host-side data: read TFDS datasets without TensorFlow, and import them offline.

Reading goes through TFDS's random-access `array_record` data source, which needs
tensorflow-datasets and array_record but not TensorFlow (the GPU machine has none).
Images are decoded here with PIL straight from the stored `tf.train.Example` records:
TFDS's own per-example NumPy decoding is about 3x slower.

Writing (`python -m diffusion_jax.data import ...`) turns a local copy (Keras-layout `.npz`
or idx files) into the standard TFDS dataset: the registered builder's name, version,
features and example keys, with PNG images encoded by PIL, so no TensorFlow is needed
either. Because the keys match, TFDS shuffles the records exactly as a TFDS download
would: an imported dataset and a downloaded one train identically.

TensorFlow and TFDS are imported inside functions only (see docs/DESIGN.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_jax.errors import DataNotFoundError, UserError

SPLITS = ("train", "test")
_READ_CHUNK = 4096  # records per batched read: bounds memory, drives the progress bar


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training code needs to know about a dataset before reading it."""

    name: str
    image_size: int
    channels: int
    num_classes: int
    split_sizes: Mapping[str, int]
    label_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 28, 1, 10, {"train": 60_000, "test": 10_000}, tuple(str(i) for i in range(10))
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        28,
        1,
        10,
        {"train": 60_000, "test": 10_000},
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        32,
        3,
        10,
        {"train": 50_000, "test": 10_000},
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


@dataclasses.dataclass
class Split:
    """The shards of one split that this process holds."""

    images: np.ndarray  # uint8 [num_local_shards, shard_size, H, W, C]
    labels: np.ndarray  # int32 [num_local_shards, shard_size]
    num_examples: int  # examples in the whole split (before dropping the remainder)


def to_model_space(images: Any) -> Any:
    """uint8 [0, 255] -> float32 [-1, 1]; works on NumPy and jax arrays (used on device)."""
    return images.astype("float32") / 127.5 - 1.0


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The given dir, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own default)."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(os.fspath(chosen))


def prepare_commands(dataset: str, data_dir: str, *, overwrite: bool = False) -> str:
    """The commands that prepare `dataset`, for error messages (with `--overwrite` when they
    replace data that is there: pasted as printed, they then do what the message says)."""
    if dataset == "fashion_mnist":
        what = "the idx files of Debian's dataset-fashion-mnist package"
        source = "--idx_dir=/usr/share/datasets/fashion-mnist"
    else:
        what = "a Keras-layout .npz (x_train, y_train, x_test, y_test)"
        source = f"--npz=PATH/{dataset}.npz"
    cli = "python -m diffusion_jax.data"
    args = f"--dataset={dataset} --data_dir={data_dir}" + (" --overwrite" if overwrite else "")
    return (
        f"Offline, import {what}:\n  {cli} import {args} {source}\n"
        f"Online (TFDS downloads it; needs TensorFlow):\n  {cli} download {args}"
    )


def _tfds() -> Any:
    """Imports TFDS. Its package `__init__` swallows a missing dependency (tfds then just lacks
    `builder`); importing `tensorflow_datasets.core` again raises the real ImportError."""
    try:
        import tensorflow_datasets as tfds
        import tensorflow_datasets.core  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"Reading data needs tensorflow-datasets with its small dependencies (not "
            f"TensorFlow); importing it failed: {e}"
        ) from e
    return tfds


def dataset_info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise UserError(f"Unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[dataset]


# ----------------------------------------------------------------------------- reading


def load_split(
    dataset: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    shards: Sequence[int] = (0,),
    num_shards: int = 1,
    progress: bool = True,
) -> Split:
    """Reads this process's shards of a split into host memory.

    The split (in its stored TFDS order) is cut into `num_shards` contiguous shards of
    `N // num_shards` examples; the last `N % num_shards` examples are dropped so every
    shard has the same size. Only the records of `shards` are read. `image_size` must equal
    the native size (no resizing or padding here); `channels=3` on a grayscale dataset
    repeats the gray channel. Fails at once with `DataNotFoundError` (never downloads) when
    the data is not prepared in `data_dir`.
    """
    info = dataset_info(dataset)
    if split not in info.split_sizes:
        raise UserError(f"Unknown split {split!r} for {dataset}; choose one of {SPLITS}.")
    channels = info.channels if channels is None else channels
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}.")
    image_size = info.image_size if image_size is None else image_size
    fixes = shape_fixes(info, image_size, channels)
    if "channels" in fixes:
        raise UserError(f"{dataset} is RGB; set channels=3 (no grayscale conversion is done).")
    if "image_size" in fixes:
        raise UserError(
            f"image_size={image_size} but {dataset} images are {info.image_size}x"
            f"{info.image_size}; set image_size={info.image_size} (no resizing is done)."
        )
    shards = [int(s) for s in shards]
    if int(num_shards) != num_shards or num_shards < 1:
        raise UserError(f"num_shards must be a positive integer, got {num_shards}.")
    if not shards or len(set(shards)) != len(shards):
        raise UserError(f"shards must be distinct shard indices, got {shards}.")
    if not all(0 <= s < num_shards for s in shards):
        raise UserError(f"shards {shards} out of range for num_shards={num_shards}.")

    data_dir = default_data_dir(data_dir)
    builder, source = _open_source(dataset, split, data_dir)
    n = len(source)
    shard_size = n // num_shards
    if shard_size == 0:
        raise UserError(f"num_shards={num_shards} is more than the {n} examples of {split}.")

    size = info.image_size
    images = np.empty((len(shards), shard_size, size, size, info.channels), np.uint8)
    labels = np.empty((len(shards), shard_size), np.int32)
    bar = _tqdm(len(shards) * shard_size, f"Reading {dataset}/{split}", progress)
    for i, shard in enumerate(shards):
        start = shard * shard_size
        for lo in range(0, shard_size, _READ_CHUNK):
            keys = list(range(start + lo, start + min(lo + _READ_CHUNK, shard_size)))
            try:
                records = source.__getitems__(keys)
            except (RuntimeError, OSError) as e:  # "Corrupted Riegeli/records file: ..."
                bar.close()
                raise _corrupt(builder, dataset, split, data_dir, e) from e
            _decode_into(records, images[i, lo : lo + len(keys)], labels[i, lo : lo + len(keys)])
            bar.update(len(keys))
    bar.close()
    if channels != info.channels:
        images = np.repeat(images, channels, axis=-1)
    return Split(images=images, labels=labels, num_examples=n)


def read_split(data_config: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image (uint8 [N, H, W, C]) and label (int32 [N]) of `split` of a run's
    `config.data` (dataset, data_dir, image_size, channels), in one shard, without a progress
    bar: the fixed evaluation images of the held-out losses, the reports and `--mode=edit`."""
    d = data_config
    whole = load_split(
        d.dataset,
        split,
        data_dir=d.data_dir,
        image_size=d.image_size,
        channels=d.channels,
        progress=False,
    )
    return whole.images.reshape(-1, *whole.images.shape[2:]), whole.labels.reshape(-1)


def check_data_dir(
    data_dir: str | os.PathLike, setting: str = "config.data.data_dir (or $TFDS_DATA_DIR)"
) -> None:
    """Raise `UserError` when `data_dir`, or a folder above it, is a file (not a folder)."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(data_dir))))
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is" if candidate == path else f"lies under {candidate}, which is"
                raise UserError(
                    f"The data dir {data_dir} {where} a file, not a folder; point {setting} "
                    "at a folder."
                )
            return


def _prepared_builder(dataset: str, data_dir: str) -> Any:
    """The TFDS builder of a prepared, array_record `dataset` in `data_dir`; never downloads."""
    check_data_dir(data_dir)
    tfds = _tfds()
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not _is_prepared(builder):
        raise DataNotFoundError(
            f"{dataset} is not prepared in {data_dir} (looked for {builder.data_path}).\n"
            + prepare_commands(dataset, data_dir)
        )
    formats = sorted(f.value for f in builder.info.available_file_formats())
    if "array_record" not in formats:
        raise DataNotFoundError(
            f"{dataset} in {builder.data_path} is stored as {' and '.join(formats)}, "
            "which only TensorFlow can read. Re-prepare it as array_record:\n"
            + prepare_commands(dataset, data_dir, overwrite=True)
        )
    return builder


def shape_fixes(info: DatasetInfo, image_size: int, channels: int) -> dict[str, int]:
    """What `image_size` / `channels` must become to read `info`'s images ({} when they fit):
    no resizing is done, and gray is repeated to RGB but RGB is never made gray."""
    fixes = {}
    if image_size != info.image_size:
        fixes["image_size"] = info.image_size
    if channels == 1 and info.channels == 3:
        fixes["channels"] = 3
    return fixes


def check_prepared(dataset: str, split: str = "train", data_dir: str | None = None) -> None:
    """Fails fast (well under a second, nothing is read) unless `load_split(dataset, split,
    data_dir=...)` can find its data: raises `DataNotFoundError` with the import commands, or
    `UserError` for an unknown dataset/split or a `data_dir` that is a file."""
    info = dataset_info(dataset)
    if split not in info.split_sizes:
        raise UserError(f"Unknown split {split!r} for {dataset}; choose one of {SPLITS}.")
    data_dir = default_data_dir(data_dir)
    builder = _prepared_builder(dataset, data_dir)
    if split not in builder.info.splits:
        raise DataNotFoundError(
            f"{dataset} in {builder.data_path} has no {split!r} split. Re-import it:\n"
            + prepare_commands(dataset, data_dir, overwrite=True)
        )


def check_labels(split: Split, num_classes: int, dataset: str = "the dataset") -> None:
    """Raise `UserError` unless every label of `split` is a class of a `num_classes`-class
    model (`config.model.num_classes`; 0 = unconditional, labels unused, nothing to check).

    A label >= num_classes would index past the class embedding (NaN from the first step).
    """
    if not num_classes or split.labels.size == 0:
        return
    _check_label_range(int(split.labels.min()), int(split.labels.max()), num_classes, dataset)


def check_num_classes(info: DatasetInfo, num_classes: int) -> None:
    """`check_labels` before any data is read, from the dataset's known classes."""
    if num_classes:
        _check_label_range(0, info.num_classes - 1, num_classes, info.name)


def _check_label_range(low: int, high: int, num_classes: int, dataset: str) -> None:
    if low < 0 or high >= num_classes:
        raise UserError(
            f"{dataset} labels go from {low} up to {high} but config.model.num_classes="
            f"{num_classes}: a conditional model needs a class for every label. Set "
            f"config.model.num_classes={high + 1} (or 0 for an unconditional model)."
        )


def _split_files(builder: Any, split: str) -> str:
    """The split's array_record files, for messages."""
    files = sorted(Path(builder.data_path).glob(f"{builder.name}-{split}.array_record*"))
    if len(files) == 1:
        return str(files[0])
    pattern = Path(builder.data_path) / f"{builder.name}-{split}.array_record-*"
    return f"one of the {len(files)} files {pattern}"


def _corrupt(builder: Any, dataset: str, split: str, data_dir: str, error: Exception) -> UserError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return UserError(
        f"The {dataset}/{split} data is corrupt or truncated: {_split_files(builder, split)} "
        f"cannot be read ({reason}). Re-run the import with --overwrite:\n"
        + prepare_commands(dataset, data_dir, overwrite=True)
    )


def _open_source(dataset: str, split: str, data_dir: str) -> tuple[Any, Any]:
    """The builder and raw-bytes random-access source of a prepared split; never downloads."""
    tfds = _tfds()
    builder = _prepared_builder(dataset, data_dir)
    try:
        source = builder.as_data_source(
            split,
            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
            file_format="array_record",
        )
    except (RuntimeError, OSError) as e:  # array_record/Riegeli report damage as RuntimeError
        raise _corrupt(builder, dataset, split, data_dir, e) from e
    return builder, source


def _decode_into(records: Sequence[bytes], images: np.ndarray, labels: np.ndarray) -> None:
    """Parses serialized `tf.train.Example`s and decodes their PNGs into `images`.

    PIL's PNG class is used directly and the pixels are copied with `tobytes`: about 25%
    faster than `Image.open` + `np.asarray` for these tiny images. Threads do not help
    (the per-image cost is Python overhead under the GIL).
    """
    from PIL import PngImagePlugin
    from tensorflow_datasets.proto import tf_example_pb2

    mode = "L" if images.shape[-1] == 1 else "RGB"
    for j, record in enumerate(records):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        with PngImagePlugin.PngImageFile(io.BytesIO(feature["image"].bytes_list.value[0])) as im:
            pixels = (im if im.mode == mode else im.convert(mode)).tobytes()
        images[j] = np.frombuffer(pixels, np.uint8).reshape(images.shape[1:])
        labels[j] = feature["label"].int64_list.value[0]


def _tqdm(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" images", disable=not enabled, leave=False)


# ----------------------------------------------------------------------------- writing

Arrays = Mapping[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)


def import_arrays(
    dataset: str,
    splits: Arrays,
    data_dir: str | None = None,
    *,
    overwrite: bool = False,
    full: bool = True,
) -> Path:
    """Writes in-memory arrays as the standard TFDS dataset `dataset`; returns its folder.

    `splits` maps "train"/"test" to (uint8 [N, H, W] or [N, H, W, C] images, [N] labels).
    With `full`, each split must have its official size (catches truncated copies).
    Writes into a temporary folder first, so an interrupted import leaves nothing behind
    and an existing dataset is replaced only once the new one is complete.
    """
    tfds = _tfds()
    info = dataset_info(dataset)
    data_dir = default_data_dir(data_dir)
    checked = {
        name: _check_arrays(info, name, *arrays, full=full) for name, arrays in splits.items()
    }
    if set(checked) != set(SPLITS):
        raise UserError(f"Need the splits {SPLITS} for {dataset}, got {sorted(checked)}.")

    base = tfds.builder_cls(dataset)

    class Importer(base, skip_registration=True):  # type: ignore[misc, valid-type]
        name = base.name

        def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
            del dl_manager
            if dataset == "cifar10":  # its builder reads the names from the download
                self.info.features["label"].names = list(info.label_names)
            return {name: _examples(dataset, name, *arrays) for name, arrays in checked.items()}

    target = Path(data_dir) / dataset / str(base.VERSION)
    if (target / "dataset_info.json").exists() and not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it.")
    check_data_dir(data_dir, "--data_dir (or $TFDS_DATA_DIR)")
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create the data dir {data_dir}: {e.strerror or e}.") from e
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".import-{dataset}-") as tmp:
        builder = Importer(data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(builder.data_path, target)
    return target


def _check_arrays(
    info: DatasetInfo, split: str, images: np.ndarray, labels: np.ndarray, *, full: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split against the dataset's features; returns [N, H, W(, 3)] and labels."""
    images, labels = np.asarray(images), np.asarray(labels)
    size, c = info.image_size, info.channels
    allowed = {(size, size), (size, size, 1)} if c == 1 else {(size, size, 3)}
    if images.dtype != np.uint8 or images.shape[1:] not in allowed:
        want = f"[N, {size}, {size}]" if c == 1 else f"[N, {size}, {size}, 3]"
        raise UserError(
            f"{info.name} {split} images must be uint8 {want}, "
            f"got {images.dtype} {list(images.shape)}."
        )
    if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu":
        raise UserError(
            f"{info.name} {split} labels must be integers of shape [{images.shape[0]}] (one per "
            f"image), got {labels.dtype} {list(labels.shape)}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise UserError(
            f"{info.name} {split} labels must be in [0, {info.num_classes}), "
            f"got [{labels.min()}, {labels.max()}]."
        )
    expected = info.split_sizes[split]
    if full and images.shape[0] != expected:
        raise UserError(
            f"{info.name} {split} has {images.shape[0]} images; the official split has "
            f"{expected}. Is the file truncated?"
        )
    return images.reshape(images.shape[:3] + (() if c == 1 else (3,))), labels


def _examples(
    dataset: str, split: str, images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Examples keyed and laid out like TFDS's own builders (key = index in original order)."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        record: dict[str, Any] = {"image": buffer.getvalue(), "label": int(label)}
        if dataset == "cifar10":
            record["id"] = f"{split}_{index:05d}"
        yield index, record


def read_npz(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras-layout arrays (x_train, y_train, x_test, y_test) from an `.npz` file."""
    if not os.path.isfile(path):
        raise UserError(f"--npz: no such file {path}.")
    keys = ("x_train", "y_train", "x_test", "y_test")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise UserError(
            f"{path} is not an .npz file (it starts with {magic!r}; an .npz is a zip archive, "
            f"as written by numpy.savez); expected one with the Keras keys {list(keys)}."
        )
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise UserError(f"{path} is a single array; expected an .npz with keys {list(keys)}.")
        with npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(
                    f"{path} lacks {missing}; expected the Keras keys {list(keys)} "
                    f"(it has {npz.files})."
                )
            return {s: (npz[f"x_{s}"], npz[f"y_{s}"]) for s in SPLITS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"Cannot read {path} as an .npz file: {e}") from e


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_dir(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-layout idx files (gzipped or not), as in the LeCun / Zalando releases."""
    out = {}
    for split, names in _IDX_FILES.items():
        images, labels = (read_idx(_find(Path(path), name)) for name in names)
        out[split] = (images, labels)
    return out


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"--idx_dir: neither {name}.gz nor {name} is in {folder}.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file (ubyte data only): magic 0x00000801 (labels) or 0x00000803 (images)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"Cannot read {path}: {e}") from e
    if len(data) < 4 or data[:3] != b"\0\0\x08" or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not a uint8 idx file (bad magic {data[:4]!r}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {body.size} bytes of data, its header says {shape}.")
    return body.reshape(shape)


# ----------------------------------------------------------------------------- CLI


def download(dataset: str, data_dir: str | None = None, *, overwrite: bool = False) -> Path:
    """TFDS's own download and preparation, as array_record (online; TFDS encodes with TF)."""
    tfds = _tfds()
    dataset_info(dataset)
    builder = tfds.builder(dataset, data_dir=default_data_dir(data_dir), file_format="array_record")
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS
    )
    builder.download_and_prepare(file_format="array_record", download_config=config)
    return Path(builder.data_path)


def _is_prepared(builder: Any) -> bool:
    """`builder.is_prepared()` without its log warning when the folder does not exist."""
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def main(argv: Sequence[str] | None = None) -> int:
    """`import` / `download` subcommands; a `UserError` becomes a message and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_jax.data",
        description="Prepare mnist, fashion_mnist or cifar10 as TFDS array_record datasets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="write a local copy as a TFDS dataset (offline)")
    down = commands.add_parser("download", help="let TFDS download and prepare it (online)")
    for sub in (imp, down):
        sub.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
        sub.add_argument(
            "--data_dir", default=None, help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets"
        )
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--npz", help="Keras-layout .npz with x_train, y_train, x_test, y_test")
    source.add_argument("--idx_dir", help="folder with the four MNIST-layout idx(.gz) files")
    for sub in (imp, down):
        sub.add_argument("--overwrite", action="store_true", help="replace prepared data")
    args = parser.parse_args(argv)
    try:
        dataset_info(args.dataset)
        data_dir = default_data_dir(args.data_dir)
        check_data_dir(data_dir, "--data_dir (or $TFDS_DATA_DIR)")
        if not args.overwrite and _is_prepared(_tfds().builder(args.dataset, data_dir=data_dir)):
            print(
                f"{args.dataset} is already prepared in {data_dir}; nothing to do "
                "(pass --overwrite to import it again).",
                file=sys.stderr,
            )
            return 0
        if args.command == "download":
            where = download(args.dataset, data_dir, overwrite=args.overwrite)
        else:
            if args.idx_dir is not None and args.dataset == "cifar10":
                raise UserError("cifar10 has no idx release; use --npz.")
            arrays = read_npz(args.npz) if args.npz else read_idx_dir(args.idx_dir)
            where = import_arrays(args.dataset, arrays, data_dir, overwrite=args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is ready in {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
