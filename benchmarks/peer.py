"""The PyTorch peer: diffusers' `UNet2DModel` built to match our U-Net, and the same train step,
DDPM sampling step and FID network (the TorchScript Inception) as ours.

For configs/cifar10.py this is the usual DDPM reference (block_out_channels (128, 256, 256, 256),
2 layers per block, attention at 16x16, dropout 0.1, GroupNorm 32, 35,746,307 parameters: the
same count as ours). Attention is single-head, as in Ho et al. and our model.

The step mirrors ours: a batch drawn from device-resident uint8 data, flips when the config
flips, random t, q-sample, eps-MSE, (fused on CUDA) Adam, global-norm clipping when the config
clips, EMA. bf16 is autocast with float32 parameters, like our `model.dtype="bfloat16"`; float32
allows TF32 (as JAX's default precision does on GPUs). Needs the `bench` extra (torch, diffusers).

The sampling step (`bench_peer_sample`) is one DDPM reverse step as ours: the network on x_t and
t, x0 from eps, clipped to [-1, 1], the posterior mean plus the "fixed_small" std times fresh
noise; under `torch.compile` the whole step (network + update) is one compiled function. The FID
peer (`bench_peer_fid`) runs the TorchScript file our weights come from, in strict float32 (TF32
off for matmuls and cuDNN), on the same TF-protocol preprocessing as ours (the same separable
bilinear resize matrices to 299x299, then `(x - 128) / 128`), uint8 in from the host and
features back to the host, batch by batch, like `fid.FeatureExtractor.features`.

cuDNN's autotuner (`cudnn.benchmark`) is on for every peer row: the peer gets its best
convolution algorithms, as XLA autotunes ours; its cost falls in the excluded warm-up.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections
import numpy as np

from benchmarks import flops, hardware
from benchmarks.results import Row, time_repeats
from diffusion_jax import diffusion

INSTALL_HINT = 'skipped: install .[bench] (pip install -e ".[bench]": torch and diffusers)'


def missing() -> str | None:
    """Why the peer cannot run here (a one-line message), or None when it can."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"{INSTALL_HINT}; {e}"
    return None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({hardware.cpu_name()})"


def build_model(config: ml_collections.ConfigDict) -> Any:
    """diffusers `UNet2DModel` with our config's architecture."""
    from diffusers import UNet2DModel

    m, size = config.model, int(config.data.image_size)
    attn = {int(r) for r in m.attn_resolutions}
    down = [
        "AttnDownBlock2D" if size // 2**i in attn else "DownBlock2D" for i in range(len(m.ch_mult))
    ]
    up = [b.replace("Down", "Up") for b in reversed(down)]
    return UNet2DModel(
        sample_size=size,
        in_channels=int(config.data.channels),
        out_channels=int(config.data.channels),
        block_out_channels=tuple(int(m.ch) * int(k) for k in m.ch_mult),
        layers_per_block=int(m.num_res_blocks),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        dropout=float(m.dropout),
        norm_num_groups=int(m.num_groups),
        norm_eps=1e-6,
        attention_head_dim=None,  # one head of all channels
        time_embedding_dim=None if m.time_emb_dim is None else int(m.time_emb_dim),
    )


def _unet_row(name: str, dtype: str, batch: int, compile_model: bool, **fields: Any) -> Row:
    """A peer UNet2DModel row (train or sampling) on this device: the fields both share."""
    kind = device_name()
    return Row(
        workload="peer",
        config=name,
        impl="torch compile" if compile_model else "torch eager",
        dtype=dtype,
        batch=batch,
        peak_tflops=hardware.peak_tflops(kind, "bfloat16" if dtype == "bfloat16" else "float32"),
        device=kind,
        **fields,
    )


def bench_peer(
    name: str,
    config: ml_collections.ConfigDict,
    *,
    dtype: str,
    compile_model: bool,
    steps: int,
    repeats: int,
    num_examples: int,
) -> Row:
    """`steps` train steps per repeat after 3 warm-up steps (the first compiles when compiled)."""
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    _set_precision(strict=False)
    torch.manual_seed(0)
    b, t = config.train, config.diffusion
    batch = int(b.batch_size)
    row = _unet_row(
        name, dtype, batch, compile_model,
        what=f"{steps} steps, diffusers UNet2DModel",
        unit="img/s",
        work=steps * batch,
        flops_per_unit=flops.unet_cost(config).train_flops,
        extra={"of": "train"},
    )  # fmt: skip
    if compile_model:
        torch._dynamo.reset()  # compile for this row's shapes, not a dynamic-shape variant
    model = build_model(config).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    row.extra["params"] = sum(p.numel() for p in params)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=float(b.lr), betas=(0.9, 0.999), eps=1e-8, fused=cuda)
    forward = torch.compile(model) if compile_model else model

    size, channels = int(config.data.image_size), int(config.data.channels)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_examples, channels, size, size), dtype=np.uint8)
    images = torch.from_numpy(images).to(dev)
    # NumPy tables (diffusion.make_betas): creating jax arrays here would start JAX's GPU
    # backend, which preallocates most of the memory before the peer has run.
    alphas_cumprod = np.cumprod(1.0 - diffusion.make_betas(t.schedule, int(t.num_timesteps)))
    sqrt_ab = torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32, device=dev)
    sqrt_1mab = torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32, device=dev)
    flip, clip, decay = bool(config.data.random_flip), float(b.grad_clip), float(b.ema_decay)

    def step() -> None:
        idx = torch.randint(0, num_examples, (batch,), device=dev)
        x0 = images[idx].float() / 127.5 - 1.0
        if flip:
            x0 = torch.where(torch.rand(batch, 1, 1, 1, device=dev) < 0.5, x0.flip(3), x0)
        ts = torch.randint(0, int(t.num_timesteps), (batch,), device=dev)
        noise = torch.randn_like(x0)
        x_t = sqrt_ab[ts].view(-1, 1, 1, 1) * x0 + sqrt_1mab[ts].view(-1, 1, 1, 1) * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            eps = forward(x_t, ts).sample
        loss = F.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - decay)

    def sync(_: Any = None) -> None:
        if cuda:
            torch.cuda.synchronize()

    def run_steps(n: int) -> None:
        for _ in range(n):
            step()

    start = time.perf_counter()
    run_steps(3)
    sync()
    row.extra["warmup_s"] = time.perf_counter() - start
    row.seconds = time_repeats(lambda: run_steps(steps), repeats, sync)
    return row


def _set_precision(*, strict: bool) -> None:
    """TF32 allowed (train and sampling rows) or off (the strict float32 FID row)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.set_float32_matmul_precision("highest" if strict else "high")
    torch.backends.cudnn.benchmark = True


def ddpm_tables(config: ml_collections.ConfigDict, num_timesteps: int) -> dict[str, np.ndarray]:
    """Float64 NumPy copies of the `diffusion.Schedule` tables a DDPM step reads (as
    `schedule_from_betas`, without creating JAX arrays, which would start JAX's GPU backend)."""
    betas = diffusion.make_betas(config.diffusion.schedule, num_timesteps)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    log_var = np.log(np.append(post_var[1], post_var[1:]) if betas.size > 1 else betas)
    std = np.exp(0.5 * log_var)
    std[0] = 0.0  # no noise at t = 0
    return {
        "sqrt_recip_abar": np.sqrt(1.0 / abar),
        "sqrt_recipm1_abar": np.sqrt(1.0 / abar - 1.0),
        "coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        "std": std,
    }


def bench_peer_sample(
    name: str,
    config: ml_collections.ConfigDict,
    *,
    dtype: str,
    compile_model: bool,
    batch: int,
    steps: int,
    repeats: int,
) -> Row:
    """`steps` DDPM reverse steps of a `batch` per repeat on a T=`steps` schedule (the same
    network and update per step as T=1000, as our short-chain row), after one untimed chain
    (which compiles when compiled)."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    _set_precision(strict=False)
    torch.manual_seed(0)
    if config.sample.variance != "fixed_small":
        raise ValueError(f"peer sampling: fixed_small only; got {config.sample.variance!r}")
    row = _unet_row(
        name, dtype, batch, compile_model,
        what=f"ddpm, {steps}-step chain, diffusers UNet2DModel + DDPM update",
        unit="img*steps/s",
        work=batch * steps,
        flops_per_unit=flops.sample_step_flops(config),
        extra={"of": "sample", "sampler": "ddpm", "steps": steps},
    )  # fmt: skip
    if compile_model:
        torch._dynamo.reset()
    model = build_model(config).to(dev).eval()
    row.extra["params"] = sum(p.numel() for p in model.parameters())
    tables = {
        k: torch.tensor(v, dtype=torch.float32, device=dev)
        for k, v in ddpm_tables(config, steps).items()
    }
    clip = bool(config.sample.get("clip_denoised", True))  # samplers.sample clips by default
    size, channels = int(config.data.image_size), int(config.data.channels)

    def reverse_step(x: Any, t: Any) -> Any:
        """x_{t-1} from x_t; `t` a 0-d int64 tensor (a Python int would recompile per t)."""
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            eps = model(x, t.expand(x.shape[0])).sample
        eps = eps.float()
        x0 = tables["sqrt_recip_abar"][t] * x - tables["sqrt_recipm1_abar"][t] * eps
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean = tables["coef1"][t] * x0 + tables["coef2"][t] * x
        return mean + tables["std"][t] * torch.randn_like(x)

    step_fn = torch.compile(reverse_step) if compile_model else reverse_step
    ts = [torch.tensor(steps - 1 - i, dtype=torch.int64, device=dev) for i in range(steps)]

    @torch.no_grad()
    def chain() -> Any:
        x = torch.randn(batch, channels, size, size, device=dev)
        for t in ts:
            x = step_fn(x, t)
        return x

    def sync(_: Any = None) -> None:
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    sync(chain())
    row.extra["warmup_s"] = time.perf_counter() - start
    row.seconds = time_repeats(chain, repeats, sync)
    return row


class TorchFid:
    """The TorchScript FID Inception in torch float32 on our TF-protocol preprocessing."""

    def __init__(self, weights_path: str, image_shape: tuple[int, int, int]) -> None:
        import torch

        from diffusion_jax.fid.inception import INPUT_SIZE
        from diffusion_jax.fid.preprocess import resize_matrix

        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = torch.jit.load(weights_path, map_location=self.dev).eval()
        h, w, self.channels = image_shape
        self.ry = torch.from_numpy(resize_matrix(h, INPUT_SIZE, "tf")).to(self.dev)
        self.rx = torch.from_numpy(resize_matrix(w, INPUT_SIZE, "tf")).to(self.dev)

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        """`[N, 2048]` float32 host features of uint8 `[N, H, W, C]` host images."""
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(self.dev).float()
            if self.channels == 1:
                x = x.expand(-1, -1, -1, 3)
            x = torch.einsum("oh,nhwc->nowc", self.ry, x)
            x = torch.einsum("pw,nowc->nopc", self.rx, x)
            x = ((x - 128.0) * (1.0 / 128.0)).permute(0, 3, 1, 2).contiguous()
            return self.net(x).cpu().numpy()

    def features(self, images_uint8: np.ndarray, batch: int) -> np.ndarray:
        """Batch by batch, the last one zero-padded (one shape), like ours."""
        n = images_uint8.shape[0]
        out = np.empty((n, 2048), np.float32)
        for start in range(0, n, batch):
            chunk = images_uint8[start : start + batch]
            m = chunk.shape[0]
            if m < batch:
                pad = np.zeros((batch - m, *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, pad])
            out[start : start + m] = self(chunk)[:m]
        return out


def bench_peer_fid(
    name: str,
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    batches: int,
    repeats: int,
    weights_path: str | None,
) -> Row:
    """`batches` x `batch` random uint8 images of `config`'s shape per repeat, after two untimed
    batches (TorchScript's profiling executor optimises on the first calls; cuDNN autotunes)."""
    size, channels = int(config.data.image_size), int(config.data.channels)
    kind = device_name()
    row = Row(
        workload="peer",
        config=name,
        impl="torchscript",
        dtype="float32-strict",
        batch=batch,
        what=f"inception 299x299 from {size}x{size}x{channels}, {batches} batches, TF32 off",
        unit="img/s",
        work=batch * batches,
        flops_per_unit=flops.inception_forward_flops(),
        peak_tflops=hardware.peak_tflops(kind, "float32-strict"),
        device=kind,
        extra={"of": "fid"},
    )
    if not weights_path or not os.path.isfile(weights_path):
        row.skipped = f"skipped: the TorchScript FID Inception file is needed (got {weights_path})"
        return row
    _set_precision(strict=True)
    try:
        net = TorchFid(weights_path, (size, size, channels))
        row.extra |= {"weights": weights_path, "allow_tf32": False, "cudnn_benchmark": True}
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch * batches, size, size, channels), dtype=np.uint8)
        start = time.perf_counter()
        net.features(images[: 2 * batch], batch)
        row.extra["warmup_s"] = time.perf_counter() - start
        row.seconds = time_repeats(lambda: net.features(images, batch), repeats, lambda x: x)
    finally:
        _set_precision(strict=False)
    return row


def release_memory() -> None:
    """Hands the peer's cached GPU memory back before JAX allocates its pool."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
