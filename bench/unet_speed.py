"""Forward+backward speed of each toy U-Net on this machine, against a plain conv1d reference.

    python bench/unet_speed.py [--batch 8] [--repeats 5] [--scale toy] [--device cpu] [--no-peers]

For each stage: the time of one forward+backward pass at the stage's training length, its FLOPs
(torch.utils.flop_counter), the achieved FLOP/s, and that rate as a fraction of the FLOP/s of a
single plain Conv1d (forward+backward, same batch, a width and length typical of the U-Net's
first depth) timed in the same run. Then the share of time by layer kind (torch.profiler), to
say which layers dominate.

Peers, in the same run: one training step (forward, MSE loss, backward, Adam step) on a batch of
8 x 16,384 samples of lucidrains' Unet1D (denoising-diffusion-pytorch) and archinetai's UNetV0
(audio-diffusion-pytorch), each at the width whose parameter count is nearest to our toy super-res
U-Net's (without its conditioning input), next to ours. They are a bench-only install
(`pip install --no-deps -r requirements-bench.txt`); a missing peer is skipped with a message. Their
packages import torchvision, torchaudio, accelerate and ema_pytorch at the top for parts this bench
never uses; where those are missing, empty stand-in modules take their place (installing them
would have to match this torch build).
"""
import argparse
import importlib
import importlib.util
import os
import sys
import time
import types
from dataclasses import replace

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cascade  # noqa: E402
import profile_sampling  # noqa: E402
from unet1d import UNet1D, count_parameters  # noqa: E402


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
    """Best of `repeats` runs: wall time on a GPU; on the CPU, this process's CPU time, which other
    jobs on a shared machine stretch far less than wall time (run at one thread)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()                                              # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
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
    """Each layer kind's share of one call of `step`'s self CPU time (profile_sampling.shares)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds = {"conv": ("conv", "mkldnn"), "attention": ("attention", "bmm", "softmax"),
             "norm": ("group_norm", "native_group_norm"), "matmul": ("addmm", "mm", "linear"), "swish": ("silu",)}
    totals, total = profile_sampling.shares(prof, kinds)
    return {k: totals[k] / max(total, 1) for k in kinds}


def _stand_in(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def load_peers():
    """{name: constructor(width) -> nn.Module with forward(x, t)} for the installed peers; messages for the rest."""
    for name in ("torchvision", "torchaudio", "accelerate", "ema_pytorch"):
        if importlib.util.find_spec(name) is None:
            _stand_in(name, transforms=types.SimpleNamespace(MelSpectrogram=None), Accelerator=None, EMA=None)
    peers, missing = {}, []
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None:
        missing.append("denoising-diffusion-pytorch (lucidrains' Unet1D) is not installed: skipped")
    else:      # the package's __init__ pulls in the image models; load the 1-D module alone
        _stand_in("denoising_diffusion_pytorch").__path__ = list(spec.submodule_search_locations)
        Unet1D = importlib.import_module("denoising_diffusion_pytorch.denoising_diffusion_pytorch_1d").Unet1D
        peers["lucidrains Unet1D"] = (
            (4, 6, 8), lambda w: Unet1D(dim=w, dim_mults=(1, 2, 4, 8), channels=1),
            lambda m, x, t: m(x, (t * 999).long()))
    if importlib.util.find_spec("audio_diffusion_pytorch") is None:
        missing.append("audio-diffusion-pytorch (archinetai's UNetV0) is not installed: skipped")
    else:
        UNetV0 = importlib.import_module("audio_diffusion_pytorch").UNetV0
        peers["archinetai UNetV0"] = (
            (8, 16), lambda w: UNetV0(dim=1, in_channels=1, channels=[w, w, 2 * w, 4 * w], factors=[1, 4, 4, 4],
                                      items=[1, 2, 2, 2], attentions=[0, 0, 0, 1], attention_heads=4,
                                      attention_features=16, modulation_features=32),
            lambda m, x, t: m(x, time=t))
    return peers, missing


def train_step_seconds(model, call, x, t, repeats, device):
    """Best time of one forward + MSE loss + backward + Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        (call(model, x, t) - x).square().mean().backward()
        opt.step()
    return timed(step, repeats, device)


def peer_table(batch, length, repeats, device):
    """Lines comparing one training step of ours with the peers at matched parameter counts."""
    cfg = replace(cascade.unet_config("super-res", "toy"), cond_channels=0, aug_level=False)
    ours = UNet1D(cfg).to(device)
    target = count_parameters(ours)
    x, t = torch.randn(batch, 1, length, device=device), torch.rand(batch, device=device)
    rows = [("ours (toy super-res U-Net, no conditioning)", target,
             train_step_seconds(ours, lambda m, x, t: m(x, t), x, t, repeats, device))]
    peers, missing = load_peers()
    for name, (widths, make, call) in peers.items():
        width = min(widths, key=lambda w: abs(count_parameters(make(w)) - target))
        model = make(width).to(device)
        rows.append((f"{name} (width {width})", count_parameters(model),
                     train_step_seconds(model, call, x, t, repeats, device)))
    lines = [f"\nOne training step (forward, loss, backward, Adam), batch {batch} x {length} samples:",
             f"{'model':48s} {'params':>9s} {'step s':>8s}"]
    lines += [f"{name:48s} {n:9,d} {s:8.3f}" for name, n, s in rows]
    return lines + missing


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scale", default="toy", choices=cascade.SCALES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-peers", action="store_true", help="skip the peers' training steps")
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
    if not args.no_peers:
        print("\n".join(peer_table(args.batch, 16384, args.repeats, device)))


if __name__ == "__main__":
    main()
