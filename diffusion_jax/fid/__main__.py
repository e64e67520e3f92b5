"""`python -m diffusion_jax.fid A B`: the FID between two image sets, printed on stdout.

Each of A and B is one of
- `FILE.npz[:KEY][[START:STOP]]`: uint8 images `[N, H, W, C]` (C = 1 or 3) or `[N, H, W]`
  (grayscale). KEY defaults to the first of x, images, arr_0, x_train present in the file;
  e.g. `mnist.npz:x_test[:1000]` (Python slice semantics);
- a statistics `.npz` (has `mu` and `sigma`; e.g. written by `--save_stats_a`); it must record
  the same protocol and network, unless `--allow_unlabeled_stats`;
- `DIR[[START:STOP]]`: a folder of .png/.jpg/.jpeg/.bmp images (sorted by name, same size).

Both inputs are checked (they exist, can be read, hold at least 2 images; every file of a
folder is verified) before the network is loaded or any feature is computed. Errors a user can
fix are printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffusion_jax import cpu_devices
from diffusion_jax.errors import UserError, blocking_file
from diffusion_jax.pixels import WIDE_MODES, to_8bit

DEFAULT_KEYS = ("x", "images", "arr_0", "x_train")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<key>\w+))?(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def _parse(spec: str) -> tuple[Path, str | None, slice]:
    m = _SPEC.match(spec)
    if m is None:  # the regex accepts any non-empty string; kept for an empty one
        raise UserError(f"Cannot parse image set {spec!r}.")
    path, key = Path(m["path"]), m["key"]
    if key is not None and path.suffix != ".npz":  # a ':' inside a folder name, not a key
        path, key = Path(f"{m['path']}:{key}"), None
    start = int(m["start"]) if m["start"] else None
    stop = int(m["stop"]) if m["stop"] else None
    return path, key, slice(start, stop)


_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")


def _npz_images(path: Path, key: str | None, sl: slice) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(_NPZ_MAGIC):
        raise UserError(
            f"{path} is neither an .npz file (it starts with {magic!r}) nor a folder of images."
        )
    try:
        with np.load(path) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise UserError(f"{path} is a single .npy array; save the images with np.savez.")
            if key is None:
                key = next((k for k in DEFAULT_KEYS if k in z.files), None)
                if key is None:
                    raise UserError(
                        f"{path} has none of the keys {DEFAULT_KEYS} (it has {z.files}); "
                        f"name one: {path}:KEY"
                    )
            elif key not in z.files:
                raise UserError(f"{path} has no key {key!r}; it has {z.files}.")
            x = z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"Cannot read {path}: {e}") from e
    x = x[sl]
    return x[..., None] if x.ndim == 3 else x


def _check_image_file(p: Path) -> tuple[int, int, int]:
    """`(H, W, C)` of an image file as `_load_image` returns it; the file's PNG/JPEG structure
    (chunk checksums, truncation) is verified without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size
            c = 1 if im.mode == "L" or im.mode in WIDE_MODES else 3  # wide: to_8bit's grey
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise _unreadable_image(p, e) from e
    return h, w, c


def _unreadable_image(p: Path, e: Exception) -> UserError:
    reason = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    return UserError(f"{p} is not a readable image ({reason}); remove or replace it.")


def _load_image(p: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im = to_8bit(im, str(p))
            im = im if im.mode in ("L", "RGB") else im.convert("RGB")
            a = np.asarray(im)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt image body surfaces only when decoded
        raise _unreadable_image(p, e) from e
    return a[..., None] if a.ndim == 2 else a


def _image_files(path: Path, sl: slice) -> list[Path]:
    """The folder's images (sorted by name, sliced), each checked; all must have one shape."""
    try:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[sl]
    except OSError as e:
        raise UserError(f"Cannot list {path}: {e.strerror or e}") from e
    if not files:
        raise UserError(f"No {'/'.join(IMAGE_SUFFIXES)} images in {path}.")
    first = _check_image_file(files[0])
    for p in files[1:]:
        shape = _check_image_file(p)
        if shape != first:
            raise UserError(
                f"Images in {path} differ in size/mode: {files[0].name} is {first} (H, W, C), "
                f"{p.name} is {shape}."
            )
    return files


def _batches_of_files(path: Path, files: list[Path], batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(files), batch):
        imgs = [_load_image(p) for p in files[i : i + batch]]
        shapes = {a.shape for a in imgs}
        if len(shapes) > 1:
            raise UserError(f"Images in {path} differ in size/mode: {sorted(shapes)}.")
        yield np.stack(imgs)


@dataclasses.dataclass
class _Input:
    """One checked image set: a statistics file, an array of images or a folder's files."""

    spec: str
    path: Path
    count: int  # images (0 for a statistics file)
    images: np.ndarray | None = None
    files: list[Path] | None = None

    @property
    def is_statistics(self) -> bool:
        return self.images is None and self.files is None


def _open_input(spec: str) -> _Input:
    """Checks that `spec` exists, is readable and holds >= 2 valid images (or statistics)."""
    from diffusion_jax.fid.preprocess import check_images
    from diffusion_jax.fid.stats import is_statistics_file

    path, key, sl = _parse(spec)
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    if path.is_dir():
        files = _image_files(path, sl)
        found = _Input(spec, path, len(files), files=files)
    elif path.suffix == ".npz" and is_statistics_file(path):
        if key is not None or sl != slice(None):
            raise UserError(f"{path} holds statistics; a key or slice makes no sense there.")
        return _Input(spec, path, 0)
    else:
        images = check_images(_npz_images(path, key, sl))
        found = _Input(spec, path, len(images), images=images)
    if found.count < 2:
        raise UserError(f"{spec}: FID needs at least 2 images; it holds {found.count}.")
    return found


def _statistics(found: _Input, extractor, args: argparse.Namespace):  # noqa: ANN001, ANN202
    from diffusion_jax.fid import load_statistics, statistics_of

    if found.is_statistics:
        return load_statistics(
            found.path,
            expect_protocol=extractor.protocol,
            expect_network=extractor.network_sha256,
            allow_unlabeled=args.allow_unlabeled_stats,
        )
    n, b = found.count, args.batch_size
    if found.files is not None:
        batches = _batches_of_files(found.path, found.files, b)
    else:
        batches = (found.images[i : i + b] for i in range(0, n, b))
    t0 = time.perf_counter()
    stats = statistics_of(
        batches, extractor, progress=not args.no_progress, total=n, dataset=found.spec
    )
    dt = time.perf_counter() - t0
    print(f"{found.spec}: {n} images in {dt:.1f} s ({n / dt:.2f} img/s)", file=sys.stderr)
    return stats


def _check_output(flag: str, path: str | None) -> None:
    """Refuses a --save_stats_* path that cannot be written, before the Inception network runs."""
    if not path:
        return
    if Path(path).is_dir():
        raise UserError(f"--{flag}={path} is a folder; give a file name (.npz).")
    blocker = blocking_file(Path(path).parent)
    if blocker is not None:
        raise UserError(f"--{flag}={path} lies under {blocker}, which is a file, not a folder.")


def _batch_sharding(batch_size: int):  # noqa: ANN202 - a jax Sharding or None
    """Each batch split over all local devices when they divide it (else one device)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) < 2 or batch_size % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("d",)), PartitionSpec("d"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m diffusion_jax.fid",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("a", help="first image set or statistics file")
    ap.add_argument("b", help="second image set or statistics file")
    ap.add_argument("--protocol", default="tf", choices=["tf", "pytorch_fid"])
    ap.add_argument("--weights", default=None, help="Inception weights file (else lookup)")
    ap.add_argument("--batch_size", type=int, default=100)
    ap.add_argument("--save_stats_a", default=None, help="write A's statistics here (.npz)")
    ap.add_argument("--save_stats_b", default=None, help="write B's statistics here (.npz)")
    ap.add_argument("--allow_unlabeled_stats", action="store_true")
    ap.add_argument("--no_progress", action="store_true")
    ap.add_argument(
        "--cpu_devices",
        default=cpu_devices.CPU_DEVICES_AUTO,
        help="JAX devices to split the host CPU into, each taking a slice of every batch "
        "(auto: up to twice the cores, at most 8, that divide --batch_size; no effect on GPUs)",
    )
    args = ap.parse_args(argv)
    try:
        cpu_devices.use_cpu_devices(args.cpu_devices, [args.batch_size])
        from diffusion_jax.fid import FeatureExtractor, fid_from_statistics, save_statistics

        inputs = [_open_input(args.a), _open_input(args.b)]  # both checked before any work
        for flag in ("save_stats_a", "save_stats_b"):
            _check_output(flag, getattr(args, flag))
        extractor = FeatureExtractor(
            args.weights, args.protocol, args.batch_size, _batch_sharding(args.batch_size)
        )
        sa, sb = (_statistics(found, extractor, args) for found in inputs)
        for path, s in ((args.save_stats_a, sa), (args.save_stats_b, sb)):
            if path:
                save_statistics(path, s)
        fid = fid_from_statistics(sa, sb)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{fid:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
