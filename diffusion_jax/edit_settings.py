"""The settings of `--mode=edit` (`config.edit`): the T-scaled defaults and every check.

Everything a user can get wrong (kind, classes, start levels, strides, kernels, pairs, index
lists) is checked here from the config alone, before any weights or data are read
(`edit_workflow.run` calls `validate` first; `edit_inputs` checks the files and masks).

Timesteps: the T-dependent settings (noise_levels, stride, inpaint_stride, i_start,
translate_i_start) default to "auto" (0, or () for the tuples, or -1 for translate_i_start),
which `resolve_defaults` fills in (logged) with the demos of a T = 1000 model (noise levels
250/500/750, stride 30 = 34 strided steps, inpaint stride 4 = 250 levels, SDEdit starts on the
34-step grid) scaled to the model's T: noise levels at the same fractions of T, strides giving
the same number of steps, start indices at the same fractions of the grid. A value the user
sets is used as given (also one equal to a T = 1000 demo value), and refused naming the
setting if it does not fit T.
"""

from __future__ import annotations

import math

import ml_collections

from diffusion_jax import edit
from diffusion_jax.config import parse_index_list
from diffusion_jax.errors import UserError

KINDS = ("denoise", "sdedit", "inpaint", "translate", "anagram", "hybrid")
NEEDS_CLASSES = ("translate", "anagram", "hybrid")
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
    `validate` refuses it if it does not fit T.
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


def setting_error(setting: str, value, why: str) -> UserError:
    """The `UserError` for `config.edit.<setting>=<value>`: why it is refused."""
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
            raise setting_error(setting, values, why)
        try:
            number = float(v) if kind is float else int(str(v).strip())
        except ValueError:
            raise setting_error(setting, values, why) from None
        if not math.isfinite(number):
            raise setting_error(setting, values, why)
        out.append(number)
    return out


def _check_kernel(e, setting: str, size: int) -> int:
    """An odd kernel size whose blur fits `size` x `size` images (reflected borders)."""
    k = e[setting]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise setting_error(setting, k, "must be a positive odd integer")
    if k // 2 >= size:
        raise setting_error(
            setting, k, f"is too large for {size}x{size} images: at most {2 * size - 1}"
        )
    return k


def index_list(setting: str, value, what: str = "integers") -> list[int]:
    """ "0-7" / "3,5,9" / (1, 2) -> ints: `config.edit.<setting>` in the one index-list grammar
    (`config.parse_index_list`)."""
    return parse_index_list(value, f"config.edit.{setting}", what)


def _check_class(setting: str, value: int, num_classes: int) -> int:
    if not 0 <= value < num_classes:
        raise setting_error(setting, value, f"classes are 0..{num_classes - 1} for this model")
    return value


def _pairs(e, num_classes: int) -> list[tuple[int, int, str]]:
    out = []
    for part in [p for p in str(e.pairs).split(";") if p.strip()]:
        items = [s.strip() for s in part.split(",")]
        if len(items) not in (2, 3):
            raise setting_error(
                "pairs", e.pairs, "give class pairs 'a,b;c,d' (optionally 'a,b,view')"
            )
        try:
            a, b = int(items[0]), int(items[1])
        except ValueError:
            raise setting_error("pairs", e.pairs, "classes must be integers") from None
        view = items[2] if len(items) == 3 else e.view
        if view not in edit.VIEWS:
            raise setting_error("view", view, f"use one of {', '.join(edit.VIEWS)}")
        out.append(
            (_check_class("pairs", a, num_classes), _check_class("pairs", b, num_classes), view)
        )
    if not out:
        raise setting_error("pairs", e.pairs, "give at least one pair 'a,b'")
    return out


def _starts(e, num_timesteps: int) -> list[tuple[int, str]]:
    """(i_start, column label) per SDEdit column, from edit.strength or edit.i_start."""
    grid = edit.strided_timesteps(num_timesteps, e.stride)
    n = len(grid)
    out = []
    strengths = _numbers(e, "strength", float)
    if strengths:
        for s in strengths:
            if not 0 < s <= 1:
                raise setting_error(
                    "strength", s, "strength must be in (0, 1] (diffusers' convention)"
                )
            i = edit.start_index_from_strength(s, n)
            if i >= n:
                raise setting_error(
                    "strength", s, f"int({n} * strength) = 0 steps: nothing to denoise"
                )
            out.append((i, f"strength {s:g}\n(i={i}, t={int(grid[i])})"))
    else:
        for i in _numbers(e, "i_start", int):
            if not 0 <= i < n:
                raise setting_error(
                    "i_start",
                    i,
                    f"the start index must be in [0, {n - 1}]: the strided grid "
                    f"(stride {e.stride}) has {n} timesteps, 0 = t {int(grid[0])} is the noisiest",
                )
            out.append((int(i), f"i_start {int(i)}\n(t={int(grid[int(i)])})"))
    if not out:
        raise setting_error("i_start", tuple(e.i_start), "give at least one start")
    return out


def validate(config: ml_collections.ConfigDict) -> dict:
    """Every edit setting checked without reading weights or data; returns parsed values."""
    e = config.edit
    num_classes = int(config.model.num_classes)
    num_t = int(config.diffusion.num_timesteps)
    if e.kind not in KINDS:
        raise setting_error("kind", e.kind, f"use one of {', '.join(KINDS)}")
    if e.kind in NEEDS_CLASSES and num_classes <= 0:
        raise UserError(
            f"--config.edit.kind={e.kind} needs a class-conditional model, but this config has "
            "model.num_classes=0 (unconditional); use kind=denoise, sdedit or inpaint here, or "
            "a class-conditional workdir (e.g. configs/mnist_cond.py)."
        )
    if int(e.label) >= 0 and e.kind in ("sdedit", "inpaint"):
        if num_classes <= 0:
            raise setting_error(
                "label",
                e.label,
                "class guidance needs a class-conditional model "
                "(model.num_classes=0 here); use label=-1",
            )
        _check_class("label", int(e.label), num_classes)
    for name in ("stride", "inpaint_stride"):
        v = e[name]
        if not (isinstance(v, int) and 1 <= v <= num_t):
            raise setting_error(
                name, v, f"must be an integer in [1, num_timesteps={num_t}] (0 = auto, scaled to T)"
            )
    if not (isinstance(e.guidance, (int, float)) and math.isfinite(e.guidance) and e.guidance >= 0):
        raise setting_error("guidance", e.guidance, "must be a finite number >= 0")
    if not (isinstance(e.eta, (int, float)) and 0 <= e.eta <= 1):
        raise setting_error("eta", e.eta, "must be in [0, 1]")
    parsed: dict = {}
    if e.kind == "denoise":
        levels = _numbers(e, "noise_levels", int)
        if not levels or any(not 0 <= t < num_t for t in levels):
            raise setting_error(
                "noise_levels", tuple(e.noise_levels), f"timesteps must be in [0, {num_t})"
            )
        _check_kernel(e, "blur_kernel", int(config.data.image_size))
        if not (isinstance(e.blur_sigma, (int, float)) and e.blur_sigma > 0):
            raise setting_error("blur_sigma", e.blur_sigma, "must be > 0")
        if e.psnr_images < 0:
            raise setting_error("psnr_images", e.psnr_images, "must be >= 0")
        parsed["levels"] = levels
    if e.kind == "sdedit":
        parsed["starts"] = _starts(e, num_t)
    if e.kind == "translate":
        n = len(edit.strided_timesteps(num_t, e.stride))
        if not 0 <= int(e.translate_i_start) < n:
            raise setting_error(
                "translate_i_start", e.translate_i_start, f"must be in [0, {n - 1}] (-1 = auto)"
            )
        targets = index_list("targets", e.targets, "classes") if str(e.targets).strip() else []
        parsed["targets"] = [_check_class("targets", t, num_classes) for t in targets] or list(
            range(num_classes)
        )
    if e.kind == "inpaint":
        if e.mask_convention not in ("keep", "fill"):
            raise setting_error(
                "mask_convention", e.mask_convention, "use 'keep' (1 = keep) or 'fill'"
            )
        if e.jump_length < 1 or e.jump_count < 1:
            raise setting_error(
                "jump_length", (e.jump_length, e.jump_count), "j and r must be >= 1"
            )
    if e.kind in ("anagram", "hybrid"):
        parsed["pairs"] = _pairs(e, num_classes)
        if e.samples < 1:
            raise setting_error("samples", e.samples, "must be >= 1")
        if e.kind == "hybrid":
            _check_kernel(e, "hybrid_kernel", int(config.data.image_size))
        if e.kind == "hybrid" and not e.hybrid_sigma > 0:
            raise setting_error("hybrid_sigma", e.hybrid_sigma, "must be > 0")
    if e.invert_input not in ("auto", True, False):
        raise setting_error("invert_input", e.invert_input, "use 'auto', True or False")
    return parsed


def check_method(config: ml_collections.ConfigDict) -> None:
    """Refuses a config (and so its workdir) that is not a DDPM run: the toolbox needs a
    denoise function eps(x_t, t), which only a diffusion model has."""
    method = config.get("method", "ddpm")
    if method != "ddpm":
        raise UserError(
            f"--mode=edit runs the diffusion toolbox on a DDPM workdir; config.method="
            f"{method!r} is not a diffusion model. Give the config and workdir of a DDPM run "
            "(config.method='ddpm', e.g. configs/mnist_cond.py)."
        )
