"""The config schema: every field a run reads, with its default and meaning.

Files in `configs/` start from `base_config()` and change what differs, so a field exists in every
config and `--config.a.b=value` can override any of them. `state.validate_config` checks values.
"""

from __future__ import annotations

import re
from pathlib import Path

import ml_collections

from diffusion_jax.errors import UserError

# The recipes, shipped inside the package (`configs/` at the repository root links here), so
# `--config=cifar10` works from any directory once the package is installed.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve_config_arg(value: str) -> str:
    """`--config`'s value: a recipe name (`cifar10`, `mnist_fast`) becomes the packaged file;
    paths (and config_flags' `file:argument`) are kept as they are."""
    path, sep, argument = value.partition(":")
    if Path(path).exists() or "/" in path or path.endswith(".py") or not path:
        return value
    recipe = CONFIGS_DIR / f"{path}.py"
    return f"{recipe}{sep}{argument}" if recipe.is_file() else value


def parse_index_list(value, setting: str, what: str = "image indices") -> list[int]:
    """The one grammar of the index-list settings (`edit.indices`, `edit.targets`,
    `dip.indices`): comma-separated items, each a non-negative integer `N` or an inclusive
    range `A-B` with A <= B ("0-7", "3,5,9", "0-3,8"; spaces and empty items are ignored), or
    a tuple/list of such items, or one integer. Returns the integers in the order written
    (ranges do not check bounds). Anything else raises `UserError` naming `setting`."""
    if isinstance(value, (tuple, list)):
        parts = [str(v).strip() for v in value]
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    else:
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
    out: list[int] = []
    for p in parts:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", p)
        if not m:
            raise UserError(f"{setting}={value!r}: give {what} like '0-7' or '3,5,9'.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UserError(f"{setting}={value!r}: the range {p} is empty (write A-B, A <= B).")
        out += list(range(lo, hi + 1))
    return out


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config (Ho et al.'s CIFAR-10 settings where they apply)."""
    c = ml_collections.ConfigDict()
    # What is trained (diffusion_jax/methods/): "ddpm", or a baseline users compare it with:
    # "gan", "dcgan", "vae", "vae_gan", "denoiser", "dip". Their own settings live in
    # config.<method> (configs/<method>_<dataset>.py); model/diffusion/sample are DDPM's.
    c.method = "ddpm"
    c.seed = 0  # fixes initialisation, data order, noise and sampling

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "cifar10"  # a name data.load_split knows ("mnist", "fashion_mnist", "cifar10")
    d.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS's default data dir
    d.image_size = 32  # images are resized to image_size x image_size if they differ
    d.channels = 3  # 1 or 3; grey datasets are repeated to 3 channels when this is 3
    d.random_flip = False  # horizontal flips, drawn per example per step on device
    d.num_shards = 0  # data shards (see DESIGN.md "Data order"); 0 = number of processes

    # arch "unet": exactly the `nets.unet.UNet` keyword arguments except image_size, in_channels
    # and rngs. arch "course": `nets.course_unet.CourseUNet` (28x28 only), which reads
    # course_hidden, course_groups, num_classes and dtype (and T from config.diffusion); the rest
    # is unused.
    c.model = m = ml_collections.ConfigDict()
    m.arch = "unet"  # "unet" (Ho et al.'s U-Net) or "course" (the CS180/280A course's MNIST U-Net)
    m.course_hidden = 64  # arch "course": D, the width (D, 2D at 7x7)
    m.course_groups = 8  # arch "course": GroupNorm groups (in place of the course's BatchNorm)
    m.ch = 128
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (16,)
    m.dropout = 0.1
    m.num_groups = 32
    m.time_emb_dim = ml_collections.config_dict.placeholder(int)  # None: 4 * ch
    m.num_classes = 0  # > 0: class-conditional (labels from the dataset, guidance when sampling)
    m.dtype = "float32"  # compute dtype ("bfloat16" on GPUs/TPUs); parameters stay float32
    m.attention = "xla"  # "xla": float32 logits/softmax/weights; "cudnn": flash kernel (bf16 GPUs)

    c.diffusion = f = ml_collections.ConfigDict()
    f.num_timesteps = 1000
    f.schedule = "linear"  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal)
    f.prediction = "eps"  # what the network predicts: "eps", "x0" or "v"
    # Per-example weight of the training loss: "uniform" (Ho et al.'s L_simple) or "min_snr"
    # (Hang et al. 2023: the x0-MSE weighted by min(SNR(t), min_snr_gamma), the same objective
    # for every prediction; diffusion.loss_weights). The logged "loss" is the weighted one; the
    # held-out loss stays the unweighted eps-MSE, comparable across weightings.
    f.loss_weighting = "uniform"
    f.min_snr_gamma = 5.0  # loss_weighting "min_snr": gamma (Hang et al.'s default 5)

    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 128  # global batch, split evenly over all devices
    t.num_steps = 800_000
    t.lr = 2e-4
    t.warmup_steps = 5000  # linear warmup from 0, then constant (or decayed, below)
    # After the warm-up, lr * lr_decay_rate ** (steps since warm-up // lr_decay_steps) (staircase
    # exponential decay, e.g. the course's gamma = 0.1 ** (1 / epochs) once per epoch); 1 = none.
    t.lr_decay_rate = 1.0
    t.lr_decay_steps = 0  # steps per decay (> 0 when lr_decay_rate < 1)
    t.grad_clip = 1.0  # global-norm clipping; 0 = off
    # EMA of the parameters. ema_halflife_images > 0 (EDM, Karras et al. 2022): decay per step
    # 0.5 ** (batch / h) with h = min(ema_halflife_images, ema_rampup_ratio * images_seen), so
    # the EMA's memory is h images whatever the batch size and young runs forget the init.
    # ema_halflife_images = 0: the fixed per-step ema_decay (Ho et al.), optionally warmed up.
    t.ema_decay = 0.9999
    t.ema_warmup = False  # True: decay min(ema_decay, (1 + n) / (10 + n)) at step n
    t.ema_halflife_images = 0.0  # > 0: EMA by half-life in images (replaces ema_decay)
    t.ema_rampup_ratio = 0.05  # EDM's ramp-up (with the half-life); 0 = none
    t.label_dropout = 0.1  # conditional models: P(label -> null label), for guidance
    t.log_every = 100
    t.sample_every = 10_000  # EMA sample grid to workdir/samples; 0 = never
    t.ckpt_every = 10_000
    t.keep_checkpoints = 3  # latest N in workdir/checkpoints (+ the best one in workdir/best)
    # Metric that picks workdir/best (lower is better): "auto" = "fid" when periodic FID is on,
    # else "heldout_loss" when heldout_examples > 0, else "loss" (the log window's mean).
    t.best_metric = "auto"
    t.heldout_examples = 256  # held-out eps-MSE on this many test images (0 = off), per save
    t.heldout_timesteps = 8  # ... each at this many fixed timesteps (diffusion_jax/heldout.py)
    # Train steps per compiled call (lax.scan, fewer dispatches on accelerators); divides every
    # interval. Keep 1 on CPUs: XLA:CPU runs backward convolutions ~10x slower inside loops.
    t.steps_per_call = 1
    t.time_budget_s = 0.0  # > 0: stop, checkpoint and return after this many seconds
    t.tensorboard = True  # TensorBoard event files (tensorboard package; no TF needed)
    # > 0: one profiler trace of this many steps, from step profile_start of the run (after
    # the compile), into workdir/plugins/profile/ (TensorBoard's Profile tab; writers.Profiler)
    t.profile_steps = 0
    t.profile_start = 10

    c.sample = s = ml_collections.ConfigDict()
    s.num_samples = 64  # --mode=sample writes this many to samples.npz
    s.batch_size = 256  # global sampling batch, split over all devices
    # "ddpm" (all T steps), "ddim", or DPM-Solver++ (Lu et al. 2022): "dpm++2m" (second order,
    # the usual choice for 10-50 network calls), "dpm++3m" (third order), "dpm++2m_sde"
    # (stochastic). diffusion_jax/samplers/ and README "Samplers".
    s.sampler = "ddpm"
    s.num_steps = 100  # network calls of ddim / dpm++* (DDPM previews during training: DDIM)
    s.eta = 0.0  # DDIM noise; 0 = deterministic (must be 0 for dpm++*)
    s.variance = "fixed_small"  # DDPM variance: "fixed_small" or "fixed_large"
    # Timestep spacing. "auto": the sampler's default ("uniform" for DDIM, "logsnr" for
    # dpm++*). DDIM: "uniform" or "quadratic"; dpm++*: "logsnr", "uniform" (in t) or "karras".
    s.spacing = "auto"
    s.guidance = 1.0  # classifier-free guidance weight (conditional models; 1 = plain cond.)
    s.record_steps = ()  # timesteps shown in denoising.png; () = 8 evenly spaced

    # FID (diffusion_jax/evaluate.py): the standard TF Inception network, float64 statistics.
    c.fid = e = ml_collections.ConfigDict()
    e.protocol = "tf"  # "tf" (TTUR's TF1 pipeline; not score_sde's), "pytorch_fid", or "both"
    e.eval_samples = 50_000  # --mode=eval generates this many images
    e.num_samples = 0  # periodic FID during training on this many images; 0 = off
    e.every = 0  # periodic FID every this many steps; 0 = off
    e.batch_size = 200  # global Inception batch, split over all devices
    e.ref_split = "train"  # reference statistics: every image of this split of config.data
    e.ref_stats = ml_collections.config_dict.placeholder(str)  # file; None = user cache
    e.weights = ml_collections.config_dict.placeholder(str)  # Inception weights file (see README)

    # --mode=edit (diffusion_jax/edit_workflow.py): the toolbox of diffusion_jax/edit/ on the EMA
    # weights, writing labelled figures and edit/<kind>.npz into the workdir. Defaults are the
    # demos of results/applications.md (class-conditional MNIST, T = 1000). The T-dependent ones
    # (noise_levels, stride, inpaint_stride, i_start, translate_i_start) default to "auto"
    # (0, (), -1): the T = 1000 demo value (in brackets below) scaled to the model's T by
    # edit_settings.resolve_defaults. Any value you set is used as given.
    c.edit = ed = ml_collections.ConfigDict()
    ed.kind = "denoise"  # denoise | sdedit | inpaint | translate | anagram | hybrid
    ed.indices = "0-7"  # images of ed.split by index ("0-7", "3,5,9"); used when ed.images = ""
    ed.split = "test"
    ed.images = ""  # comma-separated PNG/JPEG files (any size/mode) in place of dataset images
    ed.invert_input = "auto"  # files: invert? "auto" = grey models and a light border
    ed.stride = 0  # strided timesteps k * stride; 0 = auto [30: 990, 960, ..., 0; 34 steps]
    ed.eta = 1.0  # 1 = ancestral DDPM step over each strided pair, 0 = DDIM
    ed.guidance = 3.0  # classifier-free guidance of the class-guided kinds (1 = plain cond.)
    ed.label = -1  # sdedit/inpaint: >= 0 guides to this class; -1 = no class (null label)
    # denoise: forward process and blur | one-step | iterative at these t (and the PSNR table)
    ed.noise_levels = ()  # () = auto [(250, 500, 750), i.e. T/4, T/2, 3T/4]
    ed.blur_kernel = 5
    ed.blur_sigma = 2.0
    ed.psnr_images = 0  # > 0: PSNR table on this many test images (edit/psnr.json, psnr.md)
    # sdedit/translate start: index into the strided grid (0 = noisiest) or diffusers' strength
    ed.i_start = ()  # () = auto [(1, 3, 5, 7, 10, 20) of the 34-step grid]
    ed.strength = ()  # non-empty: these strengths in (0, 1] replace i_start
    ed.translate_i_start = -1  # translate: the start (a column per target); -1 = auto [10]
    ed.targets = ""  # translate: target classes; "" = every class
    # inpaint: mask = centre | half | strokes | a PNG (white = 1) or .npy file of 0/1
    ed.mask = "centre"
    ed.mask_convention = "keep"  # masks are 1 = keep (known pixels); "fill": 1 = generate
    ed.inpaint_stride = 0  # RePaint's levels k * inpaint_stride; 0 = auto [4: 250 levels]
    ed.jump_length = 10  # RePaint j
    ed.jump_count = 10  # RePaint r (1 = plain replacement)
    # anagram / hybrid: class pairs "a,b;c,d" (anagram: a as is, b under ed.view; hybrid: a low
    # frequencies (seen from afar), b high frequencies (seen up close)), ed.samples per pair
    ed.pairs = "6,9;1,7"
    ed.view = "rot180"  # identity vflip hflip rot90 rot180 rot270 negate
    ed.samples = 4
    ed.hybrid_kernel = 7  # Gaussian low-pass of the noise estimates at 28-32 px
    ed.hybrid_sigma = 1.0

    # --mode=dip_prior (diffusion_jax/dip_prior.py): a DIP run's restored images as the start of
    # this DDPM's reverse process, PSNR against the clean images. --config and --workdir are the
    # DDPM run's (its EMA weights, null label); outputs land in workdir/dip_prior/.
    c.dip_prior = dp = ml_collections.ConfigDict()
    dp.dip_workdir = ""  # the DIP run's workdir, with report/dip.npz (its --mode=sample)
    dp.dip_output = "restored"  # DIP's image: restored (output EMA) | best (oracle) | last
    dp.t_starts = (25, 50, 100, 200, 400)  # SDEdit start timesteps
    dp.stride = 10  # timestep stride of the reverse chains
    dp.eta = 1.0  # 1 = ancestral DDPM steps, 0 = DDIM
    dp.max_images = 0  # the first this many DIP images; 0 = all
    return c


def from_sibling(config_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of `<name>.py` in the folder of `config_file` (recipes extend a base file).

    Works wherever the configs folder is, unlike `from configs.x import ...`.
    """
    import importlib.util
    from pathlib import Path

    path = Path(config_file).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_djax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
