"""FID, training wall clock and sampling speed of trained workdirs of any method, one protocol.

    python benchmarks/baselines.py --runs=RUNS.json --out=results/baselines.json

RUNS.json: [{"name": ..., "config": "configs/x.py", "workdir": DIR, "overrides": {"a.b": v},
"train_wall_s": seconds, "train_cpu_s": user + system seconds}, ...]. For every run: the EMA weights
of its latest checkpoint generate `--samples` images (image i from key i of the eval stream, as
`--mode=eval`), timed after a warm-up batch (sampling speed on this machine), and their Inception
features (TTUR's TF protocol) are compared with a reference of real images of the same dataset.
Because the standard reference (all train images) takes hours of Inception on a CPU, the reference
here is the first `--ref` test images, and the protocol's floor is printed beside it: the FID of the
next `--samples` real test images against that reference. Only FIDs of the same N and reference
compare; this is not the 50k-sample standard FID of results/fid.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_jax import data, evaluate, fid, methods, parallel, sampling  # noqa: E402
from diffusion_jax.fid import weights as fid_weights  # noqa: E402


def load_config(path: str, overrides: dict):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def _stats(extractor, images: np.ndarray, dataset: str, split: str) -> fid.FidStatistics:
    return fid.statistics_of([images], extractor, progress=False, dataset=dataset, split=split)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--ref", type=int, default=1000)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--figures", default=None, help="folder for training-curve PNGs")
    args = p.parse_args()
    runs = json.loads(Path(args.runs).read_text())
    mesh = parallel.make_mesh()
    network = fid_weights.load_weights(None)
    extractor = fid.FeatureExtractor(protocol="tf", batch_size=50, weights=network)
    out = json.loads(Path(args.out).read_text()) if os.path.exists(args.out) else {}
    out.setdefault("runs", {})
    out["protocol"] = {
        "fid": "TTUR TF protocol (pool3, TF1 bilinear resize), float64 statistics",
        "samples": args.samples,
        "reference": f"first {args.ref} test images",
        "floor": f"test images {args.ref}..{args.ref + args.samples - 1} vs the reference",
        "device": evaluate._device_description(),
        "network_sha256": network.network_sha256,
    }
    refs: dict[str, fid.FidStatistics] = {}
    for run in runs:
        overrides = {**run.get("overrides", {}), "data.data_dir": args.data_dir}
        config = load_config(run["config"], overrides)
        ds = config.data.dataset
        if ds not in refs:
            split = data.load_split(
                ds,
                "test",
                data_dir=args.data_dir,
                image_size=config.data.image_size,
                channels=config.data.channels,
            )
            real = split.images.reshape(-1, *split.images.shape[2:])
            t0 = time.perf_counter()
            refs[ds] = _stats(extractor, real[: args.ref], ds, "test")
            floor = _stats(extractor, real[args.ref : args.ref + args.samples], ds, "test")
            rate = (args.ref + args.samples) / (time.perf_counter() - t0)
            out.setdefault("floors", {})[ds] = {
                "fid": round(fid.fid_from_statistics(floor, refs[ds]), 2),
                "inception_img_per_s": round(rate, 2),
            }
            print(ds, "floor", out["floors"][ds], flush=True)
        static, _ = methods.abstract_state(config)
        params, step = sampling.load_ema_params(config, run["workdir"], mesh)
        batch = sampling.batch_size_for(args.samples, 100, mesh)
        gen = sampling.make_generator(config, static, mesh, batch_size=batch)
        key = evaluate.stream_key(config, evaluate.EVAL_STREAM)
        warm = list(sampling.generate(gen, params, batch, key))  # compile + one batch
        del warm
        t0, c0 = time.perf_counter(), time.process_time()
        x = np.concatenate([b.images for b in sampling.generate(gen, params, args.samples, key)])
        sample_s, sample_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        stats = _stats(extractor, x, "samples", "")
        lines = (Path(run["workdir"]) / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        last = metrics[-1]
        record = {
            "method": config.method,
            "dataset": ds,
            "config": run["config"],
            "overrides": run.get("overrides", {}),
            "checkpoint_step": int(step),
            "images_seen": int(step) * int(config.train.batch_size),
            "batch_size": int(config.train.batch_size),
            "train_wall_s": run.get("train_wall_s"),
            "train_cpu_s": run.get("train_cpu_s"),  # user + system seconds of all threads
            "time_budget_s": float(config.train.time_budget_s),
            "num_params": _num_params(config),
            "fid": round(fid.fid_from_statistics(stats, refs[ds]), 2),
            "samples": args.samples,
            "sample_img_per_s": round(args.samples / sample_s, 1),
            "sample_cpu_ms_per_img": round(1000 * sample_cpu_s / args.samples, 2),
            "last_metrics": {k: round(v, 4) for k, v in last.items() if isinstance(v, float)},
        }
        if args.figures:
            record["figures"] = _curves(metrics, Path(args.figures), run["name"])
        out["runs"][run["name"]] = record
        print(run["name"], record["fid"], record["sample_img_per_s"], "img/s", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        np.save(Path(run["workdir"]) / "baseline_samples.npy", x[:64])


def _curves(records: list[dict], folder: Path, name: str) -> list[str]:
    """Training curves from metrics.jsonl: every `*loss`, and a GAN's D(x), D(G(z)) (and the
    VAE-GAN's D of reconstructions)."""
    from diffusion_jax import images

    keys = sorted({k for r in records for k in r if k == "loss" or k.endswith("_loss")})
    paths = [images.loss_curve(records, str(folder / f"{name}_loss.png"), keys=keys)]
    d_keys = [k for k in ("d_real", "d_recon", "d_fake") if any(k in r for r in records)]
    if d_keys:
        paths.append(images.loss_curve(records, str(folder / f"{name}_d.png"), keys=d_keys))
    return paths


def _num_params(config) -> dict[str, int]:
    _, abstract = methods.abstract_state(config)
    params = abstract.params
    if type(params) is dict:  # e.g. {"generator": ..., "discriminator": ...}
        return {k: int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(v)))
                for k, v in params.items()}  # fmt: skip
    return {"model": int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))}


if __name__ == "__main__":
    main()
