"""Pictures of a run: sample grids, the denoising process, the loss curve.

Inputs are uint8 NHWC (quantize model-space floats with `diffusion_jax.pixels.quantize` first, the
one rounding rule of the project). Figures use matplotlib's object API with the Agg canvas, so
nothing here touches a display or the global pyplot state.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from diffusion_jax.records import replace_file


def _check_uint8(images: np.ndarray, ndim: int = 4) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != ndim or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images with {ndim} dims and 1 or 3 channels, got "
            f"{images.dtype} {images.shape}"
        )
    return images


def grid(images: np.ndarray, cols: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 [N, H, W, C] into one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    images = _check_uint8(images)
    n, h, w, c = images.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = images[i]
    return out


def _write(path: str, save: Callable[[BinaryIO], object]) -> str:
    """`save(file)` into memory, then the bytes to `path` atomically (`replace_file`): a signal
    or a crash while writing leaves the old file or none, never a truncated one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    buffer = io.BytesIO()
    save(buffer)
    replace_file(path, buffer.getvalue())
    return path


def _format(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower() or "png"


def save_npz(path: str, **arrays: np.ndarray) -> str:
    """`np.savez(path, **arrays)`, written atomically (see `_write`)."""
    return _write(path, lambda f: np.savez(f, **arrays))


def save_png(path: str, image: np.ndarray) -> str:
    """Write one uint8 [H, W, C] image (C = 1 is saved as greyscale), atomically."""
    image = _check_uint8(image, ndim=3)
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return _write(path, lambda f: img.save(f, format=_format(path)))


def save_grid(path: str, images: np.ndarray, cols: int = 8) -> str:
    """The first cols*cols images as a square grid PNG (8x8 by default)."""
    return save_png(path, grid(np.asarray(images)[: cols * cols], cols=cols))


def _panel(ax, frames: np.ndarray, timesteps: Sequence[int], title: str) -> None:
    """frames uint8 [S, B, H, W, C] -> one axis: rows = samples, columns = timesteps."""
    s, b, h, w, c = frames.shape
    tiles = frames.transpose(1, 0, 2, 3, 4).reshape(b * s, h, w, c)  # row-major: sample, step
    pad = 2
    image = grid(tiles, cols=s, pad=pad)
    ax.imshow(image[..., 0] if c == 1 else image, cmap="gray" if c == 1 else None)
    ax.set_xticks([pad + k * (w + pad) + w / 2 for k in range(s)])
    ax.set_xticklabels([f"t={int(t)}" for t in timesteps], fontsize=8)
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def denoising_figure(
    path: str,
    trajectory: np.ndarray,
    timesteps: Sequence[int],
    x0_predictions: np.ndarray | None = None,
) -> str:
    """The reverse process as a PNG: rows = samples, columns = x_t at the labelled timesteps.

    `trajectory` is uint8 [S, B, H, W, C] (S recorded timesteps, noisiest first); with
    `x0_predictions` (same shape) a second panel shows the model's x_0 estimate at each step.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trajectory = np.asarray(trajectory)
    if trajectory.ndim != 5 or trajectory.dtype != np.uint8:
        raise ValueError(f"trajectory must be uint8 [S, B, H, W, C], got {trajectory.shape}")
    if len(timesteps) != trajectory.shape[0]:
        raise ValueError(f"{len(timesteps)} timesteps for {trajectory.shape[0]} recorded steps")
    s, b = trajectory.shape[:2]
    panels = [(trajectory, "x_t (the sample being denoised)")]
    if x0_predictions is not None:
        panels.append((np.asarray(x0_predictions), "predicted x_0 at each step"))
    fig = Figure(figsize=(0.9 * s * len(panels) + 0.5, 0.9 * b + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    for k, (frames, title) in enumerate(panels):
        _panel(fig.add_subplot(1, len(panels), k + 1), frames, timesteps, title)
    fig.tight_layout()
    return _write(path, lambda f: fig.savefig(f, format=_format(path)))


Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _line_plot(series: Series, path: str, xlabel: str, ylabel: str) -> str:
    """Lines on a log-scale y axis, written as PNG (matplotlib's Agg backend, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, marker="o" if len(x) < 30 else None)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _write(path, lambda f: fig.savefig(f, format=_format(path)))


def _series(records: Sequence[Mapping[str, float]], x_key: str, y_key: str, x_scale: float = 1.0):
    points = [(r[x_key] * x_scale, r[y_key]) for r in records
              if isinstance(r.get(y_key), (int, float)) and x_key in r]  # fmt: skip
    return tuple(zip(*points, strict=True)) if points else None


def loss_curve(
    records: Sequence[Mapping[str, float]], path: str, keys: Sequence[str] = ("loss",)
) -> str:
    """Plot `keys` of metric records (`writers.read_metrics`) against the step, log-scale y."""
    series = {k: xy for k in keys if (xy := _series(records, "step", k))}
    return _line_plot(series, path, "step", ", ".join(keys))


def fid_vs_training_minutes(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str, protocol: str = "pytorch_fid"
) -> str:
    """One line per run: the FID (`protocol`) of its eval records against the training wall
    time of each record's checkpoint (`train_wall_s`, summed over resumes), log-scale y."""
    series = {}
    for label, records in runs.items():
        points = sorted((r["train_wall_s"] / 60, r["fid"][protocol]) for r in records
                        if "train_wall_s" in r and protocol in r.get("fid", {}))  # fmt: skip
        if points:
            series[label] = tuple(zip(*points, strict=True))
    return _line_plot(series, path, "training wall time (minutes)", f"FID ({protocol})")


def fid_curve(records: Sequence[Mapping[str, float]], path: str) -> str:
    """FID (every `fid_*` metric) against training wall time in minutes, log-scale y."""
    keys = sorted({k for r in records for k in r if k.startswith("fid_")} or {"fid"})
    series = {k: xy for k in keys if (xy := _series(records, "elapsed_s", k, 1 / 60))}
    return _line_plot(series, path, "training wall time (minutes)", "FID")


def edit_figure(
    path: str,
    columns: Sequence[tuple[str, np.ndarray]],
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Labelled columns of images (the editing figures): column k is (label, uint8 [B, H, W, C]).

    Columns share B but may differ in size or channels (e.g. a user's RGB file beside the
    model's grey input); every tile is drawn at the same display size, nearest-neighbour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = [(label, _check_uint8(x)) for label, x in columns]
    b = cols[0][1].shape[0]
    if any(x.shape[0] != b for _, x in cols):
        raise ValueError(f"columns have different numbers of rows: {[x.shape[0] for _, x in cols]}")
    tile = 1.0
    left = 1.1 if row_labels else 0.1
    width = left + tile * len(cols) + 0.1
    width = max(width, 0.075 * len(title) + 0.3) if title else width
    fig = Figure(figsize=(width, tile * b + 0.9 + (0.35 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(b, len(cols), squeeze=False)
    for k, (label, x) in enumerate(cols):
        for r in range(b):
            ax = axes[r, k]
            im = x[r]
            ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=7)
            if k == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _write(path, lambda f: fig.savefig(f, format=_format(path), dpi=100))


def hybrid_figure(
    path: str,
    images: np.ndarray,
    *,
    scales: Sequence[float] = (4, 2, 1, 0.5),
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Each image at several display sizes, pixel-exact (up close: 4x; from afar: 1x, 0.5x).

    Up-scaling is nearest-neighbour, down-scaling Lanczos (what the eye does from afar), so
    the high-frequency class dominates the large copies and the low-frequency one the small.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = _check_uint8(images)
    b, h, w, c = x.shape
    sizes = [(max(1, round(w * s)), max(1, round(h * s))) for s in scales]
    gap, label_w = 8, 120 if row_labels else 0
    row_h = max(sh for _, sh in sizes) + gap
    width = label_w + sum(sw for sw, _ in sizes) + gap * (len(sizes) + 1)
    width = max(width, 7 * len(title) + 20) if title else width
    top = 40 if title else 16
    canvas = np.full((top + b * row_h + gap, width, 3), 255, np.uint8)
    for r in range(b):
        img = Image.fromarray(x[r, ..., 0] if c == 1 else x[r]).convert("RGB")
        xo = label_w + gap
        y_bottom = top + r * row_h + row_h - gap
        for (sw, sh), s in zip(sizes, scales, strict=True):
            rs = Image.Resampling.NEAREST if s >= 1 else Image.Resampling.LANCZOS
            canvas[y_bottom - sh : y_bottom, xo : xo + sw] = np.asarray(img.resize((sw, sh), rs))
            xo += sw + gap
    dpi = 100
    fig = Figure(figsize=(width / dpi, canvas.shape[0] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.text(0.5, 1 - 12 / canvas.shape[0], title, ha="center", va="top", fontsize=9)
    xo = label_w + gap
    for (sw, _), s in zip(sizes, scales, strict=True):
        fig.text((xo + sw / 2) / width, 1 - (top - 2) / canvas.shape[0], f"{s:g}x",
                 ha="center", va="bottom", fontsize=7)  # fmt: skip
        xo += sw + gap
    for r, label in enumerate(row_labels or ()):
        y = top + r * row_h + row_h / 2
        fig.text(4 / width, 1 - y / canvas.shape[0], label, ha="left", va="center", fontsize=8)
    return _write(path, lambda f: fig.savefig(f, format=_format(path), dpi=dpi))
