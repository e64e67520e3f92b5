"""The figures and the PSNR table of `--mode=edit`: one labelled grid (or more) per kind.

Each figure function gets the arrays an edit computed (model space, NumPy) and returns
`Figures`, {file name: writer(path)}: nothing is drawn until `edit_workflow.run` writes them
(main process, after the edit ran). The pixels shown are `u8` of the same arrays the workflow
saves to `<kind>.npz`. Rows are images (`names`), columns are the inputs (`input_columns`: the
file as read beside the converted input, or the dataset image) followed by the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from diffusion_jax import images
from diffusion_jax.pixels import quantize

Figures = dict[str, Callable[[str], str]]  # file name -> writer(path)
Columns = list[tuple[str, np.ndarray]]  # (label, uint8 [B, H, W, C]) per column


def u8(x) -> np.ndarray:
    """Model-space images (NumPy or JAX) as uint8 pixels: `pixels.quantize` of float32."""
    return quantize(np.asarray(x, np.float32))


def input_columns(x: np.ndarray, shown: list[np.ndarray] | None) -> Columns:
    """The inputs' columns: the files as read and the converted model input, or the dataset
    images (`shown` None)."""
    cols = []
    if shown is not None:
        cols.append(("file as read", np.stack(shown)))
        cols.append(("converted (model input)", u8(x)))
    else:
        cols.append(("original", u8(x)))
    return cols


def denoise(x, names, levels, res: dict, chain, e, step: int) -> Figures:
    """forward.png (x_0 and x_t per level), denoise_t<t>.png per level (noisy | iterative |
    one-step | blur) and denoise_steps.png (the last level's strided chain)."""
    figures: Figures = {}
    figures["forward.png"] = lambda p: images.edit_figure(
        p,
        [("x_0", u8(x))] + [(f"x_t, t={t}", u8(res["noisy"][k])) for k, t in enumerate(levels)],
        row_labels=names,
        title="Forward process q(x_t | x_0)",
    )
    for k, t in enumerate(levels):
        cols = [
            ("original", u8(x)),
            (f"noisy (t={t})", u8(res["noisy"][k])),
            (f"iterative\n(stride {e.stride})", u8(res["iterative"][k])),
            ("one-step", u8(res["one_step"][k])),
            (f"Gaussian blur\n(k={e.blur_kernel}, σ={e.blur_sigma:g})", u8(res["blurred"][k])),
        ]
        figures[f"denoise_t{t}.png"] = lambda p, cols=cols, t=t: images.edit_figure(
            p, cols, row_labels=names, title=f"Denoising x_t at t={t} (EMA step {step})"
        )
    picks = np.unique(np.round(np.linspace(0, len(chain.timesteps) - 1, 8)).astype(int))
    figures["denoise_steps.png"] = lambda p: images.denoising_figure(
        p,
        u8(np.clip(chain.trajectory[picks], -1, 1)),
        [int(chain.timesteps[i]) for i in picks],
        u8(chain.x0_predictions[picks]),
    )
    return figures


def psnr_markdown(table: dict) -> str:
    """The PSNR table as Markdown: one row per t, one column per method."""
    rows = table["psnr_db"]
    methods = list(next(iter(rows.values())))
    lines = ["| t | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t, vals in rows.items():
        lines.append(f"| {t} | " + " | ".join(f"{vals[k]:.2f}" for k in methods) + " |")
    return "\n".join(lines) + "\n"


def sdedit(cols_in: Columns, names, starts, outs, e, label: int, step: int) -> Figures:
    """sdedit.png: the inputs, then one column per start (`starts`: (i_start, label))."""
    cols = cols_in + [(lab, u8(o)) for (_, lab), o in zip(starts, outs, strict=True)]
    guide = f", guided to class {label} (w={e.guidance:g})" if label >= 0 else ""
    title = f"SDEdit, stride {e.stride}{guide} (EMA step {step})"
    return {"sdedit.png": lambda p: images.edit_figure(p, cols, row_labels=names, title=title)}


def translate(cols_in: Columns, names, targets, outs, e, i_start: int, t0: int, step: int):
    """translate.png: the inputs, then one column per target class."""
    cols = cols_in + [(f"-> {c}", u8(o)) for c, o in zip(targets, outs, strict=True)]
    title = (
        f"Class-guided SDEdit: i_start {i_start} (t={t0}), guidance {e.guidance:g} "
        f"(EMA step {step})"
    )
    return {"translate.png": lambda p: images.edit_figure(p, cols, row_labels=names, title=title)}


def inpaint(
    cols_in: Columns, names, x, keep, plain, repainted, e, mask_name: str, levels: int, step: int
) -> Figures:
    """inpaint_<mask>.png: the inputs, the mask, the known pixels, replacement and RePaint."""
    masked = x * keep + (1 - keep) * 0.0  # the hole shown mid-grey
    cols = cols_in + [
        ("mask (white = keep)", u8(np.broadcast_to(keep * 2 - 1, x.shape[:3] + (1,)))),
        ("known pixels", u8(masked)),
        ("replacement", u8(plain)),
        (f"RePaint\n(j={e.jump_length}, r={e.jump_count})", u8(repainted)),
    ]
    title = f"Inpainting, {mask_name} mask, {levels} levels (EMA step {step})"
    return {
        f"inpaint_{mask_name}.png": lambda p: images.edit_figure(
            p, cols, row_labels=names, title=title
        )
    }


def anagram(x, viewed, names: Sequence[str], e, step: int) -> Figures:
    """anagram.png: each image and its transformed view."""
    cols = [("image", u8(x)), ("transformed view", u8(viewed))]
    title = f"Visual anagrams, guidance {e.guidance:g}, stride {e.stride} (EMA step {step})"
    return {"anagram.png": lambda p: images.edit_figure(p, cols, row_labels=names, title=title)}


def hybrid(x, names: Sequence[str], e, step: int) -> Figures:
    """hybrid.png: each hybrid image seen up close and from afar."""
    title = (
        f"Hybrid images (low-pass σ={e.hybrid_sigma:g}, k={e.hybrid_kernel}), guidance "
        f"{e.guidance:g} (EMA step {step})"
    )
    return {"hybrid.png": lambda p: images.hybrid_figure(p, u8(x), row_labels=names, title=title)}
