"""Deep Image Prior as a prior for DDPM: start DDPM's reverse process from DIP's restored images.

The experiment (the course report's "DIP as prior"): a DIP run (`config.method = "dip"`,
`diffusion_jax.methods.dip`) has restored noisy images y = clip(x + sigma n); a trained DDPM
workdir then denoises, and every result is compared with the clean x by PSNR (dB, peak 1 on
[0, 1] pixels, the DIP report's):

- noisy input y and DIP output d (the DIP run's output EMA, or `--dip_output=best|last`);
- DDPM from the noisy input directly: y read as a forward sample at the timestep t* whose noise
  level matches, sqrt((1 - abar_t*) / abar_t*) ~ sigma (model space), i.e. x_t* = sqrt(abar_t*) y,
  then one-step x0_hat and the iterative reverse process from t* (`edit.one_step_denoise`,
  `edit.iterative_denoise`, as `--mode=edit`'s denoising);
- SDEdit from y and from d at each `--t_starts` t: forward-noised to t with the same noise
  (`edit.forward_process`: one draw per image, shared by y and d, so the two are paired) and
  denoised iteratively from t; and the one-step estimate from the noised d.

The network is the DDPM workdir's EMA weights (`sampling.load_ema_params`); class-conditional
models denoise with the null label (`num_classes`), i.e. unconditionally. Image b's noise is
`fold_in(fold_in(PRNGKey(seed), DIP_PRIOR_STREAM), b)` (`samplers.image_keys`).

    python -m diffusion_jax.dip_prior --dip_workdir=W1 --ddpm_config=configs/mnist_cond_cpu.py \\
        --ddpm_workdir=W2 --out=DIR

reads W1/report/dip.npz (written by `--mode=sample` on the DIP workdir, `methods.dip.report`)
and writes DIR/dip_prior.json, dip_prior.md (the PSNR tables), dip_prior.png (the images) and
dip_prior.npz.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import diffusion, edit, images, parallel, samplers, sampling, writers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import psnr, quantize

DIP_PRIOR_STREAM = 6
DIP_REPORT = os.path.join("report", "dip.npz")
DEFAULT_T_STARTS = (25, 50, 100, 200, 400)
DIP_OUTPUTS = ("restored", "best", "last")

# ---------------------------------------------------------------------------- pure core


def matched_timestep(schedule: diffusion.Schedule, sigma: float) -> int:
    """The t whose forward process has noise-to-signal sqrt((1 - abar_t) / abar_t) nearest to
    `sigma` (model space): x + sigma n = x_t / sqrt(abar_t) there."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    ratio = np.sqrt((1.0 - abar) / abar)
    return int(np.argmin(np.abs(ratio - float(sigma))))


def restore(
    denoise_fn: diffusion.DenoiseFn,
    schedule: diffusion.Schedule,
    noisy: jax.Array,
    dip: jax.Array,
    keys: jax.Array,
    *,
    sigma: float,
    t_starts: Sequence[int],
    stride: int,
    eta: float = 1.0,
) -> dict[str, jax.Array]:
    """Every DDPM restoration of the module doc, model space [-1, 1] (jit with the denoise
    function closed over; `t_starts`, `stride` and `sigma` are static).

    Returns `one_step` and `iterative` [B, H, W, C] (from the noisy input at the matched t*),
    and `sdedit_noisy`, `sdedit_dip`, `one_step_dip` [len(t_starts), B, H, W, C].
    """
    t_star = matched_timestep(schedule, sigma)
    x_t = schedule.sqrt_alphas_cumprod[t_star] * jnp.asarray(noisy, jnp.float32)
    out = {
        "one_step": edit.one_step_denoise(denoise_fn, schedule, x_t, t_star),
        "iterative": edit.iterative_denoise(
            denoise_fn, schedule, x_t, t_star, keys, stride=stride, eta=eta
        ).samples,
    }
    from_noisy = edit.forward_process(schedule, noisy, t_starts, keys)
    from_dip = edit.forward_process(schedule, dip, t_starts, keys)
    rows: dict[str, list[jax.Array]] = {"sdedit_noisy": [], "sdedit_dip": [], "one_step_dip": []}
    for k, t in enumerate(t_starts):
        for name, xt in (("sdedit_noisy", from_noisy[k]), ("sdedit_dip", from_dip[k])):
            chain = edit.iterative_denoise(
                denoise_fn, schedule, xt, t, keys, stride=stride, eta=eta
            )
            rows[name].append(chain.samples)
        rows["one_step_dip"].append(edit.one_step_denoise(denoise_fn, schedule, from_dip[k], t))
    out.update({k: jnp.stack(v) for k, v in rows.items()})
    return out


# ---------------------------------------------------------------------------- reading


def load_dip(dip_workdir: str, which: str = "restored") -> dict[str, np.ndarray]:
    """The DIP report's arrays (clean, noisy, the chosen output as `dip`, sigma_model, ...)."""
    if which not in DIP_OUTPUTS:
        raise UserError(f"--dip_output={which!r}: use one of {', '.join(DIP_OUTPUTS)}.")
    if not os.path.isdir(dip_workdir):
        raise UserError(f"--dip_workdir={dip_workdir} is not a folder (a DIP run's workdir).")
    path = os.path.join(dip_workdir, DIP_REPORT)
    if not os.path.isfile(path):
        raise UserError(
            f"{path} does not exist: run the DIP report first (python -m diffusion_jax.main "
            f"--mode=sample --config=<the DIP config> --workdir={dip_workdir})."
        )
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    missing = [k for k in ("clean", "noisy", which, "sigma_model") if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks {missing}: not a DIP report (methods.dip.report).")
    arrays["dip"] = arrays[which]
    return arrays


def load_config(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, validated."""
    if not os.path.isfile(path):
        raise UserError(f"--ddpm_config={path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"_djax_dip_prior_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as e:  # noqa: BLE001 - any failure of the user's file
        raise UserError(f"--ddpm_config={path} does not load: {e}") from e
    if config.get("method", "ddpm") != "ddpm":
        raise UserError(f"--ddpm_config={path} is a {config.method!r} config, not a DDPM one.")
    state_lib.validate_config(config)
    return config


def check_compatible(dip: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> None:
    """The DIP images must have the DDPM model's size and channels."""
    shape = tuple(dip["clean"].shape[1:])
    d = config.data
    want = (int(d.image_size), int(d.image_size), int(d.channels))
    if shape != want:
        raise UserError(
            f"The DIP images are {shape[0]}x{shape[1]} with {shape[2]} channel(s), but the DDPM "
            f"config takes {want[0]}x{want[1]} with {want[2]}: pair runs of the same dataset "
            "and channels."
        )
    dataset = str(dip.get("dataset", ""))
    if dataset and dataset != d.dataset:
        logging.warning("DIP ran on %s, the DDPM model was trained on %s.", dataset, d.dataset)


# ------------------------------------------------------------------------------- runner

COLUMNS = {  # method -> label of the summary table (the t* ones carry t* in their label)
    "noisy": "noisy input",
    "dip": "DIP output",
    "one_step": "DDPM one-step from noisy",
    "iterative": "DDPM iterative from noisy",
}
BY_T = {
    "sdedit_noisy": "SDEdit from noisy",
    "sdedit_dip": "SDEdit from DIP",
    "one_step_dip": "one-step from DIP",
}


def _denoise_fn(config, graphdef, params, schedule, batch: int) -> Callable:
    if config.model.num_classes:  # the null label: the unconditional estimate, one forward
        config = config.copy_and_resolve_references()
        config.sample.guidance = 1.0
        null = jnp.full((batch,), config.model.num_classes, jnp.int32)
        return state_lib.denoise_fn_for(config, graphdef, params, schedule, null)
    return state_lib.denoise_fn_for(config, graphdef, params, schedule)


def markdown(table: dict) -> str:
    """The two PSNR tables: one row per method, and SDEdit by start timestep."""
    lines = [
        f"DIP as a prior for DDPM: {table['num_images']} images, mean PSNR (dB); DDPM EMA step "
        f"{table['ddpm_step']}, stride {table['stride']}, eta {table['eta']:g}, matched "
        f"t* = {table['t_matched']} (sigma {table['sigma_model']:.4f} in [-1, 1]).",
        "",
        "| method | PSNR (dB) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in table["psnr_db"].items()]
    lines += ["", "| t_start | " + " | ".join(BY_T.values()) + " |", "|---" * (len(BY_T) + 1) + "|"]
    for t, row in table["by_t_start"].items():
        lines.append(f"| {t} | " + " | ".join(f"{row[v]:.2f}" for v in BY_T.values()) + " |")
    return "\n".join(lines) + "\n"


def run(
    dip_workdir: str,
    ddpm_config: str,
    ddpm_workdir: str,
    out: str,
    *,
    checkpoint: str | None = None,
    t_starts: Sequence[int] = DEFAULT_T_STARTS,
    stride: int = 10,
    eta: float = 1.0,
    dip_output: str = "restored",
    seed: int = 0,
    max_images: int = 0,
) -> dict:
    """The experiment; returns the table (also in out/dip_prior.json)."""
    dip = load_dip(dip_workdir, dip_output)
    config = load_config(ddpm_config)
    check_compatible(dip, config)
    num_t = int(config.diffusion.num_timesteps)
    t_starts = [int(t) for t in t_starts]
    if not t_starts or any(not 0 <= t < num_t for t in t_starts):
        raise UserError(f"--t_starts={t_starts}: give timesteps in [0, {num_t}).")
    if not 1 <= stride <= num_t:
        raise UserError(f"--stride={stride} must be in [1, {num_t}].")
    if not 0 <= eta <= 1:
        raise UserError(f"--eta={eta} must be in [0, 1].")
    if not os.path.isdir(ddpm_workdir):
        raise UserError(f"--ddpm_workdir={ddpm_workdir} is not a folder (a trained DDPM run).")
    n = len(dip["clean"]) if max_images <= 0 else min(max_images, len(dip["clean"]))
    clean, noisy, restored = (np.asarray(dip[k][:n], np.float32) for k in ("clean", "noisy", "dip"))
    sigma = float(dip["sigma_model"])

    mesh = parallel.make_mesh()
    graphdef = state_lib.graphdef_of(config)
    schedule = state_lib.build_schedule(config)
    params, step = sampling.load_ema_params(config, ddpm_workdir, mesh, checkpoint)
    keys = samplers.image_keys(jax.random.fold_in(jax.random.PRNGKey(seed), DIP_PRIOR_STREAM), n)

    def fn(params, noisy, restored, keys):
        denoise = _denoise_fn(config, graphdef, params, schedule, n)
        return restore(
            denoise, schedule, noisy, restored, keys, sigma=sigma, t_starts=t_starts,
            stride=stride, eta=eta,
        )  # fmt: skip

    res = jax.tree.map(np.asarray, jax.jit(fn)(params, noisy, restored, keys))
    t_star = matched_timestep(schedule, sigma)
    per_image = {
        COLUMNS["noisy"]: psnr(noisy, clean),
        COLUMNS["dip"]: psnr(restored, clean),
        f"{COLUMNS['one_step']} (t*={t_star})": psnr(res["one_step"], clean),
        f"{COLUMNS['iterative']} (t*={t_star})": psnr(res["iterative"], clean),
    }
    by_t = {
        str(t): {label: float(np.mean(psnr(res[key][k], clean))) for key, label in BY_T.items()}
        for k, t in enumerate(t_starts)
    }
    table = {
        "dip_workdir": dip_workdir,
        "dip_output": dip_output,
        "dip_step": int(dip["step"]) if "step" in dip else None,
        "ddpm_config": ddpm_config,
        "ddpm_workdir": ddpm_workdir,
        "ddpm_step": int(step),
        "num_images": n,
        "indices": [int(i) for i in dip["indices"][:n]] if "indices" in dip else None,
        "sigma_model": sigma,
        "t_matched": t_star,
        "stride": stride,
        "eta": eta,
        "seed": seed,
        "psnr_db": {k: float(np.mean(v)) for k, v in per_image.items()},
        "by_t_start": by_t,
        "psnr_db_per_image": {k: [float(x) for x in v] for k, v in per_image.items()},
    }
    if parallel.is_main_process():
        os.makedirs(out, exist_ok=True)
        writers.write_json(os.path.join(out, "dip_prior.json"), table, indent=1)
        with open(os.path.join(out, "dip_prior.md"), "w", encoding="utf-8") as f:
            f.write(markdown(table))
        np.savez(
            os.path.join(out, "dip_prior.npz"),
            clean=clean, noisy=noisy, dip=restored, t_starts=np.asarray(t_starts, np.int32),
            **res,
        )  # fmt: skip
        mean = table["psnr_db"]
        labels = list(per_image)
        cols = [
            ("clean", quantize(clean)),
            (f"noisy\n{mean[labels[0]]:.1f} dB", quantize(noisy)),
            (f"DIP\n{mean[labels[1]]:.1f} dB", quantize(restored)),
            (f"DDPM one-step\n(t*={t_star}) {mean[labels[2]]:.1f}", quantize(res["one_step"])),
            (f"DDPM iterative\n(t*={t_star}) {mean[labels[3]]:.1f}", quantize(res["iterative"])),
        ]
        for k, t in enumerate(t_starts):
            row = by_t[str(t)]
            cols.append(
                (f"SDEdit noisy\nt={t} {row[BY_T['sdedit_noisy']]:.1f}",
                 quantize(res["sdedit_noisy"][k]))
            )  # fmt: skip
        for k, t in enumerate(t_starts):
            row = by_t[str(t)]
            cols.append(
                (f"SDEdit DIP\nt={t} {row[BY_T['sdedit_dip']]:.1f}", quantize(res["sdedit_dip"][k]))
            )
        names = [f"#{i}" for i in table["indices"]] if table["indices"] else None
        images.edit_figure(
            os.path.join(out, "dip_prior.png"),
            cols,
            row_labels=names,
            title=f"DIP as a prior for DDPM (PSNR dB; DDPM EMA step {step}, stride {stride})",
        )
        logging.info("Wrote %s/dip_prior.{json,md,png,npz}", out)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m diffusion_jax.dip_prior",
        description="DIP's restored images as the start of DDPM's reverse process (SDEdit), "
        "PSNR against the clean images.",
    )
    p.add_argument("--dip_workdir", required=True, help="a DIP run (with report/dip.npz)")
    p.add_argument("--ddpm_config", required=True, help="the DDPM workdir's config file")
    p.add_argument("--ddpm_workdir", required=True, help="a trained DDPM run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default=None, help="DDPM step, 'latest' or 'best'")
    p.add_argument(
        "--t_starts",
        default=",".join(map(str, DEFAULT_T_STARTS)),
        help="SDEdit start timesteps, comma-separated",
    )
    p.add_argument("--stride", type=int, default=10, help="timestep stride of the reverse chain")
    p.add_argument("--eta", type=float, default=1.0, help="1 = ancestral DDPM steps, 0 = DDIM")
    p.add_argument("--dip_output", default="restored", choices=DIP_OUTPUTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_images", type=int, default=0, help="0 = every DIP image")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        try:
            t_starts = [int(t) for t in args.t_starts.split(",") if t.strip()]
        except ValueError:
            raise UserError(
                f"--t_starts={args.t_starts!r}: give integers like 25,50,100."
            ) from None
        table = run(
            args.dip_workdir,
            args.ddpm_config,
            args.ddpm_workdir,
            args.out,
            checkpoint=args.checkpoint,
            t_starts=t_starts,
            stride=args.stride,
            eta=args.eta,
            dip_output=args.dip_output,
            seed=args.seed,
            max_images=args.max_images,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
