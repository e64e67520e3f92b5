"""The diffusion toolbox on trained models: denoising, SDEdit, inpainting, translation, illusions.

What belongs here: the pure core of the editing toolbox, jittable functions of (denoise
function, schedule, inputs, per-image keys) and the NumPy plans and masks they run on
(`schedules`, `filters`, `loops`, `denoise`, `inpaint`, `illusions`). Models, configs, data,
files and figures stay outside (an import-linter contract): `--mode=edit` is
`diffusion_jax.edit_workflow`, which reads its settings through `edit_settings`, its images and
masks through `edit_inputs` and draws with `edit_figures`. A denoise function is
``fn(x_t, t) -> eps``; the class-guided edits take ``cond_fn(x_t, t, labels) -> eps`` and
apply classifier-free guidance themselves. ``keys`` are one PRNG key per image
(`samplers.image_keys`), so an image's edit never depends on its batch.
"""

from diffusion_jax.edit.denoise import (
    check_labels,
    forward_process,
    generate,
    iterative_denoise,
    one_step_denoise,
    sdedit,
    sdedit_start,
    translate,
)
from diffusion_jax.edit.filters import gaussian_blur, gaussian_kernel
from diffusion_jax.edit.illusions import VIEWS, anagram_fn, hybrid_fn
from diffusion_jax.edit.inpaint import SHAPES, as_keep_mask, builtin_mask, inpaint, repaint
from diffusion_jax.edit.loops import denoise_loop, denoise_step
from diffusion_jax.edit.schedules import (
    repaint_plan,
    start_index_from_strength,
    strided_timesteps,
    timesteps_from,
)

__all__ = [
    "SHAPES",
    "VIEWS",
    "anagram_fn",
    "as_keep_mask",
    "builtin_mask",
    "check_labels",
    "denoise_loop",
    "denoise_step",
    "forward_process",
    "gaussian_blur",
    "gaussian_kernel",
    "generate",
    "hybrid_fn",
    "inpaint",
    "iterative_denoise",
    "one_step_denoise",
    "repaint",
    "repaint_plan",
    "sdedit",
    "sdedit_start",
    "start_index_from_strength",
    "strided_timesteps",
    "timesteps_from",
    "translate",
]
