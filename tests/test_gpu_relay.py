"""launch/gpu/relay.py: files cut into parts (one per device call) come back byte for byte, each
as soon as its bytes have arrived, sha256-checked; a corrupt or missing part is an error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("relay", REPO / "launch" / "gpu" / "relay.py")
relay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay)


def _files(tmp_path: Path, sizes: dict[str, int]) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(0)
    out = []
    for name, size in sizes.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        out.append((name, path))
    return out


@pytest.mark.parametrize("part_bytes", [1000, 700, 3000])  # 700 divides the 2100-byte stream
def test_files_arrive_part_by_part(tmp_path, part_bytes):
    files = _files(tmp_path, {"wheels/a.whl": 300, "data.npz": 900, "weights.pt": 900})
    manifest = relay.pack(tmp_path / "carry", part_bytes, files)
    n = manifest["num_parts"]
    assert n == -(-2100 // part_bytes)
    parts = sorted((tmp_path / "carry").iterdir())
    assert [p.name for p in parts] == [f"part{k}" for k in range(1, n + 1)]
    assert all((p / "blob").stat().st_size <= part_bytes for p in parts)
    machine, dest = tmp_path / "machine", tmp_path / "files"
    for k, part in enumerate(parts, start=1):
        assert relay.take(part, machine) == k
        last = k == n
        code = relay.unpack(machine, dest, ["weights.pt"])
        assert code == (0 if last else 1)  # the weights come last
        if k * part_bytes >= 300:  # the wheel is complete once its bytes are in
            assert (dest / "wheels/a.whl").read_bytes() == files[0][1].read_bytes()
    for name, path in files:
        assert (dest / name).read_bytes() == path.read_bytes()
    assert relay.unpack(machine, dest, [n for n, _ in files]) == 0  # idempotent


def test_a_corrupt_part_is_refused(tmp_path):
    files = _files(tmp_path, {"a.bin": 500, "b.bin": 500})
    relay.pack(tmp_path / "carry", 600, files)
    machine = tmp_path / "machine"
    for part in sorted((tmp_path / "carry").iterdir()):
        relay.take(part, machine)
    blob = machine / "blob.2"
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert relay.unpack(machine, tmp_path / "files", ["a.bin", "b.bin"]) == 1
    assert (tmp_path / "files" / "a.bin").is_file()  # a.bin lies wholly in part 1
    assert not (tmp_path / "files" / "b.bin").exists()


def test_a_missing_middle_part_stops_there(tmp_path):
    files = _files(tmp_path, {"a.bin": 500, "b.bin": 500, "c.bin": 500})
    relay.pack(tmp_path / "carry", 500, files)
    machine = tmp_path / "machine"
    for k in (1, 3):
        relay.take(tmp_path / "carry" / f"part{k}", machine)
    assert relay.unpack(machine, tmp_path / "files", ["c.bin"]) == 1
    assert [p.name for p in (tmp_path / "files").iterdir()] == ["a.bin"]
