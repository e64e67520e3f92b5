"""The images and masks of `--mode=edit`, read and converted to the model's input.

Input images: dataset images by index (`edit.indices` of `edit.split`), or PNG/JPEG files
(`edit.images`) of any size and mode, converted to the model's input thus: EXIF orientation
applied (the first frame of an animated file), 16-bit, 32-bit and float files scaled to 8 bits
(`pixels.to_8bit`, never clipped), transparency composited over black, RGB or ITU-R 601 luma
("L", for 1-channel models), centre-cropped to a square (the shorter side), resized with
Lanczos to image_size, and inverted when `edit.invert_input` says so ("auto": on grey models
when the border is light, since MNIST digits are light on dark). Figures show the file as read
(`Inputs.shown`) beside the converted input.

Masks (`edit.mask`): a built-in shape of `edit.SHAPES`, a black-and-white image file or a .npy
array of 0/1, as keep masks (1 = keep) after `edit.mask_convention`. A file that cannot be read
or does not fit is a `UserError` naming the setting, raised before any weights are read.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from diffusion_jax import data, edit
from diffusion_jax.edit_settings import index_list, setting_error
from diffusion_jax.errors import UserError
from diffusion_jax.pixels import to_8bit

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")  # image masks


@dataclasses.dataclass
class Inputs:
    x: np.ndarray  # float32 [B, H, W, C] in [-1, 1]
    shown: list[np.ndarray] | None  # files as read (uint8 [H, W, 3], letterboxed) or None
    names: list[str]  # row labels
    labels: np.ndarray | None  # dataset labels


def open_image(path: str):
    """An image file as a PIL RGB image: EXIF orientation applied, wide modes scaled to 8 bits,
    transparency over black; unreadable or oversized files are a `UserError`."""
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
        opened = [open_image(p) for p in files]
        x = np.stack([convert_image(im, d.image_size, d.channels, e.invert_input) for im in opened])
        shown = [_letterbox(im, d.image_size) for im in opened]
        names = [os.path.basename(p) for p in files]
        return Inputs(data.to_model_space(x), shown, names, None)
    indices = index_list("indices", e.indices, "image indices")
    size = data.dataset_info(d.dataset).split_sizes.get(e.split)
    if not indices:
        raise setting_error("indices", e.indices, "give at least one index")
    if size is not None and any(not 0 <= i < size for i in indices):
        raise setting_error("indices", e.indices, f"{d.dataset}/{e.split} has images 0..{size - 1}")
    xs, ys = data.read_split(d, e.split)
    if any(not 0 <= i < len(xs) for i in indices):
        raise setting_error(
            "indices", e.indices, f"{d.dataset}/{e.split} has images 0..{len(xs) - 1}"
        )
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
            raise setting_error(
                "mask", spec, f"a .npy mask must have shape ({size}, {size}), got {m.shape}"
            )
    elif os.path.splitext(spec)[1].lower() in MASK_SUFFIXES:
        from PIL import Image

        img = open_image(spec).convert("L").resize((size, size), Image.Resampling.NEAREST)
        m = np.asarray(img)
        if not np.all(np.isin(m, (0, 255))):
            bad = np.unique(m[~np.isin(m, (0, 255))])[:4].tolist()
            raise setting_error(
                "mask",
                spec,
                f"a mask PNG must be black and white (0 and 255 only), found values {bad}",
            )
        m = m // 255
    else:
        raise setting_error(
            "mask", spec, f"use one of {', '.join(edit.SHAPES)}, a .png or a .npy file"
        )
    if not np.all(np.isin(m, (0, 1))):
        raise setting_error("mask", spec, "mask values must be 0 or 1")
    if m.min() == m.max():
        raise setting_error(
            "mask", spec, "the mask is all one value: nothing to keep or nothing to fill"
        )
    m = m.astype(np.float32)
    keep = 1.0 - m if e.mask_convention == "fill" else m
    return np.broadcast_to(keep[None, :, :, None], (batch, size, size, 1)).copy(), name
