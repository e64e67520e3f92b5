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
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import ml_collections

from benchmarks import flops, hardware, profile_summary
from benchmarks.results import (
    Row,
    goal_of,
    parse_goals,
    peer_of,
    set_goals,
    set_peer_ratios,
    table,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_FID_WEIGHTS = REPO.parent / "shared" / "data" / "inception-2015-12-05_fid_torchscript.pt"
WORKLOADS = ("train", "sample", "fid", "peer")
ORDER = ("train", "sample", "fid")  # table order; each peer row follows the rows it mirrors
# The goals of issue 14 (ours over the fastest peer row, same run): train bf16 >= 2.5x at batch
# 128 and >= 1.6x at 512, the DDPM sampling step >= 1.4x, the FID network >= 1.0x.
GOALS = "train:bfloat16:128=2.5,train:bfloat16:512=1.6,sample:bfloat16=1.4,fid=1.0"

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
    p.add_argument(
        "--plan",
        help="explicit rows in run order, replacing the --configs x --dtypes x --batch_sizes x "
        "--steps_per_call product: comma-separated train:CONFIG:DTYPE:BATCH[:K+K...], "
        "sample:CONFIG:DTYPE[:BATCH], fid:CONFIG[:BATCH]; the peer mirrors each",
    )
    p.add_argument(
        "--time_budget_s",
        type=float,
        default=0.0,
        help="start no row after this many seconds from the start (later rows say so) [0: none]",
    )
    p.add_argument(
        "--peer_budget_s",
        type=float,
        default=0.0,
        help="start no peer row after this many seconds, so ours still run [0: none]",
    )
    p.add_argument("--goals", default=GOALS, help="WORKLOAD[:DTYPE[:BATCH]]=RATIO,... [issue 14]")
    p.add_argument("--num_devices", type=int, default=1, help="devices to use; 0: all [1]")
    p.add_argument("--json", help="also write the results here (rewritten after every row)")
    p.add_argument(
        "--profile_dir",
        help="jax.profiler traces of a few steps of our rows (train, DDPM step, FID), "
        "summarised into top ops (JSON extra.top_ops)",
    )
    p.add_argument(
        "--profile_when",
        choices=("always", "missed"),
        default="always",
        help="trace every row, or only rows below their --goals ratio (or without a peer)",
    )
    p.add_argument("--top_ops", type=int, default=15, help="ops kept per profile summary [15]")
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
    try:
        args.plan = parse_plan(args.plan) if args.plan else default_plan(args)
        args.goal_list = parse_goals(args.goals)
    except ValueError as e:
        p.error(str(e))
    return args


class Item(NamedTuple):
    """One entry of the plan: our rows of one workload at one shape (and the peer's)."""

    kind: str  # train | sample | fid
    config: str
    dtype: str = "float32"
    batch: int = 0  # 0: --sample_batch / --fid_batch
    ks: tuple[int, ...] = ()  # train: steps_per_call values


def default_plan(args: argparse.Namespace) -> list[Item]:
    """The product of the flags, in the historical order: per config and dtype the train rows,
    then sampling; FID per config."""
    plan = []
    for name in args.configs:
        for dtype in args.dtypes:
            plan += [
                Item("train", name, dtype, b, tuple(args.steps_per_call)) for b in args.batch_sizes
            ]
            plan.append(Item("sample", name, dtype))
        plan.append(Item("fid", name, "float32-strict"))
    return plan


def parse_plan(text: str) -> list[Item]:
    plan = []
    for entry in _names(text):
        kind, *fields = entry.split(":")
        try:
            if kind == "train" and len(fields) in (3, 4):
                ks = tuple(int(k) for k in fields[3].split("+")) if len(fields) == 4 else (1,)
                plan.append(Item("train", fields[0], fields[1], int(fields[2]), ks))
            elif kind == "sample" and len(fields) in (2, 3):
                batch = int(fields[2]) if len(fields) == 3 else 0
                plan.append(Item("sample", fields[0], fields[1], batch))
            elif kind == "fid" and len(fields) in (1, 2):
                batch = int(fields[1]) if len(fields) == 2 else 0
                plan.append(Item("fid", fields[0], "float32-strict", batch))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--plan: cannot read {entry!r}; use train:CONFIG:DTYPE:BATCH[:K+K], "
                "sample:CONFIG:DTYPE[:BATCH] or fid:CONFIG[:BATCH]"
            ) from None
    return plan


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


START = time.monotonic()


def _elapsed() -> float:
    return time.monotonic() - START


def _guarded(
    rows: list[Row],
    template: Row,
    fn: Callable[[], Row | list[Row]],
    budget_s: float = 0.0,
    on_row: Callable[[], None] | None = None,
) -> None:
    """Runs one measurement; a failure (e.g. out of memory) becomes a row saying so, and so does
    a row not started because `budget_s` (seconds since the start; 0: none) was spent."""
    try:
        if budget_s and _elapsed() > budget_s:
            template.skipped = f"skipped: time budget of {budget_s:g} s spent"
            out = template
        else:
            out = fn()
    except Exception as e:  # noqa: BLE001 - recorded in the table, the run goes on
        traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        template.skipped = f"failed: {type(e).__name__}: {first}"
        out = template
    for row in out if isinstance(out, list) else [out]:
        row.extra.setdefault("finished_at_s", round(_elapsed(), 1))
        rows.append(row)
        _progress(row)
    if on_row is not None:
        on_row()


def _progress(row: Row) -> None:
    if row.skipped:
        print(f"[{row.workload}] {row.config} {row.dtype} b{row.batch}: {row.skipped}",
              file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(f"[{row.workload}] {row.config} {row.impl} {row.dtype} b{row.batch} {row.what}: "
              f"{row.throughput:,.1f} {row.unit}", file=sys.stderr, flush=True)  # fmt: skip


def _peer_runs(args: argparse.Namespace, item: Item) -> bool:
    """The peer mirrors an item when "peer" is asked for and so is the item's workload, or when
    none of ours is (`--workloads=peer`: the peer alone, e.g. for a later `--peer_from`)."""
    ours = [w for w in args.workloads if w != "peer"]
    return "peer" in args.workloads and (item.kind in args.workloads or not ours)


def _compiles(args: argparse.Namespace, dtype: str, cuda: bool) -> list[bool]:
    """torch.compile rows first (the goals compare with them), then eager."""
    auto = args.peer_compile == "auto" and cuda and dtype == "bfloat16"
    yes = args.peer_compile == "yes" or auto
    return [True, False] if yes else [False]


def run_peer(
    args: argparse.Namespace, configs: dict, rows: list[Row], on_row: Callable[[], None]
) -> None:
    """Before any JAX computation: JAX's GPU backend would take most of the memory first."""
    from benchmarks import peer

    items = [item for item in args.plan if _peer_runs(args, item)]
    if not items:
        return
    reason = peer.missing()
    if reason:
        for kind in dict.fromkeys(item.kind for item in items):
            names = ",".join(dict.fromkeys(i.config for i in items if i.kind == kind))
            row = Row("peer", names, "torch", "-", 0, "", "img/s", skipped=reason)
            row.extra["of"] = kind
            rows.append(row)
            _progress(row)
        return
    import torch

    cuda = torch.cuda.is_available()
    budget = min(b for b in (args.peer_budget_s, args.time_budget_s, float("inf")) if b) or 0.0
    budget = 0.0 if budget == float("inf") else budget
    seen = set()
    for item in items:
        base = configs[item.config]
        key = (item.kind, item.config, item.dtype, item.batch)
        if key in seen:  # one peer row per shape, however many steps_per_call we time
            continue
        seen.add(key)
        if item.kind == "fid":
            batch = item.batch or args.fid_batch
            fn = functools.partial(
                peer.bench_peer_fid,
                item.config,
                base,
                batch=batch,
                batches=args.fid_batches,
                repeats=args.repeats,
                weights_path=_fid_file(args),
            )
            template = Row("peer", item.config, "torchscript", item.dtype, batch, "", "img/s")
            template.extra["of"] = "fid"
            _guarded(rows, template, fn, budget, on_row)
            continue
        for compile_model in _compiles(args, item.dtype, cuda):
            impl = "torch compile" if compile_model else "torch eager"
            if item.kind == "train":
                config = with_settings(base, train__batch_size=item.batch, model__dtype=item.dtype)
                fn = functools.partial(
                    peer.bench_peer,
                    item.config,
                    config,
                    dtype=item.dtype,
                    compile_model=compile_model,
                    steps=args.train_steps,
                    repeats=args.repeats,
                    num_examples=args.train_examples or _split_size(base),
                )
                template = Row("peer", item.config, impl, item.dtype, item.batch, "", "img/s")
            else:
                batch = item.batch or args.sample_batch
                fn = functools.partial(
                    peer.bench_peer_sample,
                    item.config,
                    with_settings(base, model__dtype=item.dtype),
                    dtype=item.dtype,
                    compile_model=compile_model,
                    batch=batch,
                    steps=args.sample_short_steps,
                    repeats=args.repeats,
                )
                template = Row("peer", item.config, impl, item.dtype, batch, "", "img*steps/s")
            template.extra["of"] = item.kind
            _guarded(rows, template, fn, budget, on_row)
    peer.release_memory()


def _split_size(config: ml_collections.ConfigDict) -> int:
    from diffusion_jax import data

    return data.dataset_info(config.data.dataset).split_sizes["train"]


def _slug(row: Row) -> str:
    k = row.extra.get("steps_per_call")
    return f"{row.workload}_{row.config}_b{row.batch}_{row.dtype}" + (f"_k{k}" if k else "")


def make_profile(args: argparse.Namespace, rows: list[Row]) -> Callable[[Row], str | None]:
    """Decides, for a timed row of ours, whether to trace it and where (`--profile_when`)."""

    def decide(row: Row) -> str | None:
        if not args.profile_dir:
            return None
        if args.profile_when == "missed":
            goal = goal_of(row, args.goal_list)
            if goal is None:
                return None
            set_peer_ratios([row] + [r for r in rows if r.workload == "peer"])
            if row.vs_peer is not None and row.vs_peer >= goal.ratio:
                return None
        return os.path.join(args.profile_dir, _slug(row))

    return decide


def run_jax(
    args: argparse.Namespace, configs: dict, rows: list[Row], on_row: Callable[[], None]
) -> dict:
    """Train, sample and FID rows in plan order; returns the device description."""
    from benchmarks import jax_workloads as jw

    mesh = jw.make_mesh(args.num_devices)
    devices = list(mesh.devices.flat)
    info = hardware.jax_device_info(devices)
    if not args.sample_batch:
        args.sample_batch = 64 if devices[0].platform == "cpu" else 1000
    profile = make_profile(args, rows)
    budget = args.time_budget_s
    for item in args.plan:
        if item.kind not in args.workloads:
            continue
        base = configs[item.config]
        if item.kind == "train":
            examples = args.train_examples or _split_size(base)
            config = with_settings(base, train__batch_size=item.batch, model__dtype=item.dtype)
            for k in item.ks:
                fn = functools.partial(
                    jw.bench_train,
                    item.config,
                    config,
                    mesh,
                    steps_per_call=k,
                    steps=args.train_steps,
                    repeats=args.repeats,
                    num_examples=examples,
                    profile=profile,
                )
                template = Row("train", item.config, "jax", item.dtype, item.batch, "", "img/s")
                template.extra["steps_per_call"] = k
                _guarded(rows, template, fn, budget, on_row)
        elif item.kind == "sample":
            batch = item.batch or args.sample_batch
            fn = functools.partial(
                jw.bench_sample,
                item.config,
                with_settings(base, model__dtype=item.dtype),
                mesh,
                batch=batch,
                short_steps=args.sample_short_steps,
                repeats=args.repeats,
                e2e_repeats=args.e2e_repeats,
                solver_steps=args.solver_steps,
                profile=profile,
            )
            template = Row("sample", item.config, "jax", item.dtype, batch, "", "img*steps/s")
            template.extra["sampler"] = "ddpm"
            _guarded(rows, template, fn, budget, on_row)
        else:
            batch = item.batch or args.fid_batch
            fn = functools.partial(
                jw.bench_fid,
                item.config,
                base,
                mesh,
                batch=batch,
                batches=args.fid_batches,
                repeats=args.repeats,
                weights_path=_fid_weights(args),
                profile=profile,
            )
            template = Row("fid", item.config, "jax", "float32-strict", batch, "", "img/s")
            _guarded(rows, template, fn, budget, on_row)
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


def _fid_file(args: argparse.Namespace) -> str | None:
    """A TorchScript file for the torch FID peer: --fid_weights, $DJAX_FID_WEIGHTS, or the
    shared copy (the library's cache holds converted arrays, not the file torch loads)."""
    from diffusion_jax.fid import weights

    for path in (args.fid_weights, os.environ.get(weights.ENV_VAR), str(SHARED_FID_WEIGHTS)):
        if path and Path(path).is_file() and not str(path).endswith((".npz",)):
            return str(path)
    return None


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
    gpu = info.get("gpu") or {}
    driver = "; ".join(f"{k} {val}" for k, val in gpu.items() if val)
    return [
        f"device: {info.get('num_devices')} x {info.get('device_kind')} "
        f"(platform {info.get('platform')}); host: {info.get('host_cpu')}"
        + (f"; peer (torch) on: {', '.join(peer_devices)}" if peer_devices else ""),
        *([f"GPU: {driver}"] if driver else []),
        f"versions: {v}",
        f"method: compile + warm-up excluded; device synchronised after each repeat; median of "
        f"{args.repeats} repeats (full sampling chains: {args.e2e_repeats}); one process; "
        f"vs peer: over the fastest peer row of the same workload, config, batch and dtype",
        f"FLOPs (analytic, 2 per multiply-add, train = 3 x forward): {costs}; FID Inception "
        f"{flops.inception_forward_flops() / 1e9:.2f} GFLOP/img at 299x299",
        "MFU: achieved TFLOP/s over the dense peak for the row's arithmetic (bf16; TF32 for "
        "float32; FP32 for strict float32); n/a where the device has no known peak (CPUs)",
    ]


def _sort_key(row: Row) -> tuple[int, int]:
    """Our rows of a workload, then the peer rows that mirror them (the sort is stable)."""
    group = peer_of(row) if row.workload == "peer" else row.workload
    return ORDER.index(group) if group in ORDER else len(ORDER), row.workload == "peer"


def report(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    configs: dict,
    rows: list[Row],
    info: dict,
    *,
    final: bool,
) -> tuple[list[str], list[str], list[Row]]:
    """Ratios, goals, header and the sorted rows; writes the JSON when --json is given (also
    while the run is under way: `"partial": true`, so a killed run keeps its rows)."""
    rows = sorted(rows, key=_sort_key)
    set_peer_ratios(rows)
    goals = set_goals(rows, args.goal_list)
    versions = hardware.versions()
    lines = header(info, versions, args, configs, rows)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "goal_list"}
        settings["plan"] = [item._asdict() for item in args.plan]
        doc = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "partial": not final,
            "elapsed_s": round(_elapsed(), 1),
            "command": "python -m benchmarks.run "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "device": info,
            "versions": versions,
            "header": lines,
            "goals": goals,
            "settings": settings,
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
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        tmp.replace(out)
    return lines, goals, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compilation_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    names = dict.fromkeys(item.config for item in args.plan)
    configs = {name: load_config(name) for name in names}
    rows: list[Row] = []
    info: dict = {"gpu": hardware.gpu_info()}

    def on_row() -> None:
        report(args, argv, configs, rows, info, final=False)

    if "peer" in args.workloads:
        if not args.sample_batch and not peer_missing():
            import torch  # the peer's sampling batch, before JAX's backend exists

            args.sample_batch = 1000 if torch.cuda.is_available() else 64
        run_peer(args, configs, rows, on_row)
    if args.peer_from:  # e.g. the peer ran alone: --workloads=peer --json=peer.json
        earlier = json.loads(Path(args.peer_from).read_text())["rows"]
        rows += [Row.from_json(r) for r in earlier if r["workload"] == "peer"]
    info |= run_jax(args, configs, rows, on_row)
    lines, goals, rows = report(args, argv, configs, rows, info, final=True)
    print("\n".join(lines) + "\n\n" + table(rows), flush=True)
    if goals:
        print("\nGoals (ours over the fastest peer row at the same shape):\n" + "\n".join(goals))
    for row in rows:
        if "top_ops" in row.extra:
            title = f"\n{row.workload} {row.config} {row.dtype} b{row.batch} {row.what}"
            print(profile_summary.format_summary(title, row.extra["top_ops"]), flush=True)
    if args.json:
        print(f"\nwrote {args.json}", flush=True)
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in rows) else 0


def peer_missing() -> str | None:
    from benchmarks import peer

    return peer.missing()


if __name__ == "__main__":
    sys.exit(main())
