"""Carry files larger than one device call allows (64 MiB with the working tree) in several calls.

`pack` (here) lays the files end to end in one byte stream, in the order given, and cuts it
into parts of at most `--part-bytes` bytes: `OUT/part1/blob`, `OUT/part2/blob`, ... Every part
folder also holds `MANIFEST.json` (each file's name, offset, size and sha256, the part count and
size), so any one part says what the whole is. Put what is needed first (wheels, the dataset)
first: `unpack` extracts every file whose bytes have all arrived, so setup can start before the
last part lands.

`unpack` (on the machine) reads the parts copied so far from `--parts` (`blob.K` + the
manifest), writes each complete file into `--dest` (once; a file already there with the right
sha256 is kept), checks its sha256, and says what is done and what is missing. `--require NAME`
makes a missing or bad file an error (exit 1). Standard library only: it runs under any python3.

    python3 launch/gpu/relay.py pack --out gpu_carry --part-bytes 50000000 \
        wheels/a.whl=/tmp/w/a.whl mnist.npz=../shared/data/mnist.npz
    python3 launch/gpu/relay.py take gpu_carry/part1 --parts /tmp/djax/parts   # copy one in
    python3 launch/gpu/relay.py unpack --parts /tmp/djax/parts --dest /tmp/djax/files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MANIFEST = "MANIFEST.json"
CHUNK = 1 << 22


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _stream(files: list[tuple[str, Path]]):
    for _, path in files:
        with open(path, "rb") as f:
            yield from iter(lambda f=f: f.read(CHUNK), b"")


def pack(out: Path, part_bytes: int, files: list[tuple[str, Path]]) -> dict:
    """Writes `out/partK/blob` (K = 1..n) and `out/partK/MANIFEST.json`; returns the manifest."""
    entries, offset = [], 0
    for name, path in files:
        size = path.stat().st_size
        entries.append({"name": name, "offset": offset, "size": size, "sha256": sha256_of(path)})
        offset += size
    total = offset
    num_parts = max(1, -(-total // part_bytes))
    manifest = {"total_bytes": total, "part_bytes": part_bytes, "num_parts": num_parts,
                "files": entries}  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    dirs = [out / f"part{k + 1}" for k in range(num_parts)]
    for d in dirs:
        d.mkdir(parents=True)
        (d / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    chunks, pending = _stream(files), b""
    for d in dirs:
        with open(d / "blob", "wb") as blob:
            room = part_bytes
            while room:
                if not pending:
                    pending = next(chunks, b"")
                    if not pending:
                        break
                piece, pending = pending[:room], pending[room:]
                blob.write(piece)
                room -= len(piece)
    return manifest


def take(part_dir: Path, parts: Path) -> int:
    """Copies one carried part folder into the machine's parts folder as `blob.K`."""
    manifest = json.loads((part_dir / MANIFEST).read_text())
    k = int(part_dir.name.removeprefix("part"))
    parts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(part_dir / "blob", parts / f"blob.{k}")
    (parts / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return k


def _available(parts: Path, manifest: dict) -> int:
    """Bytes of the stream present without a gap from the start (parts 1, 2, ... in order)."""
    have = 0
    for k in range(1, manifest["num_parts"] + 1):
        p = parts / f"blob.{k}"
        if not p.is_file():
            break
        size = p.stat().st_size
        have += size
        if k < manifest["num_parts"] and size != manifest["part_bytes"]:
            break  # a short middle part: what follows cannot be placed
    return have


def _read_range(parts: Path, part_bytes: int, offset: int, size: int, out) -> None:
    while size:
        k, inner = divmod(offset, part_bytes)
        with open(parts / f"blob.{k + 1}", "rb") as f:
            f.seek(inner)
            data = f.read(min(size, part_bytes - inner, CHUNK))
        if not data:
            raise OSError(f"part {k + 1} ends early")
        out.write(data)
        offset += len(data)
        size -= len(data)


def unpack(parts: Path, dest: Path, require: list[str]) -> int:
    manifest = json.loads((parts / MANIFEST).read_text())
    have = _available(parts, manifest)
    done, missing, bad = [], [], []
    for e in manifest["files"]:
        target = dest / e["name"]
        same_size = target.is_file() and target.stat().st_size == e["size"]
        if same_size and sha256_of(target) == e["sha256"]:
            done.append(e["name"])
            continue
        if e["offset"] + e["size"] > have:
            missing.append(e["name"])
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with open(tmp, "wb") as out:
            _read_range(parts, manifest["part_bytes"], e["offset"], e["size"], out)
        if sha256_of(tmp) != e["sha256"]:
            bad.append(e["name"])
            tmp.unlink()
            continue
        os.replace(tmp, target)
        done.append(e["name"])
    print(f"relay: {have}/{manifest['total_bytes']} bytes of {manifest['num_parts']} part(s); "
          f"complete and sha256-checked: {len(done)}, waiting: {missing or 'none'}"
          + (f", BAD: {bad}" if bad else ""))  # fmt: skip
    absent = [n for n in require if n not in done]
    if bad or absent:
        print(f"relay: required but not ready: {absent + bad}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-bytes", type=int, required=True)
    p.add_argument("files", nargs="+", help="NAME=PATH, in stream order")
    t = sub.add_parser("take")
    t.add_argument("part_dir", type=Path)
    t.add_argument("--parts", type=Path, required=True)
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, required=True)
    u.add_argument("--dest", type=Path, required=True)
    u.add_argument("--require", action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "pack":
        files = [(n, Path(p)) for n, p in (f.split("=", 1) for f in args.files)]
        m = pack(args.out, args.part_bytes, files)
        print(f"relay: {m['total_bytes']} bytes in {m['num_parts']} part(s) under {args.out}")
        return 0
    if args.command == "take":
        k = take(args.part_dir, args.parts)
        print(f"relay: part {k} -> {args.parts}/blob.{k}")
        return 0
    return unpack(args.parts, args.dest, args.require)


if __name__ == "__main__":
    sys.exit(main())
