"""The PyTorch peer: diffusers' `UNet2DModel` built to match our U-Net, and the same train step.

For configs/cifar10.py this is the usual DDPM reference (block_out_channels (128, 256, 256, 256),
2 layers per block, attention at 16x16, dropout 0.1, GroupNorm 32, 35,746,307 parameters: the
same count as ours). Attention is single-head, as in Ho et al. and our model.

The step mirrors ours: a batch drawn from device-resident uint8 data, flips when the config
flips, random t, q-sample, eps-MSE, (fused on CUDA) Adam, global-norm clipping when the config
clips, EMA. bf16 is autocast with float32 parameters, like our `model.dtype="bfloat16"`; float32
allows TF32 (as JAX's default precision does on GPUs). Needs the `bench` extra (torch, diffusers).
"""

from __future__ import annotations

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
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    b, t = config.train, config.diffusion
    batch = int(b.batch_size)
    kind = device_name()
    peak = hardware.peak_tflops(kind, "bfloat16" if dtype == "bfloat16" else "float32")
    row = Row(
        workload="peer",
        config=name,
        impl="torch compile" if compile_model else "torch eager",
        dtype=dtype,
        batch=batch,
        what=f"{steps} steps, diffusers UNet2DModel",
        unit="img/s",
        work=steps * batch,
        flops_per_unit=flops.unet_cost(config).train_flops,
        peak_tflops=peak,
        device=kind,
    )
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


def release_memory() -> None:
    """Hands the peer's cached GPU memory back before JAX allocates its pool."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
