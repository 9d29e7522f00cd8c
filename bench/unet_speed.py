"""Forward+backward speed of each toy U-Net on this machine, against a plain conv1d reference.

    python bench/unet_speed.py [--batch 8] [--repeats 5] [--scale toy] [--device cpu]

For each stage: the time of one forward+backward pass at the stage's training length, its FLOPs
(torch.utils.flop_counter), the achieved FLOP/s, and that rate as a fraction of the FLOP/s of a
single plain Conv1d (forward+backward, same batch, a width and length typical of the U-Net's
first depth) timed in the same run. Then the share of time by layer kind (torch.profiler), to
say which layers dominate.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
from unet1d import UNet1D  # noqa: E402


def inputs(cfg, spec, batch, device):
    L = round((spec.crop_seconds[1] if spec.crop_seconds else spec.clip_seconds) * spec.frame_rate)
    L -= L % (160 if cfg.aligned_channels else 1)
    kw = {}
    if cfg.cond_channels:
        kw["cond"] = torch.randn(batch, cfg.cond_channels, L, device=device)
    if cfg.text_dim:
        kw["text"] = torch.randn(batch, spec.token_len, cfg.text_dim, device=device)
        kw["text_mask"] = torch.ones(batch, spec.token_len, dtype=torch.bool, device=device)
    if cfg.aligned_channels:
        kw["aligned"] = torch.randn(batch, cfg.aligned_channels, L // cfg.aligned_rate, device=device)
    return torch.randn(batch, cfg.in_channels, L, device=device), torch.rand(batch, device=device), kw


def timed(fn, repeats, device):
    fn()                                              # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def flops_of(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def reference_rate(channels, length, kernel, batch, repeats, device):
    """FLOP/s of one plain Conv1d forward+backward of the given size."""
    conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2).to(device)
    x = torch.randn(batch, channels, length, device=device, requires_grad=True)
    step = lambda: conv(x).sum().backward()
    return flops_of(step) / timed(step, repeats, device)


def layer_shares(step):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds = {"conv": ("conv", "mkldnn"), "attention": ("attention", "bmm", "softmax"),
             "norm": ("group_norm", "native_group_norm"), "matmul": ("addmm", "mm", "linear"), "swish": ("silu",)}
    totals, total = {k: 0.0 for k in kinds}, 0.0
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        total += ev.self_cpu_time_total
        for kind, keys in kinds.items():
            if any(k in ev.key for k in keys):
                totals[kind] += ev.self_cpu_time_total
                break
    return {k: v / max(total, 1) for k, v in totals.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scale", default="toy", choices=cascade.SCALES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    print(f"{'stage':15s} {'length':>7s} {'fwd+bwd s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'ref GFLOP/s':>11s} {'ratio':>6s}  top layers")
    for stage in cascade.STAGES:
        cfg, spec = cascade.unet_config(stage, args.scale), cascade.stage_spec(stage, args.scale)
        model = UNet1D(cfg).to(device)
        x, t, kw = inputs(cfg, spec, args.batch, device)
        step = lambda: model(x, t, **kw).square().mean().backward()
        seconds = timed(step, args.repeats, device)
        flops = flops_of(step)
        ref = reference_rate(cfg.channels[0], x.shape[-1] // cfg.strides[0], cfg.kernel_size, args.batch,
                             args.repeats, device)
        shares = layer_shares(step) if device.type == "cpu" else {}
        top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:3])
        print(f"{stage:15s} {x.shape[-1]:7d} {seconds:9.3f} {flops / 1e9:8.2f} {flops / seconds / 1e9:8.1f} "
              f"{ref / 1e9:11.1f} {flops / seconds / ref:6.2f}  {top}")


if __name__ == "__main__":
    main()
