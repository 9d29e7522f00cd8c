"""Time one full-scale training step of each stage (bfloat16 autocast, Adam, EMA) on a GPU.

    python bench/gpu_train_step.py [--scale full] [--device cuda] [--steps 3]

For each stage: the batch that fits (halved on out-of-memory), steps/s, examples/s, peak memory,
and the achieved TFLOP/s (torch.utils.flop_counter, forward+backward) against the card's dense
bf16 peak (989 TFLOP/s for an H100 SXM datasheet; ~798 measured for an 8192^3 bf16 matmul on the
lent H100). Crops as in training: 30 s for the generators, 4 s for the others. Random text of the
stage's token length at T5-large width. Needs only torch (no soundfile, no data).
"""
import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
import diffusion  # noqa: E402
from unet1d import UNet1D, count_parameters  # noqa: E402

FIRST_BATCH = {"wave-generator": 16, "cascader": 32, "spec-generator": 64, "vocoder": 64, "super-res": 32}
PEAK = 989e12


def batch_for(cfg, spec, B, device, crop=0.0):
    seconds = crop or (spec.crop_seconds[1] if spec.crop_seconds else spec.clip_seconds)
    L = round(seconds * spec.frame_rate)
    L -= L % 160 if cfg.aligned_channels else 0
    kw = {}
    if cfg.cond_channels:
        kw["cond"] = torch.randn(B, 1, L, device=device)
    if cfg.text_dim:
        kw["text"] = torch.randn(B, spec.token_len, cfg.text_dim, device=device)
        kw["text_mask"] = torch.ones(B, spec.token_len, dtype=torch.bool, device=device)
        kw["drop_text"] = torch.rand(B, device=device) < 0.1
    if cfg.aligned_channels:
        kw["aligned"] = torch.randn(B, 80, L // 160, device=device)
    return torch.randn(B, cfg.in_channels, L, device=device), kw


def make_step(model, ema, opt, spec, x0, kw, device):
    def step():
        t = torch.rand(x0.shape[0], device=device)
        eps = torch.randn_like(x0)
        x_t = diffusion.q_sample(x0, t, eps, spec.schedule)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            eps_hat = model(x_t, t, **kw)
        loss = diffusion.diffusion_loss(eps_hat.float(), eps, t, spec.schedule, spec.loss_weighting)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1e-4)
        return loss
    return step


def peak_rss_gib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_stage(stage, args, device):
    cfg, spec = cascade.unet_config(stage, args.scale), cascade.stage_spec(stage, args.scale)
    model = UNet1D(cfg).to(device)
    ema = UNet1D(cfg).to(device).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    B = args.batch or FIRST_BATCH[stage]
    while B >= 1:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            x0, kw = batch_for(cfg, spec, B, device, args.crop)
            step = make_step(model, ema, opt, spec, x0, kw, device)
            step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            seconds = (time.perf_counter() - t0) / args.steps
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            B //= 2
    opt.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)            # FLOPs are linear in the batch: count one example
    one = {k: v[:1] for k, v in kw.items()}
    with counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(x0[:1], torch.rand(1, device=device), **one).float().square().mean().backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops() * B
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    print(f"{stage:15s} {count_parameters(model) / 1e6:7.1f}M  len {x0.shape[-1]:6d}  batch {B:3d}  "
          f"{seconds:7.2f} s/step  {1 / seconds:6.2f} steps/s  {B / seconds:7.1f} ex/s  peak {mem:6.1f} GiB  "
          f"{flops / seconds / 1e9:8.1f} GFLOP/s ({flops / seconds / PEAK:.1%} of an H100's 989 TFLOP/s)", flush=True)
    del model, ema, opt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="full", choices=cascade.SCALES)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="fixed batch (default: per stage, halved on OOM)")
    p.add_argument("--stages", default=",".join(cascade.STAGES))
    p.add_argument("--crop", type=float, default=0.0, help="crop seconds (default: the training crop)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for stage in args.stages.split(","):
        run_stage(stage, args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
