"""Reads tensors out of PyTorch files without torch (zip/TorchScript and legacy formats).

Why: the FID package must not depend on torch, yet the only distributions of the FID
Inception weights are a TorchScript archive and pytorch-fid's `torch.save` state dict. A
restricted unpickler maps storages to NumPy arrays and refuses every other global, so a
malicious pickle cannot run code.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class TorchFileError(ValueError):
    """The file is not a PyTorch file this reader understands (or is truncated)."""


@dataclasses.dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None or data.size < self.storage.numel:
            raise TorchFileError("tensor data missing from the file (truncated?)")
        if any(s == 0 for s in self.shape):
            return np.zeros(self.shape, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if self.offset < 0 or last >= data.size:
            raise TorchFileError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.shape,
            strides=[s * data.itemsize for s in self.stride],
            writeable=False,
        )
        return np.array(view)


class ScriptObject:
    """A TorchScript module (`__torch__.*`) restored as a plain attribute dict."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}


def _rebuild_tensor(storage, offset, shape, stride, *_ignored) -> _LazyTensor:  # noqa: ANN001
    if not isinstance(storage, _Storage):
        raise TorchFileError("malformed tensor record")
    return _LazyTensor(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(data, *_ignored):  # noqa: ANN001, ANN202
    return data


class _Unpickler(pickle.Unpickler):
    """Allows only what tensor files need: OrderedDict, tensor rebuilds, storage types."""

    def __init__(self, file: io.IOBase, load_storage) -> None:  # noqa: ANN001
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (ScriptObject,), {"qualified_name": f"{module}.{name}"})
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: value  # build_intlist, build_doublelist, ...
        raise TorchFileError(f"refusing to load {module}.{name} (not a plain tensor file)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise TorchFileError(f"unexpected persistent id {pid!r:.80}")
        return self._load_storage(pid[1:])


def _as_dtype(storage_type: Any) -> np.dtype:
    if not isinstance(storage_type, np.dtype):
        raise TorchFileError(f"unsupported storage type {storage_type!r}")
    return storage_type


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchFileError("zip archive has no (single) <archive>/data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder") != b"little":
            raise TorchFileError("big-endian tensor files are not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(rec: tuple) -> _Storage:
            storage_type, key, _location, numel = rec[:4]
            key = str(key)
            if key not in storages:
                dtype = _as_dtype(storage_type)
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError as e:
                    raise TorchFileError(f"storage {key} missing from the archive") from e
                data = np.frombuffer(raw, dtype=dtype)
                storages[key] = _Storage(dtype, int(numel), data)
            return storages[key]

        return _Unpickler(io.BytesIO(zf.read(pkls[0])), load_storage).load()


def _read_legacy(path: Path) -> Any:
    """`torch.save(..., _use_new_zipfile_serialization=False)`: pickles, then raw storages."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)  # plain ints: no globals involved
            if magic != _LEGACY_MAGIC:
                raise TorchFileError("not a PyTorch file (bad magic number)")
            pickle.load(f)  # protocol version
            pickle.load(f)  # sys info dict
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise TorchFileError(f"not a PyTorch file ({e})") from e
        storages: dict[str, _Storage] = {}
        views: list[tuple[_Storage, _Storage, int]] = []

        def load_storage(rec: tuple) -> _Storage:
            storage_type, key, _location, numel, view_metadata = rec
            key = str(key)
            if key not in storages:
                storages[key] = _Storage(_as_dtype(storage_type), int(numel))
            root = storages[key]
            if view_metadata is None:
                return root
            view_key, offset, view_size = view_metadata
            view = _Storage(root.dtype, int(view_size))
            views.append((view, root, int(offset)))
            storages[str(view_key)] = view
            return view

        try:
            result = _Unpickler(f, load_storage).load()
            keys = pickle.load(f)
        except (pickle.UnpicklingError, EOFError) as e:
            raise TorchFileError(f"corrupt or truncated pickle ({e})") from e
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise TorchFileError(f"storage {key} listed but never used")
            head = f.read(8)
            if len(head) != 8:
                raise TorchFileError("file ends before its tensor data (truncated?)")
            (numel,) = struct.unpack("<q", head)
            nbytes = numel * st.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise TorchFileError("file ends inside its tensor data (truncated?)")
            st.data = np.frombuffer(raw, dtype=st.dtype)
        for view, root, offset in views:
            if root.data is None:
                raise TorchFileError("view of a storage with no data")
            view.data = root.data[offset : offset + view.numel]
    return result


def read_torch_file(path: str | Path) -> Any:
    """The object saved in `path`, tensors as lazily materialized `_LazyTensor` leaves."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        return _read_legacy(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(str(e)) from e


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """`{dotted.name: array}` for every tensor in a state dict or TorchScript module tree."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, ScriptObject):
        obj = obj.state
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, _LazyTensor):
                out[prefix + str(k)] = v.materialize()
            elif isinstance(v, (dict, ScriptObject)):
                out |= flatten_tensors(v, f"{prefix}{k}.")
    return out


def script_attributes(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Non-tensor attributes (stride, padding, ...) of a TorchScript module tree."""
    out: dict[str, Any] = {}
    if isinstance(obj, ScriptObject):
        for k, v in obj.state.items():
            if isinstance(v, ScriptObject):
                out |= script_attributes(v, f"{prefix}{k}.")
            elif not isinstance(v, _LazyTensor):
                out[prefix + k] = v
    return out
