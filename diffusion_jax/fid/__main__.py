"""`python -m diffusion_jax.fid A B`: the FID between two image sets, printed on stdout.

Each of A and B is one of
- `FILE.npz[:KEY][[START:STOP]]`: uint8 images `[N, H, W, C]` (C = 1 or 3) or `[N, H, W]`
  (grayscale). KEY defaults to the first of x, images, arr_0, x_train present in the file;
  e.g. `mnist.npz:x_test[:1000]` (Python slice semantics);
- a statistics `.npz` (has `mu` and `sigma`; e.g. written by `--save_stats_a`); it must record
  the same protocol and network, unless `--allow_unlabeled_stats`;
- `DIR[[START:STOP]]`: a folder of .png/.jpg/.jpeg/.bmp images (sorted by name, same size).

Errors a user can fix are printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffusion_jax.errors import UserError

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


def _npz_images(path: Path, key: str | None, sl: slice) -> np.ndarray:
    with np.load(path) as z:
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
    x = x[sl]
    return x[..., None] if x.ndim == 3 else x


def _folder_batches(path: Path, sl: slice, batch: int) -> tuple[int, Iterator[np.ndarray]]:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[sl]
    if not files:
        raise UserError(f"No {'/'.join(IMAGE_SUFFIXES)} images in {path}.")

    def load(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            im = im if im.mode in ("L", "RGB") else im.convert("RGB")
            a = np.asarray(im)
        return a[..., None] if a.ndim == 2 else a

    def gen() -> Iterator[np.ndarray]:
        for i in range(0, len(files), batch):
            imgs = [load(p) for p in files[i : i + batch]]
            shapes = {a.shape for a in imgs}
            if len(shapes) > 1:
                raise UserError(f"Images in {path} differ in size/mode: {sorted(shapes)}.")
            yield np.stack(imgs)

    return len(files), gen()


def _statistics(spec: str, extractor, args: argparse.Namespace):  # noqa: ANN001, ANN202
    from diffusion_jax.fid import load_statistics, statistics_of
    from diffusion_jax.fid.stats import is_statistics_file

    path, key, sl = _parse(spec)
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    if path.suffix == ".npz" and is_statistics_file(path):
        if key is not None or sl != slice(None):
            raise UserError(f"{path} holds statistics; a key or slice makes no sense there.")
        return load_statistics(
            path,
            expect_protocol=extractor.protocol,
            expect_network=extractor.network_sha256,
            allow_unlabeled=args.allow_unlabeled_stats,
        )
    if path.is_dir():
        n, batches = _folder_batches(path, sl, args.batch_size)
    else:
        images = _npz_images(path, key, sl)
        n = len(images)
        batches = (images[i : i + args.batch_size] for i in range(0, n, args.batch_size))
    t0 = time.perf_counter()
    stats = statistics_of(batches, extractor, progress=not args.no_progress, total=n, dataset=spec)
    dt = time.perf_counter() - t0
    print(f"{spec}: {n} images in {dt:.1f} s ({n / dt:.2f} img/s)", file=sys.stderr)
    return stats


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
    args = ap.parse_args(argv)
    try:
        from diffusion_jax.fid import FeatureExtractor, fid_from_statistics, save_statistics

        extractor = FeatureExtractor(args.weights, args.protocol, args.batch_size)
        sa = _statistics(args.a, extractor, args)
        sb = _statistics(args.b, extractor, args)
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
