"""`--mode=dip_prior`: start DDPM's reverse process from Deep Image Prior's restored images.

The experiment (the course report's "DIP as prior"): a DIP run (`config.method = "dip"`,
`diffusion_jax.methods.dip`) has restored noisy images y = clip(x + sigma n); a trained DDPM
workdir then denoises, and every result is compared with the clean x by PSNR (dB, peak 1 on
[0, 1] pixels, the DIP report's):

- noisy input y and DIP output d (the DIP run's output EMA, or `dip_output=best|last`);
- DDPM from the noisy input directly: y read as a forward sample at the timestep t* whose noise
  level matches, sqrt((1 - abar_t*) / abar_t*) ~ s (model space), i.e. x_t* = sqrt(abar_t*) y,
  then one-step x0_hat and the iterative reverse process from t* (`edit.one_step_denoise`,
  `edit.iterative_denoise`, as `--mode=edit`'s denoising). s is the measured std of the
  residual r = y - x over the images (`residual`), not the nominal sigma: clipping y to [-1, 1]
  takes noise away at saturated pixels (on MNIST's black background only max(0, sigma n) is
  left: std 0.58 sigma, mean sigma / sqrt(2 pi)), so the residual is weaker than sigma and
  biased. The rows at the nominal sigma's t* are kept for comparison;
- SDEdit from y and from d at each `t_starts` t: forward-noised to t with the same noise
  (`edit.forward_process`: one draw per image, shared by y and d, so the two are paired) and
  denoised iteratively from t; and the one-step estimate from the noised d.

Held out: the DIP images must be of the dataset the DDPM was trained on, from a split it did
not train on (`check_held_out`: the DIP report's dataset and split, `methods.dip` records them,
against the DDPM's `Method.data_split`, "train"; reports from before DIP had `config.dip.split`
are of the train split). The weights' own dataset is the config's: loading refuses others
(`checkpoint.check_same_meaning`).

The network is the DDPM workdir's EMA weights (`sampling.load_ema_params`; or a shipped model:
`--pretrained=mnist_cond`, i.e. `--checkpoint=pretrained:mnist_cond`); class-conditional
models denoise with the null label (`num_classes`), i.e. unconditionally
(`state.labelled_fn`). Image b's noise is
`fold_in(fold_in(PRNGKey(config.seed), DIP_PRIOR_STREAM), b)` (`samplers.image_keys`).

    python -m diffusion_jax.main --mode=dip_prior --config=configs/mnist_cond_cpu.py \\
        --workdir=W2 --config.dip_prior.dip_workdir=W1

runs on the DDPM config and workdir W2 (its checkpoint: `--checkpoint`), reads
W1/report/dip.npz (written by `--mode=sample` on the DIP workdir, `methods.dip.report`) and
writes W2/dip_prior/dip_prior.json, dip_prior.md (the PSNR tables), dip_prior.png (the images)
and dip_prior.npz. The settings are `config.dip_prior.*` (config.py). The former command
`python -m diffusion_jax.dip_prior --dip_workdir=...` stops with the equivalent `--mode`
command (`main`).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import (
    diffusion,
    edit,
    images,
    methods,
    parallel,
    pretrained,
    samplers,
    sampling,
    writers,
)
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import psnr, quantize

DIP_PRIOR_STREAM = 6
OUTPUT_DIR = "dip_prior"
DIP_REPORT = os.path.join("report", "dip.npz")
DIP_OUTPUTS = ("restored", "best", "last")

# ---------------------------------------------------------------------------- pure core


def matched_timestep(schedule: diffusion.Schedule, sigma: float) -> int:
    """The t whose forward process has noise-to-signal sqrt((1 - abar_t) / abar_t) nearest to
    `sigma` (model space): x + sigma n = x_t / sqrt(abar_t) there."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    ratio = np.sqrt((1.0 - abar) / abar)
    return int(np.argmin(np.abs(ratio - float(sigma))))


def residual(noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """The noise the noisy images actually carry: r = y - x (model space) over every pixel of
    every image, its std and mean (clipping y makes both differ from (sigma, 0))."""
    r = np.asarray(noisy, np.float64) - np.asarray(clean, np.float64)
    return {"std": float(np.std(r)), "mean": float(np.mean(r))}


def restore(
    denoise_fn: diffusion.DenoiseFn,
    schedule: diffusion.Schedule,
    noisy: jax.Array,
    dip: jax.Array,
    keys: jax.Array,
    *,
    t_matched: Sequence[int],
    t_starts: Sequence[int],
    stride: int,
    eta: float = 1.0,
) -> dict[str, jax.Array]:
    """Every DDPM restoration of the module doc, model space [-1, 1] (jit with the denoise
    function closed over; `t_matched`, `t_starts` and `stride` are static).

    Returns `one_step` and `iterative` [len(t_matched), B, H, W, C] (from the noisy input read
    as x_t* at each t* of `t_matched`), and `sdedit_noisy`, `sdedit_dip`, `one_step_dip`
    [len(t_starts), B, H, W, C].
    """
    y = jnp.asarray(noisy, jnp.float32)
    matched: dict[str, list[jax.Array]] = {"one_step": [], "iterative": []}
    for t_star in t_matched:
        x_t = schedule.sqrt_alphas_cumprod[t_star] * y
        matched["one_step"].append(edit.one_step_denoise(denoise_fn, schedule, x_t, t_star))
        chain = edit.iterative_denoise(
            denoise_fn, schedule, x_t, t_star, keys, stride=stride, eta=eta
        )
        matched["iterative"].append(chain.samples)
    out = {k: jnp.stack(v) for k, v in matched.items()}
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
        raise UserError(
            f"config.dip_prior.dip_output={which!r}: use one of {', '.join(DIP_OUTPUTS)}."
        )
    if not os.path.isdir(dip_workdir):
        raise UserError(
            f"config.dip_prior.dip_workdir={dip_workdir!r} is not a folder: give a DIP run's "
            "workdir (config.method='dip', after its --mode=sample report)."
        )
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


def check_compatible(dip: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> None:
    """The DIP images must have the DDPM model's size and channels (`check_held_out`: its
    dataset and split)."""
    shape = tuple(dip["clean"].shape[1:])
    d = config.data
    want = (int(d.image_size), int(d.image_size), int(d.channels))
    if shape != want:
        raise UserError(
            f"The DIP images are {shape[0]}x{shape[1]} with {shape[2]} channel(s), but the DDPM "
            f"config takes {want[0]}x{want[1]} with {want[2]}: pair runs of the same dataset "
            "and channels."
        )


def dip_source(dip: dict[str, np.ndarray]) -> tuple[str | None, str]:
    """(dataset, split) of the DIP report's images. A report without `split` is of the train
    split: DIP read that split alone before `config.dip.split`; one without `dataset` gives
    None (unknown)."""
    dataset = str(dip["dataset"]) if "dataset" in dip else None
    return dataset, str(dip["split"]) if "split" in dip else "train"


def trained_on(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(dataset, split) a run of `config` trains on (`Method.data_split`; DDPM: "train")."""
    return str(config.data.dataset), methods.get(config).data_split(config)


def check_held_out(dip: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> None:
    """Refuses DIP images the DDPM of `config` saw in training (its split of its dataset), and
    images of another dataset, or of an unknown one: the comparison is of restorations of
    held-out images of the DDPM's dataset."""
    dataset, split = dip_source(dip)
    ddpm_dataset, ddpm_split = trained_on(config)
    held_out = next(s for s in ("test", "train") if s != ddpm_split)
    rerun = (
        f"Re-run DIP on the {held_out} split of {ddpm_dataset} (python -m diffusion_jax.main "
        f"--config=<the DIP config, e.g. configs/dip.py> --workdir=<a new folder> "
        f"--config.data.dataset={ddpm_dataset} --config.dip.split={held_out}, then its "
        "--mode=sample report) and give that workdir as --config.dip_prior.dip_workdir."
    )
    where = str(config.dip_prior.dip_workdir)
    if dataset is None:
        raise UserError(
            f"The DIP report in {where} does not say which dataset its images are from (it "
            f"predates the field), so they cannot be checked against the DDPM's training data "
            f"({ddpm_dataset}/{ddpm_split}). {rerun}"
        )
    if dataset != ddpm_dataset:
        raise UserError(
            f"The DIP images in {where} are of {dataset}, but the DDPM was trained on "
            f"{ddpm_dataset}: the experiment restores images of the DDPM's dataset. Give a DDPM "
            f"of {dataset}, or: {rerun}"
        )
    if split == ddpm_split:
        old = "" if "split" in dip else " (a report from before config.dip.split: train images)"
        raise UserError(
            f"The DIP images in {where} come from the {split} split of {dataset}{old}, which the "
            f"DDPM was trained on: it has seen them, so its restorations would not be of held-out "
            f"images. {rerun}"
        )


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


def markdown(table: dict) -> str:
    """The two PSNR tables (one row per method, and SDEdit by start timestep) and what t* is."""
    r, sigma = table["residual"], table["sigma_model"]
    lines = [
        f"DIP as a prior for DDPM: {table['num_images']} images ({table['dip_dataset']}/"
        f"{table['dip_split']} {table['indices']}; the DDPM trained on {table['ddpm_dataset']}/"
        f"{table['ddpm_split']}), mean PSNR (dB); DDPM EMA step {table['ddpm_step']}, stride "
        f"{table['stride']}, eta {table['eta']:g}.",
        "",
        f"Matched t* = {table['t_matched']}: the noise-to-signal ratio of x_t* nearest to the "
        f"measured std {r['std']:.4f} of the residual y - x of the noisy input (model space "
        f"[-1, 1]; mean {r['mean']:+.4f}). The nominal sigma {sigma:.4f} gives t* = "
        f"{table['t_nominal']}. Clipping y to [-1, 1] removes noise at saturated pixels: where "
        "x = -1 only max(0, sigma n) is left (std 0.58 sigma, mean +0.40 sigma), at x = +1 its "
        "mirror image. The mean is that one-sided noise, not an offset of the whole image (it is "
        "zero at mid-grey pixels), so nothing is subtracted: the DDPM reads y as x_t* as it is, "
        "a forward sample whose Gaussian noise it does not quite match.",
        "",
        "| method | PSNR (dB) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in table["psnr_db"].items()]
    lines += ["", "| t_start | " + " | ".join(BY_T.values()) + " |", "|---" * (len(BY_T) + 1) + "|"]
    for t, row in table["by_t_start"].items():
        lines.append(f"| {t} | " + " | ".join(f"{row[v]:.2f}" for v in BY_T.values()) + " |")
    return "\n".join(lines) + "\n"


def check_method(config: ml_collections.ConfigDict) -> None:
    """Refuses a config that is not a DDPM run: the experiment denoises with a diffusion model."""
    method = config.get("method", "ddpm")
    if method != "ddpm":
        raise UserError(
            f"--mode=dip_prior denoises with a DDPM: config.method={method!r} is not one. Give "
            "the config and workdir of a DDPM run (e.g. configs/mnist_cond_cpu.py) and the DIP "
            "run as --config.dip_prior.dip_workdir."
        )


def validate(config: ml_collections.ConfigDict) -> list[int]:
    """`config.dip_prior`'s settings checked (nothing read yet); returns the start timesteps."""
    p, num_t = config.dip_prior, int(config.diffusion.num_timesteps)
    if not str(p.dip_workdir).strip():
        raise UserError(
            "--mode=dip_prior needs the DIP run: --config.dip_prior.dip_workdir=<its workdir>."
        )
    if p.dip_output not in DIP_OUTPUTS:
        raise UserError(
            f"config.dip_prior.dip_output={p.dip_output!r}: use one of {', '.join(DIP_OUTPUTS)}."
        )
    values = p.t_starts if isinstance(p.t_starts, (tuple, list)) else (p.t_starts,)
    if not values or not all(isinstance(t, int) and not isinstance(t, bool) for t in values):
        raise UserError(
            f"config.dip_prior.t_starts={p.t_starts!r}: give integer timesteps like (25, 50, 100)."
        )
    t_starts = [int(t) for t in values]
    if any(not 0 <= t < num_t for t in t_starts):
        raise UserError(
            f"config.dip_prior.t_starts={tuple(t_starts)}: give timesteps in [0, {num_t})."
        )
    if not (isinstance(p.stride, int) and 1 <= p.stride <= num_t):
        raise UserError(f"config.dip_prior.stride={p.stride!r} must be an integer in [1, {num_t}].")
    if not (isinstance(p.eta, (int, float)) and 0 <= p.eta <= 1):
        raise UserError(f"config.dip_prior.eta={p.eta!r} must be in [0, 1].")
    if not (isinstance(p.max_images, int) and p.max_images >= 0):
        raise UserError(f"config.dip_prior.max_images={p.max_images!r} must be >= 0 (0 = all).")
    return t_starts


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint: str | None = None,
    config_file: str | None = None,
) -> dict:
    """`--mode=dip_prior` on the DDPM run `workdir` (`config` its config, from `config_file`):
    the experiment of the module doc; returns the table (also in workdir/dip_prior/)."""
    check_method(config)
    state_lib.validate_config(config)
    t_starts = validate(config)
    p = config.dip_prior
    dip_workdir, dip_output = str(p.dip_workdir), str(p.dip_output)
    stride, eta, seed = int(p.stride), float(p.eta), int(config.seed)
    dip = load_dip(dip_workdir, dip_output)
    check_compatible(dip, config)
    check_held_out(dip, config)
    from_model_folder = str(checkpoint or "").startswith(pretrained.PREFIX)
    if not from_model_folder and not os.path.isdir(workdir):
        raise UserError(
            f"--workdir={workdir} is not a folder: give a trained DDPM run (or a shipped model: "
            "--pretrained=NAME, the outputs then go to --workdir)."
        )
    out = os.path.join(workdir, OUTPUT_DIR)
    max_images = int(p.max_images)
    n = len(dip["clean"]) if max_images <= 0 else min(max_images, len(dip["clean"]))
    clean, noisy, restored = (np.asarray(dip[k][:n], np.float32) for k in ("clean", "noisy", "dip"))
    sigma = float(dip["sigma_model"])
    schedule = state_lib.build_schedule(config)
    measured = residual(noisy, clean)
    t_star = matched_timestep(schedule, measured["std"])
    t_nominal = matched_timestep(schedule, sigma)
    t_matched = (t_star,) if t_nominal == t_star else (t_star, t_nominal)
    dip_dataset, dip_split = dip_source(dip)
    ddpm_dataset, ddpm_split = trained_on(config)

    mesh = parallel.make_mesh()
    graphdef = state_lib.graphdef_of(config)
    params, step = sampling.load_ema_params(config, workdir, mesh, checkpoint)
    keys = samplers.image_keys(jax.random.fold_in(jax.random.PRNGKey(seed), DIP_PRIOR_STREAM), n)
    num_classes = int(config.model.num_classes)

    def fn(params, noisy, restored, keys):
        cond = state_lib.eps_fn_for(config, graphdef, params, schedule)
        denoise = state_lib.labelled_fn(cond, num_classes)  # null label: the unconditional eps
        return restore(
            denoise, schedule, noisy, restored, keys, t_matched=t_matched, t_starts=t_starts,
            stride=stride, eta=eta,
        )  # fmt: skip

    res = jax.tree.map(np.asarray, jax.jit(fn)(params, noisy, restored, keys))
    per_image = {
        COLUMNS["noisy"]: psnr(noisy, clean),
        COLUMNS["dip"]: psnr(restored, clean),
    }
    for key in ("one_step", "iterative"):
        per_image[f"{COLUMNS[key]} (t*={t_star})"] = psnr(res[key][0], clean)
    if len(t_matched) > 1:
        for key in ("one_step", "iterative"):
            per_image[f"{COLUMNS[key]} (nominal t*={t_nominal})"] = psnr(res[key][1], clean)
    by_t = {
        str(t): {label: float(np.mean(psnr(res[key][k], clean))) for key, label in BY_T.items()}
        for k, t in enumerate(t_starts)
    }
    table = {
        "dip_workdir": dip_workdir,
        "dip_output": dip_output,
        "dip_step": int(dip["step"]) if "step" in dip else None,
        "dip_dataset": dip_dataset,
        "dip_split": dip_split,
        "ddpm_config": config_file,
        "ddpm_workdir": workdir,
        "ddpm_checkpoint": checkpoint,
        "ddpm_step": int(step),
        "ddpm_dataset": ddpm_dataset,
        "ddpm_split": ddpm_split,
        "num_images": n,
        "indices": [int(i) for i in dip["indices"][:n]] if "indices" in dip else None,
        "sigma_model": sigma,
        "residual": measured,
        "t_nominal": t_nominal,
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
            t_matched=np.asarray(t_matched, np.int32), **res,
        )  # fmt: skip
        mean = table["psnr_db"]
        labels = list(per_image)
        cols = [
            ("clean", quantize(clean)),
            (f"noisy\n{mean[labels[0]]:.1f} dB", quantize(noisy)),
            (f"DIP\n{mean[labels[1]]:.1f} dB", quantize(restored)),
            (f"DDPM one-step\n(t*={t_star}) {mean[labels[2]]:.1f}", quantize(res["one_step"][0])),
            (f"DDPM iterative\n(t*={t_star}) {mean[labels[3]]:.1f}", quantize(res["iterative"][0])),
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
        logging.info("%sWrote %s/dip_prior.{json,md,png,npz}", markdown(table), out)
    return table


OLD_FLAGS = {  # the former `python -m diffusion_jax.dip_prior` flags -> today's flags
    "--ddpm_config": "--config",
    "--ddpm_workdir": "--workdir",
    "--checkpoint": "--checkpoint",
    "--dip_workdir": "--config.dip_prior.dip_workdir",
    "--t_starts": "--config.dip_prior.t_starts",
    "--stride": "--config.dip_prior.stride",
    "--eta": "--config.dip_prior.eta",
    "--dip_output": "--config.dip_prior.dip_output",
    "--seed": "--config.seed",
    "--max_images": "--config.dip_prior.max_images",
}


def mode_command(argv: Sequence[str]) -> str:
    """The `--mode=dip_prior` command for the former entry point's flags (`--out` is dropped:
    the outputs are in <workdir>/dip_prior/; unknown flags are kept as they are)."""
    pairs, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if not eq and i + 1 < len(argv) and name in (*OLD_FLAGS, "--out"):
            value, i = argv[i + 1], i + 1
        i += 1
        if name == "--out":
            continue
        if name == "--t_starts":
            value = "(" + ",".join(v.strip() for v in value.split(",") if v.strip()) + ",)"
        flag = OLD_FLAGS.get(name, name)
        pairs.append(f"{flag}={value}" if eq or name in OLD_FLAGS else flag)
    return shlex.join(["python", "-m", "diffusion_jax.main", "--mode=dip_prior", *pairs])


def main(argv: Sequence[str] | None = None) -> int:
    """The former entry point: says the command that replaces it and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print(
        "error: python -m diffusion_jax.dip_prior is now a mode of the CLI, with the shared "
        "config loader (config.dip_prior.*) and the outputs in <workdir>/dip_prior/. Run:\n  "
        + mode_command(argv),
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
