"""`--mode=edit`: the toolbox of `diffusion_jax.edit` on a training workdir's EMA weights.

`config.edit.kind` picks one of `edit_settings.KINDS`; every setting is a field of
`config.edit` (see `config.py`). The run, in order: the settings are resolved and checked
(`edit_settings`), the input images and mask read (`edit_inputs`), all before the weights are
read; then one runner per kind computes its arrays under one jit on the EMA weights (`Model`),
and only when it ran are its figures (`edit_figures`) and `<kind>.npz` (uint8 images) written
into `workdir/edit/`, with `psnr.json` / `psnr.md` for the denoising PSNR table.

Randomness: image i of a run has the key `fold_in(fold_in(PRNGKey(seed), EDIT_STREAM), i)`
(`samplers.image_keys`), the same in every column of a figure and in the PSNR table.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from diffusion_jax import (
    data,
    diffusion,
    edit,
    edit_figures,
    edit_inputs,
    edit_settings,
    images,
    parallel,
    samplers,
    sampling,
    writers,
)
from diffusion_jax import state as state_lib
from diffusion_jax.edit_figures import Figures, input_columns, u8
from diffusion_jax.edit_inputs import Inputs
from diffusion_jax.pixels import psnr

EDIT_STREAM = 5
OUTPUT_DIR = "edit"
PSNR_BATCH = 250

Result = tuple[Figures, dict[str, np.ndarray], dict]  # figures, <kind>.npz arrays, extras


# ---------------------------------------------------------------------------- the model


@dataclasses.dataclass
class Model:
    config: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    params: nnx.State
    schedule: diffusion.Schedule
    step: int

    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    def cond_fn(self, params) -> Callable:
        """(x, t, labels or None) -> eps for the given parameters (inside a jit)."""
        return state_lib.eps_fn_for(self.config, self.graphdef, params, self.schedule)

    def plain_fn(self, params, label: int = -1, guidance: float = 1.0) -> Callable:
        """The unconditional estimate (null label on conditional models), or guided to label."""
        labels = None if label < 0 else label
        return state_lib.labelled_fn(self.cond_fn(params), self.num_classes, labels, guidance)

    def run(self, fn: Callable, *args):
        """jit(fn)(params, *args) as NumPy."""
        return jax.tree.map(np.asarray, jax.jit(fn)(self.params, *args))


def _stream(config) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), EDIT_STREAM)


# ------------------------------------------------------------------------------ the kinds


def _denoise(m: Model, inp: Inputs, parsed: dict) -> Result:
    e, s = m.config.edit, m.schedule
    levels = parsed["levels"]
    keys = samplers.image_keys(_stream(m.config), len(inp.x))

    def fn(params, x0, keys):
        denoise = m.plain_fn(params)
        xt = edit.forward_process(s, x0, levels, keys)
        out = {"noisy": xt, "one_step": [], "iterative": [], "blurred": []}
        chains = []
        for k, t in enumerate(levels):
            out["one_step"].append(edit.one_step_denoise(denoise, s, xt[k], t))
            chain = edit.iterative_denoise(
                denoise, s, xt[k], t, keys, stride=e.stride, eta=e.eta, record=k == len(levels) - 1
            )
            out["iterative"].append(chain.samples)
            out["blurred"].append(
                jnp.clip(edit.gaussian_blur(xt[k], e.blur_kernel, e.blur_sigma), -1, 1)
            )
            chains.append(chain)
        return {k: jnp.stack(v) for k, v in out.items()}, chains[-1]

    res, chain = m.run(fn, jnp.asarray(inp.x), keys)
    figures = edit_figures.denoise(inp.x, inp.names, levels, res, chain, e, m.step)
    arrays = {"original": u8(inp.x), "timesteps": np.asarray(levels, np.int32)}
    arrays.update({k: u8(v) for k, v in res.items()})
    info = {}
    if e.psnr_images > 0:
        info["psnr"] = psnr_table(m, levels, int(e.psnr_images))
    return figures, arrays, info


def psnr_table(m: Model, levels: list[int], num_images: int) -> dict:
    """Mean PSNR (dB) of blur, one-step and iterative denoising on the first test images."""
    e, s = m.config.edit, m.schedule
    xs = data.to_model_space(data.read_split(m.config.data, "test")[0][:num_images])
    num_images = len(xs)
    stream = _stream(m.config)

    def fn(params, x0, keys):
        denoise = m.plain_fn(params)
        xt = edit.forward_process(s, x0, levels, keys)
        rows = []
        for k, t in enumerate(levels):
            a = s.sqrt_alphas_cumprod[t]
            rows.append(
                jnp.stack(
                    [
                        jnp.clip(xt[k], -1, 1),
                        jnp.clip(edit.gaussian_blur(xt[k], e.blur_kernel, e.blur_sigma), -1, 1),
                        jnp.clip(edit.gaussian_blur(xt[k] / a, e.blur_kernel, e.blur_sigma), -1, 1),
                        edit.one_step_denoise(denoise, s, xt[k], t),
                        edit.iterative_denoise(
                            denoise, s, xt[k], t, keys, stride=e.stride, eta=e.eta
                        ).samples,
                    ]
                )
            )
        return jnp.stack(rows)

    compiled = jax.jit(fn)
    sums = None
    for start in range(0, num_images, PSNR_BATCH):
        x0 = xs[start : start + PSNR_BATCH]
        keys = samplers.image_keys(stream, len(x0), start=start)
        out = np.asarray(compiled(m.params, jnp.asarray(x0), keys))
        p = np.stack(
            [[psnr(out[k, j], x0) for j in range(out.shape[1])] for k in range(len(levels))]
        )
        sums = p.sum(-1) if sums is None else sums + p.sum(-1)
    methods = ["noisy x_t", "blur(x_t)", "blur(x_t / sqrt(abar_t))", "one-step", "iterative"]
    mean = sums / num_images
    return {
        "num_images": num_images,
        "step": m.step,
        "stride": e.stride,
        "eta": e.eta,
        "blur": {"kernel": e.blur_kernel, "sigma": e.blur_sigma},
        "psnr_db": {
            str(t): dict(zip(methods, map(float, mean[k]), strict=True))
            for k, t in enumerate(levels)
        },
    }


def _sdedit(m: Model, inp: Inputs, parsed: dict) -> Result:
    e, s = m.config.edit, m.schedule
    keys = samplers.image_keys(_stream(m.config), len(inp.x))
    label = int(e.label)
    outs = []
    for i_start, _ in parsed["starts"]:

        def fn(params, x0, keys, i_start=i_start):
            denoise = m.plain_fn(params, label, e.guidance)
            return edit.sdedit(
                denoise, s, x0, keys, i_start=i_start, stride=e.stride, eta=e.eta
            ).samples

        outs.append(m.run(fn, jnp.asarray(inp.x), keys))
    cols_in = input_columns(inp.x, inp.shown)
    figures = edit_figures.sdedit(cols_in, inp.names, parsed["starts"], outs, e, label, m.step)
    arrays = {
        "inputs": u8(inp.x),
        "outputs": u8(np.stack(outs)),
        "i_start": np.asarray([i for i, _ in parsed["starts"]], np.int32),
    }
    return figures, arrays, {}


def _translate(m: Model, inp: Inputs, parsed: dict) -> Result:
    e, s = m.config.edit, m.schedule
    keys = samplers.image_keys(_stream(m.config), len(inp.x))
    i_start, targets = int(e.translate_i_start), parsed["targets"]

    def fn(params, x0, keys, target):
        labels = jnp.full(x0.shape[:1], target, jnp.int32)
        return edit.translate(
            m.cond_fn(params),
            s,
            x0,
            labels,
            keys,
            guidance=e.guidance,
            num_classes=m.num_classes,
            i_start=i_start,
            stride=e.stride,
            eta=e.eta,
        ).samples

    compiled = jax.jit(fn)
    outs = [np.asarray(compiled(m.params, jnp.asarray(inp.x), keys, jnp.int32(c))) for c in targets]
    t0 = int(edit.strided_timesteps(s.num_timesteps, e.stride)[i_start])
    cols_in = input_columns(inp.x, inp.shown)
    figures = edit_figures.translate(cols_in, inp.names, targets, outs, e, i_start, t0, m.step)
    arrays = {
        "inputs": u8(inp.x),
        "outputs": u8(np.stack(outs)),
        "targets": np.asarray(targets, np.int32),
    }
    return figures, arrays, {}


def _inpaint(m: Model, inp: Inputs, parsed: dict) -> Result:
    e, s = m.config.edit, m.schedule
    keep, name = edit_inputs.load_mask(m.config, len(inp.x))
    keys = samplers.image_keys(_stream(m.config), len(inp.x))
    label = int(e.label)

    def fn(params, x0, keep, keys):
        denoise = m.plain_fn(params, label, e.guidance)
        steps = {"stride": e.inpaint_stride, "eta": e.eta}
        jumps = {"jump_length": e.jump_length, "jump_count": e.jump_count}
        plain = edit.inpaint(denoise, s, x0, keep, keys, **steps).samples
        rp = edit.repaint(denoise, s, x0, keep, keys, **steps, **jumps).samples
        return plain, rp

    plain, rp = m.run(fn, jnp.asarray(inp.x), jnp.asarray(keep), keys)
    levels = len(edit.strided_timesteps(s.num_timesteps, e.inpaint_stride))
    cols_in = input_columns(inp.x, inp.shown)
    figures = edit_figures.inpaint(
        cols_in, inp.names, inp.x, keep, plain, rp, e, name, levels, m.step
    )
    arrays = {
        "inputs": u8(inp.x),
        "keep_mask": keep.astype(np.uint8),
        "replacement": u8(plain),
        "repaint": u8(rp),
    }
    return figures, arrays, {}


def _illusion(m: Model, parsed: dict, kind: str) -> Result:
    e, s, cfg = m.config.edit, m.schedule, m.config
    n, pairs = int(e.samples), parsed["pairs"]
    shape = (n, cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
    stream = _stream(cfg)
    outs = []
    for p, (a, b, view) in enumerate(pairs):
        keys = samplers.image_keys(stream, n, start=p * n)

        def fn(params, keys, a=a, b=b, view=view):
            ya, yb = jnp.full((n,), a, jnp.int32), jnp.full((n,), b, jnp.int32)
            if kind == "anagram":
                den = edit.anagram_fn(
                    m.cond_fn(params),
                    ["identity", view],
                    [ya, yb],
                    guidance=e.guidance,
                    num_classes=m.num_classes,
                )
            else:
                den = edit.hybrid_fn(
                    m.cond_fn(params),
                    ya,
                    yb,
                    guidance=e.guidance,
                    num_classes=m.num_classes,
                    kernel_size=e.hybrid_kernel,
                    sigma=e.hybrid_sigma,
                )
            return edit.generate(den, s, shape, keys, stride=e.stride, eta=e.eta).samples

        outs.append(m.run(fn, keys))
    x = np.concatenate(outs)
    names = [
        f"{a} | {view}: {b}" if kind == "anagram" else f"low {a}, high {b}"
        for a, b, view in pairs
        for _ in range(n)
    ]
    if kind == "anagram":
        viewed = np.concatenate(
            [
                np.asarray(edit.VIEWS[v][0](jnp.asarray(o)))
                for o, (*_, v) in zip(outs, pairs, strict=True)
            ]
        )
        figures = edit_figures.anagram(x, viewed, names, e, m.step)
        arrays = {"images": u8(x), "views": u8(viewed)}
    else:
        figures = edit_figures.hybrid(x, names, e, m.step)
        arrays = {"images": u8(x)}
    arrays["pairs"] = np.asarray([[a, b] for a, b, _ in pairs], np.int32)
    return figures, arrays, {}


# -------------------------------------------------------------------------------- the mode


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint: str | None = None,
    weights: tuple[nnx.State, int] | None = None,
) -> dict:
    """`--mode=edit`: one `config.edit.kind` on the EMA weights (of `checkpoint` in `workdir`,
    or `weights` = (EMA parameters, step) already loaded); returns the written paths."""
    edit_settings.check_method(config)
    state_lib.validate_config(config)
    config, notes = edit_settings.resolve_defaults(config)
    if notes:
        logging.info("%s.", "; ".join(notes))
    parsed = edit_settings.validate(config)
    kind = config.edit.kind
    inp = None
    if kind not in ("anagram", "hybrid"):
        inp = edit_inputs.load_inputs(config)
        if kind == "inpaint":
            edit_inputs.load_mask(config, len(inp.x))  # fail on a bad mask before the weights
    mesh = parallel.make_mesh()
    params, step = weights or sampling.load_ema_params(config, workdir, mesh, checkpoint)
    m = Model(config, state_lib.graphdef_of(config), params, state_lib.build_schedule(config), step)
    logging.info("Editing (%s) with the EMA parameters of step %d.", kind, step)
    if kind == "denoise":
        figures, arrays, info = _denoise(m, inp, parsed)
    elif kind == "sdedit":
        figures, arrays, info = _sdedit(m, inp, parsed)
    elif kind == "translate":
        figures, arrays, info = _translate(m, inp, parsed)
    elif kind == "inpaint":
        figures, arrays, info = _inpaint(m, inp, parsed)
    else:
        figures, arrays, info = _illusion(m, parsed, kind)

    out_dir = os.path.join(workdir, OUTPUT_DIR)
    paths = {name: os.path.join(out_dir, name) for name in figures}
    paths[f"{kind}.npz"] = os.path.join(out_dir, f"{kind}.npz")
    if parallel.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        for name, write in figures.items():
            write(paths[name])
        images.save_npz(paths[f"{kind}.npz"], **arrays, step=np.int64(step))
        if "psnr" in info:
            paths["psnr.json"] = os.path.join(out_dir, "psnr.json")
            writers.write_json(paths["psnr.json"], info["psnr"], indent=1)
            paths["psnr.md"] = os.path.join(out_dir, "psnr.md")
            with open(paths["psnr.md"], "w") as f:
                f.write(edit_figures.psnr_markdown(info["psnr"]))
        logging.info("Wrote %s", ", ".join(paths.values()))
    parallel.sync("edit_written")
    return paths
