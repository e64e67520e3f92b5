"""`python -m benchmarks.run`: time training, sampling, FID and the PyTorch peer in one process.

Prints a Markdown table (img/s or img*steps/s, achieved TFLOP/s from the analytic FLOP count,
MFU against the device's dense peak, ratio to the peer) and writes the same as JSON (`--json`).
`--tiny` shrinks everything to configs/tiny.py with tiny batches (a CPU smoke run: about 1.5 min
on 2 cores with a warm compilation cache, a few minutes cold).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from benchmarks import flops, hardware
from benchmarks.results import Row, set_peer_ratios, table

REPO = Path(__file__).resolve().parents[1]
SHARED_FID_WEIGHTS = REPO.parent / "shared" / "data" / "inception-2015-12-05_fid_torchscript.pt"
WORKLOADS = ("train", "sample", "fid", "peer")
ORDER = ("train", "peer", "sample", "fid")  # table order

# flag -> (full default, --tiny default); sample_batch 0 is chosen by platform in `run_jax`.
DEFAULTS: dict[str, tuple[object, object]] = {
    "configs": ("cifar10,mnist", "tiny"),
    "batch_sizes": ("128,512", "8"),
    "dtypes": ("float32,bfloat16", "float32"),
    "steps_per_call": ("1,8", "1,2"),
    "repeats": (5, 3),
    "train_steps": (32, 4),
    "train_examples": (0, 256),
    "sample_batch": (0, 8),
    "sample_short_steps": (20, 5),
    "solver_steps": (20, 5),
    "e2e_repeats": (1, 1),
    "fid_batch": (200, 2),
    "fid_batches": (4, 2),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="subset of " + str(WORKLOADS))
    p.add_argument("--configs", help="names in configs/ [cifar10,mnist; tiny with --tiny]")
    p.add_argument("--batch_sizes", help="train batch sizes [128,512]")
    p.add_argument("--dtypes", help="config.model.dtype values [float32,bfloat16]")
    p.add_argument("--steps_per_call", help="config.train.steps_per_call values [1,8]")
    p.add_argument("--repeats", type=int, help="timed repeats per row; the median is reported [5]")
    p.add_argument("--train_steps", type=int, help="optimizer steps per timed repeat [32]")
    p.add_argument(
        "--train_examples", type=int, help="synthetic training-set size [0: the real split's]"
    )
    p.add_argument(
        "--sample_batch", type=int, help="sampling batch [0: 1000 on GPUs/TPUs, 64 on CPUs]"
    )
    p.add_argument("--sample_short_steps", type=int, help="DDPM chain timed per step [20]")
    p.add_argument(
        "--solver_steps", type=int, help="network calls of the DPM-Solver++ sampler rows [20]"
    )
    p.add_argument("--e2e_repeats", type=int, help="repeats of the full chains; 0 skips them [1]")
    p.add_argument("--fid_batch", type=int, help="Inception batch [200]")
    p.add_argument("--fid_batches", type=int, help="Inception batches per repeat [4]")
    p.add_argument(
        "--fid_weights", help="Inception weights file [$DJAX_FID_WEIGHTS, cache, shared]"
    )
    p.add_argument(
        "--peer_compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="torch.compile peer rows; auto: bfloat16 on CUDA only",
    )
    p.add_argument(
        "--peer_from", help="JSON of an earlier run whose peer rows to compare with (ratios)"
    )
    p.add_argument("--num_devices", type=int, default=1, help="devices to use; 0: all [1]")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile_dir", help="jax.profiler traces of a few steps of each train row")
    p.add_argument("--compilation_cache", help="persistent JAX compilation cache directory")
    p.add_argument("--tiny", action="store_true", help="configs/tiny.py, tiny batches (CPU)")
    args = p.parse_args(argv)
    for name, (full, tiny) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    args.workloads = _names(args.workloads)
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    args.configs = _names(args.configs)
    args.batch_sizes = [int(x) for x in _names(args.batch_sizes)]
    args.dtypes = _names(args.dtypes)
    args.steps_per_call = [int(x) for x in _names(args.steps_per_call)]
    return args


def _names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def load_config(name: str) -> ml_collections.ConfigDict:
    path = REPO / "configs" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"--configs: no {path}")
    spec = importlib.util.spec_from_file_location(f"bench_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def with_settings(
    config: ml_collections.ConfigDict, **settings: object
) -> ml_collections.ConfigDict:
    """A copy with "section__name" settings applied."""
    config = config.copy_and_resolve_references()
    for key, value in settings.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def _guarded(rows: list[Row], template: Row, fn: Callable[[], Row | list[Row]]) -> None:
    """Runs one measurement; a failure (e.g. out of memory) becomes a row saying so."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - recorded in the table, the run goes on
        traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        template.skipped = f"failed: {type(e).__name__}: {first}"
        out = template
    for row in out if isinstance(out, list) else [out]:
        rows.append(row)
        _progress(row)


def _progress(row: Row) -> None:
    if row.skipped:
        print(f"[{row.workload}] {row.config} {row.dtype} b{row.batch}: {row.skipped}",
              file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(f"[{row.workload}] {row.config} {row.impl} {row.dtype} b{row.batch} {row.what}: "
              f"{row.throughput:,.1f} {row.unit}", file=sys.stderr, flush=True)  # fmt: skip


def run_peer(args: argparse.Namespace, configs: dict, rows: list[Row]) -> None:
    """Before any JAX computation: JAX's GPU backend would take most of the memory first."""
    from benchmarks import peer

    reason = peer.missing()
    if reason:
        rows.append(Row("peer", ",".join(configs), "torch", "-", 0, "", "img/s", skipped=reason))
        _progress(rows[-1])
        return
    import torch

    cuda = torch.cuda.is_available()
    for name, base in configs.items():
        examples = args.train_examples or _split_size(base)
        for batch in args.batch_sizes:
            for dtype in args.dtypes:
                compiles = [False]
                if args.peer_compile == "yes" or (
                    args.peer_compile == "auto" and cuda and dtype == "bfloat16"
                ):
                    compiles.append(True)
                for compile_model in compiles:
                    config = with_settings(base, train__batch_size=batch, model__dtype=dtype)
                    impl = "torch compile" if compile_model else "torch eager"
                    fn = functools.partial(
                        peer.bench_peer,
                        name,
                        config,
                        dtype=dtype,
                        compile_model=compile_model,
                        steps=args.train_steps,
                        repeats=args.repeats,
                        num_examples=examples,
                    )
                    _guarded(rows, Row("peer", name, impl, dtype, batch, "", "img/s"), fn)
    peer.release_memory()


def _split_size(config: ml_collections.ConfigDict) -> int:
    from diffusion_jax import data

    return data.dataset_info(config.data.dataset).split_sizes["train"]


def run_jax(args: argparse.Namespace, configs: dict, rows: list[Row]) -> dict:
    """Train, sample and FID rows; returns the device description."""
    from benchmarks import jax_workloads as jw

    mesh = jw.make_mesh(args.num_devices)
    devices = list(mesh.devices.flat)
    info = hardware.jax_device_info(devices)
    if not args.sample_batch:
        args.sample_batch = 64 if devices[0].platform == "cpu" else 1000
    for name, base in configs.items():
        examples = args.train_examples or _split_size(base)
        for dtype in args.dtypes:
            if "train" in args.workloads:
                for batch in args.batch_sizes:
                    for k in args.steps_per_call:
                        fn = functools.partial(
                            jw.bench_train,
                            name,
                            with_settings(base, train__batch_size=batch, model__dtype=dtype),
                            mesh,
                            steps_per_call=k,
                            steps=args.train_steps,
                            repeats=args.repeats,
                            num_examples=examples,
                            profile_dir=args.profile_dir,
                        )
                        _guarded(rows, Row("train", name, "jax", dtype, batch, "", "img/s"), fn)
            if "sample" in args.workloads:
                fn = functools.partial(
                    jw.bench_sample,
                    name,
                    with_settings(base, model__dtype=dtype),
                    mesh,
                    batch=args.sample_batch,
                    short_steps=args.sample_short_steps,
                    repeats=args.repeats,
                    e2e_repeats=args.e2e_repeats,
                    solver_steps=args.solver_steps,
                )
                template = Row("sample", name, "jax", dtype, args.sample_batch, "", "img*steps/s")
                _guarded(rows, template, fn)
        if "fid" in args.workloads:
            fn = functools.partial(
                jw.bench_fid,
                name,
                base,
                mesh,
                batch=args.fid_batch,
                batches=args.fid_batches,
                repeats=args.repeats,
                weights_path=_fid_weights(args),
            )
            _guarded(
                rows, Row("fid", name, "jax", "float32-strict", args.fid_batch, "", "img/s"), fn
            )
    return info


def _fid_weights(args: argparse.Namespace) -> str | None:
    """--fid_weights; else the library's lookup ($DJAX_FID_WEIGHTS, user cache); else the
    TorchScript file in ../shared/data when that exists."""
    from diffusion_jax.fid import weights

    if args.fid_weights:
        return args.fid_weights
    shas = (weights.TORCHSCRIPT_SHA256, weights.PYTORCH_FID_SHA256)
    found = os.environ.get(weights.ENV_VAR) or any(weights.cache_path(s).is_file() for s in shas)
    return None if found or not SHARED_FID_WEIGHTS.is_file() else str(SHARED_FID_WEIGHTS)


def header(
    info: dict, versions: dict, args: argparse.Namespace, configs: dict, rows: list[Row]
) -> list[str]:
    v = ", ".join(f"{k} {val}" for k, val in versions.items() if val)
    costs = "; ".join(
        f"{name} U-Net forward {flops.unet_cost(c).forward_flops / 1e9:.2f} GFLOP/img "
        f"({flops.unet_cost(c).params:,} params)"
        for name, c in configs.items()
    )
    peer_devices = sorted({r.device for r in rows if r.workload == "peer" and r.device})
    return [
        f"device: {info.get('num_devices')} x {info.get('device_kind')} "
        f"(platform {info.get('platform')}); host: {info.get('host_cpu')}"
        + (f"; peer (torch) on: {', '.join(peer_devices)}" if peer_devices else ""),
        f"versions: {v}",
        f"method: compile + warm-up excluded; device synchronised after each repeat; median of "
        f"{args.repeats} repeats (full sampling chains: {args.e2e_repeats})",
        f"FLOPs (analytic, 2 per multiply-add, train = 3 x forward): {costs}; FID Inception "
        f"{flops.inception_forward_flops() / 1e9:.2f} GFLOP/img at 299x299",
        "MFU: achieved TFLOP/s over the dense peak for the row's arithmetic (bf16; TF32 for "
        "float32; FP32 for strict float32); n/a where the device has no known peak (CPUs)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compilation_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    configs = {name: load_config(name) for name in args.configs}
    rows: list[Row] = []
    if "peer" in args.workloads:
        run_peer(args, configs, rows)
    if args.peer_from:  # e.g. the peer ran alone: --workloads=peer --json=peer.json
        earlier = json.loads(Path(args.peer_from).read_text())["rows"]
        rows += [Row.from_json(r) for r in earlier if r["workload"] == "peer"]
    info = run_jax(args, configs, rows)
    set_peer_ratios(rows)
    rows.sort(key=lambda r: ORDER.index(r.workload))  # stable: peer rows after ours
    versions = hardware.versions()
    lines = header(info, versions, args, configs, rows)
    print("\n".join(lines) + "\n\n" + table(rows), flush=True)
    if args.json:
        doc = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": "python -m benchmarks.run "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "device": info,
            "versions": versions,
            "header": lines,
            "settings": dict(vars(args)),
            "flops_per_image": {
                **{
                    f"unet_forward/{n}": flops.unet_cost(c).forward_flops
                    for n, c in configs.items()
                },
                "inception_forward_299": flops.inception_forward_flops(),
            },
            "rows": [r.to_json() for r in rows],
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {out}", flush=True)
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
