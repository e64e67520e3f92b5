"""Train-step throughput of MNIST model variants on this machine (issue 28's recipe search).

Each variant is `configs/mnist_cond_cpu.py` with the overrides named in VARIANTS, timed with
`jax_workloads.bench_train` (our full train step on synthetic 28x28 data, compile excluded).
Prints one JSON line per row (and appends it to --jsonl) with images/s, the analytic GFLOP/s and
the parameter count, so FID per CPU-minute can be weighed against images per second.

    python -m benchmarks.cpu_recipe --variants=base,w64,w64_122 --batch_sizes=64,128 \
        --jsonl=results/quality/cpu_recipe.jsonl

XLA flags (e.g. XLA_FLAGS=--xla_cpu_use_onednn=true where the build has it) apply per process:
run the command again under another XLA_FLAGS; the row records the flags it ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import time

VARIANTS: dict[str, dict[str, object]] = {
    # configs/mnist_cond_cpu.py as it is: ch 32, mult (1, 2), 1 block, no attention
    "base": {},
    "w32_122": {"model__ch_mult": (1, 2, 2)},
    "w32_122_b2": {"model__ch_mult": (1, 2, 2), "model__num_res_blocks": 2},
    "w48_122": {"model__ch": 48, "model__ch_mult": (1, 2, 2), "model__time_emb_dim": 192},
    "w64": {"model__ch": 64, "model__time_emb_dim": 256},
    "w64_122": {"model__ch": 64, "model__ch_mult": (1, 2, 2), "model__time_emb_dim": 256},
    "w64_122_b2": {
        "model__ch": 64,
        "model__ch_mult": (1, 2, 2),
        "model__num_res_blocks": 2,
        "model__time_emb_dim": 256,
    },
    "w64_122_b2_attn7": {
        "model__ch": 64,
        "model__ch_mult": (1, 2, 2),
        "model__num_res_blocks": 2,
        "model__time_emb_dim": 256,
        "model__attn_resolutions": (7,),
    },
}


def _emit(record: dict[str, object], jsonl: str) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if jsonl:
        os.makedirs(os.path.dirname(jsonl) or ".", exist_ok=True)
        with open(jsonl, "a") as f:
            f.write(line + "\n")


def _peer_row(name: str, cfg, batch: int, dtype: str, cost, steps: float) -> dict[str, object]:
    """The same config's train step in PyTorch (diffusers UNet2DModel, eager, oneDNN)."""
    import torch

    from benchmarks import peer

    # diffusers' UNet2DModel has no class embedding of our kind: the peer is unconditional,
    # which is the cheaper network (one embedding lookup less); it times the same convolutions
    pcfg = cfg.copy_and_resolve_references()
    pcfg.model.num_classes = 0
    row = peer.bench_peer(
        name,
        pcfg,
        dtype=dtype,
        compile_model=False,
        steps=max(2, round(steps)),
        repeats=2,
        num_examples=4096,
    )
    return {
        "variant": name,
        "impl": f"torch {torch.__version__} eager",
        "batch": batch,
        "dtype": dtype,
        "params": row.extra["params"],
        "train_gflop_per_img": cost.train_flops / 1e9,
        "img_per_s": row.throughput,
        "gflop_per_s": row.throughput * cost.train_flops / 1e9,
        "seconds": row.seconds,
        "torch_threads": torch.get_num_threads(),
        "loadavg_after": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="base,w64_122")
    p.add_argument("--batch_sizes", default="64")
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--seconds", type=float, default=8.0, help="target seconds per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jsonl", default="")
    p.add_argument("--peer", action="store_true", help="also time the PyTorch peer (eager)")
    a = p.parse_args()

    import jax

    from benchmarks import flops, hardware, jax_workloads, run
    from diffusion_jax import state as state_lib

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/djax_bench"))
    mesh = jax_workloads.make_mesh(0)
    base = run.load_config("mnist_cond_cpu")
    for name in run._names(a.variants):
        for batch in (int(b) for b in run._names(a.batch_sizes)):
            for dtype in run._names(a.dtypes):
                cfg = run.with_settings(
                    base, **VARIANTS[name], train__batch_size=batch, model__dtype=dtype
                )
                state_lib.validate_config(cfg)
                cost = flops.unet_cost(cfg)
                # one short probe row sizes the timed repeats to ~a.seconds each
                probe = jax_workloads.bench_train(
                    name, cfg, mesh, steps_per_call=1, steps=2, repeats=1, num_examples=4096
                )
                per_step = probe.median_s / 2
                steps = max(2, round(a.seconds / per_step))
                cpu0 = time.process_time()
                row = jax_workloads.bench_train(
                    name,
                    cfg,
                    mesh,
                    steps_per_call=1,
                    steps=steps,
                    repeats=a.repeats,
                    num_examples=4096,
                )
                out = {
                    "variant": name,
                    "impl": f"jax {jax.__version__}",
                    "overrides": {
                        k: list(v) if isinstance(v, tuple) else v for k, v in VARIANTS[name].items()
                    },
                    "batch": batch,
                    "dtype": dtype,
                    "params": cost.params,
                    "train_gflop_per_img": cost.train_flops / 1e9,
                    "img_per_s": row.throughput,
                    "gflop_per_s": row.throughput * cost.train_flops / 1e9,
                    "steps_per_repeat": steps,
                    "seconds": row.seconds,
                    "cpu_s_total": time.process_time() - cpu0,
                    "compile_and_first_call_s": probe.extra["compile_and_first_call_s"],
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "jax": jax.__version__,
                    "machine": f"{hardware.cpu_name()}, {os.cpu_count()} cores",
                    "loadavg_after": os.getloadavg()[0],
                }
                _emit(out, a.jsonl)
                if a.peer:
                    _emit(_peer_row(name, cfg, batch, dtype, cost, a.seconds / per_step), a.jsonl)


if __name__ == "__main__":
    main()
