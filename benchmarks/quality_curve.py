"""FID against training minutes, one line per run, from `--mode=eval` records (issue 28).

    python -m benchmarks.quality_curve --out results/quality/mnist_cpu_fid_vs_minutes.png \
        --run "mnist_quality_cpu (ours)=/work/runs/mnist_quality_cpu/curve/eval" \
        --run "course recipe=/work/runs/course/curve/eval" --protocol pytorch_fid

Each `--run LABEL=DIR[,DIR...]` reads every `fid_*.json` record in the folders; a record's x is
its checkpoint's training wall time (`train_wall_s`, over every resume), its y the FID. Records
of one line should share the number of samples (the FID's bias depends on it): the plot's
title says which N it shows and refuses a mix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_jax import images


def read_runs(specs: list[str]) -> tuple[dict[str, list[dict]], set[int]]:
    runs: dict[str, list[dict]] = {}
    counts: set[int] = set()
    for spec in specs:
        label, _, folders = spec.partition("=")
        if not folders:
            raise SystemExit(f"--run {spec!r}: write LABEL=DIR[,DIR...]")
        records = [
            json.loads(p.read_text())
            for folder in folders.split(",")
            for p in sorted(Path(folder).glob("fid_*.json"))
        ]
        if not records:
            raise SystemExit(f"--run {spec!r}: no fid_*.json records in {folders}")
        counts |= {int(r["num_samples"]) for r in records}
        runs[label] = records
    return runs, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=DIR[,DIR...]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--protocol", default="pytorch_fid")
    args = ap.parse_args(argv)
    runs, counts = read_runs(args.run)
    if len(counts) != 1:
        raise SystemExit(f"the records mix sample counts {sorted(counts)}: plot one N")
    path = images.fid_vs_training_minutes(runs, args.out, args.protocol)
    for label, records in runs.items():
        for r in sorted(records, key=lambda r: r.get("train_wall_s", 0)):
            fid = r["fid"].get(args.protocol)
            print(f"{label}: step {r['checkpoint_step']}, {r.get('train_wall_s', 0) / 60:.1f} "
                  f"min, FID {fid:.3f} (N={r['num_samples']})")  # fmt: skip
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
