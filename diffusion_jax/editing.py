"""`--mode=edit`: the toolbox of `diffusion_jax.edit` on a training workdir's EMA weights.

`config.edit.kind` picks one of KINDS; every setting is a field of `config.edit` (see
`config.py`). Everything a user can get wrong (kind, classes, start levels, masks, image files,
indices) is checked before the weights are read, and nothing is written unless the edit ran:
figures and `<kind>.npz` (uint8 images) land in `workdir/edit/` at the end.

Input images: dataset images by index (`edit.indices` of `edit.split`), or PNG/JPEG files
(`edit.images`) of any size and mode, converted to the model's input thus: EXIF orientation
applied (the first frame of an animated file), 16-bit, 32-bit and float files scaled to 8 bits
(`pixels.to_8bit`, never clipped), transparency composited over black, RGB or ITU-R 601 luma
("L", for 1-channel models), centre-cropped to a square (the shorter side), resized with
Lanczos to image_size, and inverted when `edit.invert_input` says so ("auto": on grey models
when the border is light, since MNIST digits are light on dark). Figures show the file as read
beside the converted input.

Timesteps: the T-dependent settings (noise_levels, stride, inpaint_stride, i_start,
translate_i_start) default to "auto" (0, or () for the tuples, or -1 for translate_i_start),
which `resolve_defaults` fills in (logged) with the demos of a T = 1000 model (noise levels
250/500/750, stride 30 = 34 strided steps, inpaint stride 4 = 250 levels, SDEdit starts on the
34-step grid) scaled to the model's T: noise levels at the same fractions of T, strides giving
the same number of steps, start indices at the same fractions of the grid. A value the user
sets is used as given (also one equal to a T = 1000 demo value), and refused naming the
setting if it does not fit T.

Randomness: image i of a run has the key `fold_in(fold_in(PRNGKey(seed), EDIT_STREAM), i)`
(`samplers.image_keys`), the same in every column of a figure and in the PSNR table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from diffusion_jax import data, diffusion, edit, images, parallel, samplers, sampling, writers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import psnr, quantize, to_8bit

EDIT_STREAM = 5
OUTPUT_DIR = "edit"
KINDS = ("denoise", "sdedit", "inpaint", "translate", "anagram", "hybrid")
NEEDS_CLASSES = ("translate", "anagram", "hybrid")
PSNR_BATCH = 250
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")  # image masks
REFERENCE_T = 1000  # the num_timesteps the demos of results/applications.md were made for
# The T-dependent edit settings' demo values at T = REFERENCE_T. In config.py these settings
# default to AUTO (0, (), or -1 for translate_i_start, where 0 is a valid start): "the demo
# value scaled to the model's T", filled in by `resolve_defaults`.
REFERENCE = {
    "noise_levels": (250, 500, 750),
    "stride": 30,  # 34 steps 990 .. 0
    "inpaint_stride": 4,  # RePaint's 250 levels
    "i_start": (1, 3, 5, 7, 10, 20),  # indices into the 34-step grid
    "translate_i_start": 10,
}
AUTO = {
    "noise_levels": (),
    "stride": 0,
    "inpaint_stride": 0,
    "i_start": (),
    "translate_i_start": -1,
}


# ------------------------------------------------------------------------------ defaults


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, not Python's half to even


def _is_auto(e, name: str) -> bool:
    v, auto = e[name], AUTO[name]
    if isinstance(auto, tuple):
        return isinstance(v, (tuple, list)) and len(v) == 0
    return type(v) is int and v == auto


def resolve_defaults(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """A copy of `config` whose T-dependent edit settings left at AUTO hold the T = 1000 demos
    (`REFERENCE`) scaled to `config.diffusion.num_timesteps` (see the module doc), and one note
    per setting filled in (empty when none was AUTO).

    For T = 300: noise_levels (75, 150, 225), stride 9 (34 steps, 297 .. 0), inpaint_stride 1
    (300 levels); i_start and translate_i_start are the demo's (1, 3, 5, 7, 10, 20) and 10
    while the strided grid has 34 steps, else the same fractions of the grid. A value the user
    sets is kept as given, whatever it is (`--config.edit.stride=30` on T = 300 is stride 30);
    `_validate` refuses it if it does not fit T.
    """
    config = config.copy_and_resolve_references()
    e = config.edit
    num_t = int(config.diffusion.num_timesteps)
    notes: list[str] = []

    def put(name: str, value) -> None:
        notes.append(f"config.edit.{name}={value!r}")
        e[name] = value

    if num_t >= 1:
        r = num_t / REFERENCE_T
        if _is_auto(e, "noise_levels"):
            levels = {min(num_t - 1, _round(t * r)) for t in REFERENCE["noise_levels"]}
            put("noise_levels", tuple(sorted(levels)))
        for name in ("stride", "inpaint_stride"):
            if _is_auto(e, name):
                put(name, max(1, _round(REFERENCE[name] * r)))
    if isinstance(e.stride, int) and 1 <= e.stride <= num_t:
        n = len(edit.strided_timesteps(num_t, e.stride))
        ref_n = len(edit.strided_timesteps(REFERENCE_T, REFERENCE["stride"]))  # 34
        if _is_auto(e, "i_start"):
            starts = {min(n - 1, _round(i * n / ref_n)) for i in REFERENCE["i_start"]}
            put("i_start", tuple(sorted(starts)))
        if _is_auto(e, "translate_i_start"):
            i = REFERENCE["translate_i_start"]
            put("translate_i_start", min(n - 1, _round(i * n / ref_n)))
    if notes:
        notes.insert(
            0, f"edit settings left at auto (the T={REFERENCE_T} demos scaled to T={num_t})"
        )
    return config, notes


# ---------------------------------------------------------------------------------- checks


def _fail(setting: str, value, why: str) -> UserError:
    return UserError(f"config.edit.{setting}={value!r}: {why}")


def _numbers(e, setting: str, kind: type) -> list:
    """The tuple setting `setting` as a list of `kind` (int or float). A value the command line
    could not parse (config_flags then keeps its text: `--config.edit.strength=(nan,)` is the
    tuple `('(nan,)',)`), a non-integer for an int setting or a non-finite number is refused."""
    values = e[setting]
    items = values if isinstance(values, (tuple, list)) else (values,)
    example = "(250, 500)" if kind is int else "(0.5, 1.0)"
    why = f"give {'integers' if kind is int else 'finite numbers'} like {example}"
    out = []
    for v in items:
        if isinstance(v, bool):
            raise _fail(setting, values, why)
        try:
            number = float(v) if kind is float else int(str(v).strip())
        except ValueError:
            raise _fail(setting, values, why) from None
        if not math.isfinite(number):
            raise _fail(setting, values, why)
        out.append(number)
    return out


def _check_kernel(e, setting: str, size: int) -> int:
    """An odd kernel size whose blur fits `size` x `size` images (reflected borders)."""
    k = e[setting]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise _fail(setting, k, "must be a positive odd integer")
    if k // 2 >= size:
        raise _fail(setting, k, f"is too large for {size}x{size} images: at most {2 * size - 1}")
    return k


def _int_list(setting: str, text) -> list[int]:
    """ "0-7" / "3,5,9" / (1, 2) -> ints."""
    if isinstance(text, (tuple, list)):
        parts = [str(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
    out = []
    for p in parts:
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", p)
        if not m:
            raise _fail(setting, text, "give integers like '0-7' or '3,5,9'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out += list(range(lo, hi + 1))
    return out


def _check_class(setting: str, value: int, num_classes: int) -> int:
    if not 0 <= value < num_classes:
        raise _fail(setting, value, f"classes are 0..{num_classes - 1} for this model")
    return value


def _pairs(e, num_classes: int) -> list[tuple[int, int, str]]:
    out = []
    for part in [p for p in str(e.pairs).split(";") if p.strip()]:
        items = [s.strip() for s in part.split(",")]
        if len(items) not in (2, 3):
            raise _fail("pairs", e.pairs, "give class pairs 'a,b;c,d' (optionally 'a,b,view')")
        try:
            a, b = int(items[0]), int(items[1])
        except ValueError:
            raise _fail("pairs", e.pairs, "classes must be integers") from None
        view = items[2] if len(items) == 3 else e.view
        if view not in edit.VIEWS:
            raise _fail("view", view, f"use one of {', '.join(edit.VIEWS)}")
        out.append(
            (_check_class("pairs", a, num_classes), _check_class("pairs", b, num_classes), view)
        )
    if not out:
        raise _fail("pairs", e.pairs, "give at least one pair 'a,b'")
    return out


@dataclasses.dataclass
class Inputs:
    x: np.ndarray  # float32 [B, H, W, C] in [-1, 1]
    shown: list[np.ndarray] | None  # files as read (uint8 [H, W, 3], letterboxed) or None
    names: list[str]  # row labels
    labels: np.ndarray | None  # dataset labels


def _starts(e, num_timesteps: int) -> list[tuple[int, str]]:
    """(i_start, column label) per SDEdit column, from edit.strength or edit.i_start."""
    grid = edit.strided_timesteps(num_timesteps, e.stride)
    n = len(grid)
    out = []
    strengths = _numbers(e, "strength", float)
    if strengths:
        for s in strengths:
            if not 0 < s <= 1:
                raise _fail("strength", s, "strength must be in (0, 1] (diffusers' convention)")
            i = edit.start_index_from_strength(s, n)
            if i >= n:
                raise _fail("strength", s, f"int({n} * strength) = 0 steps: nothing to denoise")
            out.append((i, f"strength {s:g}\n(i={i}, t={int(grid[i])})"))
    else:
        for i in _numbers(e, "i_start", int):
            if not 0 <= i < n:
                raise _fail(
                    "i_start",
                    i,
                    f"the start index must be in [0, {n - 1}]: the strided grid "
                    f"(stride {e.stride}) has {n} timesteps, 0 = t {int(grid[0])} is the noisiest",
                )
            out.append((int(i), f"i_start {int(i)}\n(t={int(grid[int(i)])})"))
    if not out:
        raise _fail("i_start", tuple(e.i_start), "give at least one start")
    return out


def _validate(config: ml_collections.ConfigDict) -> dict:
    """Every edit setting checked without reading weights or data; returns parsed values."""
    e = config.edit
    num_classes = int(config.model.num_classes)
    num_t = int(config.diffusion.num_timesteps)
    if e.kind not in KINDS:
        raise _fail("kind", e.kind, f"use one of {', '.join(KINDS)}")
    if e.kind in NEEDS_CLASSES and num_classes <= 0:
        raise UserError(
            f"--config.edit.kind={e.kind} needs a class-conditional model, but this config has "
            "model.num_classes=0 (unconditional); use kind=denoise, sdedit or inpaint here, or "
            "a class-conditional workdir (e.g. configs/mnist_cond.py)."
        )
    if int(e.label) >= 0 and e.kind in ("sdedit", "inpaint"):
        if num_classes <= 0:
            raise _fail(
                "label",
                e.label,
                "class guidance needs a class-conditional model "
                "(model.num_classes=0 here); use label=-1",
            )
        _check_class("label", int(e.label), num_classes)
    for name in ("stride", "inpaint_stride"):
        v = e[name]
        if not (isinstance(v, int) and 1 <= v <= num_t):
            raise _fail(
                name, v, f"must be an integer in [1, num_timesteps={num_t}] (0 = auto, scaled to T)"
            )
    if not (isinstance(e.guidance, (int, float)) and math.isfinite(e.guidance) and e.guidance >= 0):
        raise _fail("guidance", e.guidance, "must be a finite number >= 0")
    if not (isinstance(e.eta, (int, float)) and 0 <= e.eta <= 1):
        raise _fail("eta", e.eta, "must be in [0, 1]")
    parsed: dict = {}
    if e.kind == "denoise":
        levels = _numbers(e, "noise_levels", int)
        if not levels or any(not 0 <= t < num_t for t in levels):
            raise _fail("noise_levels", tuple(e.noise_levels), f"timesteps must be in [0, {num_t})")
        _check_kernel(e, "blur_kernel", int(config.data.image_size))
        if not (isinstance(e.blur_sigma, (int, float)) and e.blur_sigma > 0):
            raise _fail("blur_sigma", e.blur_sigma, "must be > 0")
        if e.psnr_images < 0:
            raise _fail("psnr_images", e.psnr_images, "must be >= 0")
        parsed["levels"] = levels
    if e.kind == "sdedit":
        parsed["starts"] = _starts(e, num_t)
    if e.kind == "translate":
        n = len(edit.strided_timesteps(num_t, e.stride))
        if not 0 <= int(e.translate_i_start) < n:
            raise _fail(
                "translate_i_start", e.translate_i_start, f"must be in [0, {n - 1}] (-1 = auto)"
            )
        targets = _int_list("targets", e.targets) if str(e.targets).strip() else []
        parsed["targets"] = [_check_class("targets", t, num_classes) for t in targets] or list(
            range(num_classes)
        )
    if e.kind == "inpaint":
        if e.mask_convention not in ("keep", "fill"):
            raise _fail("mask_convention", e.mask_convention, "use 'keep' (1 = keep) or 'fill'")
        if e.jump_length < 1 or e.jump_count < 1:
            raise _fail("jump_length", (e.jump_length, e.jump_count), "j and r must be >= 1")
    if e.kind in ("anagram", "hybrid"):
        parsed["pairs"] = _pairs(e, num_classes)
        if e.samples < 1:
            raise _fail("samples", e.samples, "must be >= 1")
        if e.kind == "hybrid":
            _check_kernel(e, "hybrid_kernel", int(config.data.image_size))
        if e.kind == "hybrid" and not e.hybrid_sigma > 0:
            raise _fail("hybrid_sigma", e.hybrid_sigma, "must be > 0")
    if e.invert_input not in ("auto", True, False):
        raise _fail("invert_input", e.invert_input, "use 'auto', True or False")
    return parsed


# ------------------------------------------------------------------------------- reading


def _open_image(path: str):
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as err:  # PIL refuses to decode this many pixels
        raise UserError(f"cannot read the image file {path}: {err} Give a smaller image.") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable files
        raise UserError(
            f"cannot read the image file {path}: {err}. Give a PNG or JPEG file."
        ) from None
    rgba = to_8bit(img, path).convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _letterbox(img, size: int) -> np.ndarray:
    """The whole picture fit into size x size (grey bars), for showing the file as read."""
    from PIL import Image

    w, h = img.size
    s = size / max(w, h)
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    canvas.paste(small, ((size - small.size[0]) // 2, (size - small.size[1]) // 2))
    return np.asarray(canvas)


def convert_image(img, size: int, channels: int, invert="auto") -> np.ndarray:
    """A PIL RGB image -> the model's uint8 [size, size, channels] (see the module doc)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.convert("L" if channels == 1 else "RGB")
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    x = np.asarray(img, np.uint8).reshape(size, size, channels)
    if invert == "auto":
        ring = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
        invert = channels == 1 and float(ring.mean()) > 127
    return 255 - x if invert else x


def load_inputs(config: ml_collections.ConfigDict) -> Inputs:
    """The images to edit: files (`edit.images`) or dataset images (`edit.indices`)."""
    e, d = config.edit, config.data
    files = [p.strip() for p in str(e.images).split(",") if p.strip()]
    if files:
        opened = [_open_image(p) for p in files]
        x = np.stack([convert_image(im, d.image_size, d.channels, e.invert_input) for im in opened])
        shown = [_letterbox(im, d.image_size) for im in opened]
        names = [os.path.basename(p) for p in files]
        return Inputs(data.to_model_space(x), shown, names, None)
    indices = _int_list("indices", e.indices)
    size = data.dataset_info(d.dataset).split_sizes.get(e.split)
    if not indices:
        raise _fail("indices", e.indices, "give at least one index")
    if size is not None and any(not 0 <= i < size for i in indices):
        raise _fail("indices", e.indices, f"{d.dataset}/{e.split} has images 0..{size - 1}")
    split = data.load_split(
        d.dataset,
        e.split,
        data_dir=d.data_dir,
        image_size=d.image_size,
        channels=d.channels,
        progress=False,
    )
    xs, ys = split.images.reshape(-1, *split.images.shape[2:]), split.labels.reshape(-1)
    if any(not 0 <= i < len(xs) for i in indices):
        raise _fail("indices", e.indices, f"{d.dataset}/{e.split} has images 0..{len(xs) - 1}")
    labels = ys[indices]
    names = [f"#{i} ({int(y)})" for i, y in zip(indices, labels, strict=True)]
    return Inputs(data.to_model_space(xs[indices]), None, names, labels)


def load_mask(config: ml_collections.ConfigDict, batch: int) -> tuple[np.ndarray, str]:
    """The keep mask float32 [B, H, W, 1] (1 = keep) and its name, from `edit.mask`."""
    e, size = config.edit, config.data.image_size
    spec = str(e.mask).strip()
    if spec in edit.SHAPES:
        m = np.stack(
            [edit.builtin_mask(spec, size, index=i, seed=config.seed) for i in range(batch)]
        )
        return m[..., None], spec  # built-in shapes are keep masks already
    name = os.path.splitext(os.path.basename(spec))[0] or "mask"
    if spec.endswith(".npy"):
        try:
            m = np.load(spec)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the mask file {spec}: {err}") from None
        if m.shape != (size, size):
            raise _fail(
                "mask", spec, f"a .npy mask must have shape ({size}, {size}), got {m.shape}"
            )
    elif os.path.splitext(spec)[1].lower() in MASK_SUFFIXES:
        from PIL import Image

        img = _open_image(spec).convert("L").resize((size, size), Image.Resampling.NEAREST)
        m = np.asarray(img)
        if not np.all(np.isin(m, (0, 255))):
            bad = np.unique(m[~np.isin(m, (0, 255))])[:4].tolist()
            raise _fail(
                "mask",
                spec,
                f"a mask PNG must be black and white (0 and 255 only), found values {bad}",
            )
        m = m // 255
    else:
        raise _fail("mask", spec, f"use one of {', '.join(edit.SHAPES)}, a .png or a .npy file")
    if not np.all(np.isin(m, (0, 1))):
        raise _fail("mask", spec, "mask values must be 0 or 1")
    if m.min() == m.max():
        raise _fail("mask", spec, "the mask is all one value: nothing to keep or nothing to fill")
    m = m.astype(np.float32)
    keep = 1.0 - m if e.mask_convention == "fill" else m
    return np.broadcast_to(keep[None, :, :, None], (batch, size, size, 1)).copy(), name


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
        model = nnx.merge(self.graphdef, params)
        prediction, s = self.config.diffusion.prediction, self.schedule

        def fn(x, t, y=None):
            return diffusion.eps_from_output(s, x, t, model(x, t, y), prediction)

        return fn

    def plain_fn(self, params, label: int = -1, guidance: float = 1.0) -> Callable:
        """The unconditional estimate (null label on conditional models), or guided to label."""
        cond = self.cond_fn(params)
        k = self.num_classes
        if not k:
            return lambda x, t: cond(x, t, None)
        if label < 0:
            return lambda x, t: cond(x, t, jnp.full(x.shape[:1], k, jnp.int32))

        def guided(x, t):
            y = jnp.full(x.shape[:1], label, jnp.int32)
            return samplers.classifier_free_guidance(cond, y, guidance, k)(x, t)

        return guided

    def run(self, fn: Callable, *args):
        """jit(fn)(params, *args) as NumPy."""
        return jax.tree.map(np.asarray, jax.jit(fn)(self.params, *args))


def _stream(config) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), EDIT_STREAM)


def _u8(x) -> np.ndarray:
    return quantize(np.asarray(x, np.float32))


# ------------------------------------------------------------------------------ the kinds

Figures = dict[str, Callable[[str], str]]  # file name -> writer(path)
Result = tuple[Figures, dict[str, np.ndarray], dict]


def _input_columns(inp: Inputs) -> list[tuple[str, np.ndarray]]:
    cols = []
    if inp.shown is not None:
        cols.append(("file as read", np.stack(inp.shown)))
        cols.append(("converted (model input)", _u8(inp.x)))
    else:
        cols.append(("original", _u8(inp.x)))
    return cols


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
    figures: Figures = {}
    figures["forward.png"] = lambda p: images.edit_figure(
        p,
        [("x_0", _u8(inp.x))]
        + [(f"x_t, t={t}", _u8(res["noisy"][k])) for k, t in enumerate(levels)],
        row_labels=inp.names,
        title="Forward process q(x_t | x_0)",
    )
    for k, t in enumerate(levels):
        cols = [
            ("original", _u8(inp.x)),
            (f"noisy (t={t})", _u8(res["noisy"][k])),
            (f"iterative\n(stride {e.stride})", _u8(res["iterative"][k])),
            ("one-step", _u8(res["one_step"][k])),
            (f"Gaussian blur\n(k={e.blur_kernel}, σ={e.blur_sigma:g})", _u8(res["blurred"][k])),
        ]
        figures[f"denoise_t{t}.png"] = lambda p, cols=cols, t=t: images.edit_figure(
            p, cols, row_labels=inp.names, title=f"Denoising x_t at t={t} (EMA step {m.step})"
        )
    picks = np.unique(np.round(np.linspace(0, len(chain.timesteps) - 1, 8)).astype(int))
    figures["denoise_steps.png"] = lambda p: images.denoising_figure(
        p,
        _u8(np.clip(chain.trajectory[picks], -1, 1)),
        [int(chain.timesteps[i]) for i in picks],
        _u8(chain.x0_predictions[picks]),
    )
    arrays = {"original": _u8(inp.x), "timesteps": np.asarray(levels, np.int32)}
    arrays.update({k: _u8(v) for k, v in res.items()})
    info = {}
    if e.psnr_images > 0:
        info["psnr"] = psnr_table(m, levels, int(e.psnr_images))
    return figures, arrays, info


def psnr_table(m: Model, levels: list[int], num_images: int) -> dict:
    """Mean PSNR (dB) of blur, one-step and iterative denoising on the first test images."""
    d, e, s = m.config.data, m.config.edit, m.schedule
    split = data.load_split(
        d.dataset,
        "test",
        data_dir=d.data_dir,
        image_size=d.image_size,
        channels=d.channels,
        progress=False,
    )
    xs = data.to_model_space(split.images.reshape(-1, *split.images.shape[2:])[:num_images])
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


def psnr_markdown(table: dict) -> str:
    """The PSNR table as Markdown: one row per t, one column per method."""
    rows = table["psnr_db"]
    methods = list(next(iter(rows.values())))
    lines = ["| t | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t, vals in rows.items():
        lines.append(f"| {t} | " + " | ".join(f"{vals[k]:.2f}" for k in methods) + " |")
    return "\n".join(lines) + "\n"


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
    cols = _input_columns(inp) + [
        (lab, _u8(o)) for (_, lab), o in zip(parsed["starts"], outs, strict=True)
    ]
    guide = f", guided to class {label} (w={e.guidance:g})" if label >= 0 else ""
    figures = {
        "sdedit.png": lambda p: images.edit_figure(
            p,
            cols,
            row_labels=inp.names,
            title=f"SDEdit, stride {e.stride}{guide} (EMA step {m.step})",
        )
    }
    arrays = {
        "inputs": _u8(inp.x),
        "outputs": _u8(np.stack(outs)),
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
    cols = _input_columns(inp) + [(f"-> {c}", _u8(o)) for c, o in zip(targets, outs, strict=True)]
    title = (
        f"Class-guided SDEdit: i_start {i_start} (t={t0}), guidance {e.guidance:g} "
        f"(EMA step {m.step})"
    )
    figures = {
        "translate.png": lambda p: images.edit_figure(p, cols, row_labels=inp.names, title=title)
    }
    arrays = {
        "inputs": _u8(inp.x),
        "outputs": _u8(np.stack(outs)),
        "targets": np.asarray(targets, np.int32),
    }
    return figures, arrays, {}


def _inpaint(m: Model, inp: Inputs, parsed: dict) -> Result:
    e, s = m.config.edit, m.schedule
    keep, name = load_mask(m.config, len(inp.x))
    keys = samplers.image_keys(_stream(m.config), len(inp.x))
    label = int(e.label)

    def fn(params, x0, keep, keys):
        denoise = m.plain_fn(params, label, e.guidance)
        plain = edit.inpaint(denoise, s, x0, keep, keys, stride=e.inpaint_stride, eta=e.eta).samples
        rp = edit.repaint(
            denoise,
            s,
            x0,
            keep,
            keys,
            stride=e.inpaint_stride,
            eta=e.eta,
            jump_length=e.jump_length,
            jump_count=e.jump_count,
        ).samples
        return plain, rp

    plain, rp = m.run(fn, jnp.asarray(inp.x), jnp.asarray(keep), keys)
    masked = inp.x * keep + (1 - keep) * 0.0  # the hole shown mid-grey
    cols = _input_columns(inp) + [
        ("mask (white = keep)", _u8(np.broadcast_to(keep * 2 - 1, inp.x.shape[:3] + (1,)))),
        ("known pixels", _u8(masked)),
        ("replacement", _u8(plain)),
        (f"RePaint\n(j={e.jump_length}, r={e.jump_count})", _u8(rp)),
    ]
    levels = len(edit.strided_timesteps(s.num_timesteps, e.inpaint_stride))
    title = f"Inpainting, {name} mask, {levels} levels (EMA step {m.step})"
    figures = {
        f"inpaint_{name}.png": lambda p: images.edit_figure(
            p, cols, row_labels=inp.names, title=title
        )
    }
    arrays = {
        "inputs": _u8(inp.x),
        "keep_mask": keep.astype(np.uint8),
        "replacement": _u8(plain),
        "repaint": _u8(rp),
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
        cols = [("image", _u8(x)), ("transformed view", _u8(viewed))]
        title = f"Visual anagrams, guidance {e.guidance:g}, stride {e.stride} (EMA step {m.step})"
        figures = {
            "anagram.png": lambda p: images.edit_figure(p, cols, row_labels=names, title=title)
        }
        arrays = {"images": _u8(x), "views": _u8(viewed)}
    else:
        title = (
            f"Hybrid images (low-pass σ={e.hybrid_sigma:g}, k={e.hybrid_kernel}), guidance "
            f"{e.guidance:g} (EMA step {m.step})"
        )
        figures = {
            "hybrid.png": lambda p: images.hybrid_figure(p, _u8(x), row_labels=names, title=title)
        }
        arrays = {"images": _u8(x)}
    arrays["pairs"] = np.asarray([[a, b] for a, b, _ in pairs], np.int32)
    return figures, arrays, {}


# -------------------------------------------------------------------------------- the mode


def _check_method(config: ml_collections.ConfigDict) -> None:
    """Refuses a config (and so its workdir) that is not a DDPM run: the toolbox needs a
    denoise function eps(x_t, t), which only a diffusion model has."""
    method = config.get("method", "ddpm")
    if method != "ddpm":
        raise UserError(
            f"--mode=edit runs the diffusion toolbox on a DDPM workdir; config.method="
            f"{method!r} is not a diffusion model. Give the config and workdir of a DDPM run "
            "(config.method='ddpm', e.g. configs/mnist_cond.py)."
        )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint: str | None = None,
    weights: tuple[nnx.State, int] | None = None,
) -> dict:
    """`--mode=edit`: one `config.edit.kind` on the EMA weights (of `checkpoint` in `workdir`,
    or `weights` = (EMA parameters, step) already loaded); returns the written paths."""
    _check_method(config)
    state_lib.validate_config(config)
    config, notes = resolve_defaults(config)
    if notes:
        logging.info("%s.", "; ".join(notes))
    parsed = _validate(config)
    kind = config.edit.kind
    inp = None
    if kind not in ("anagram", "hybrid"):
        inp = load_inputs(config)
        if kind == "inpaint":
            load_mask(config, len(inp.x))  # fail on a bad mask before reading the weights
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
                f.write(psnr_markdown(info["psnr"]))
        logging.info("Wrote %s", ", ".join(paths.values()))
    parallel.sync("edit_written")
    return paths
