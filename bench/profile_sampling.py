"""Where one sampling step's time goes, per stage: torch.profiler over a few model calls.

    python bench/profile_sampling.py [--steps 3] [--batch 1] [--threads 1] [--ckpt-dir checkpoints/toy]

For each of the five shipped toy stages, a 4 s clip at the stage's output rate, run through the
stage's eps_fn as sample.py builds it (CFG batch, clipping, mel projection), and the share of the
self CPU time by kind of operation: convolutions, attention, GroupNorm, Swish, linear layers,
elementwise arithmetic, the FFTs of the vocoder's projection, and the rest. Measured in CPU time
of this process (the profiler's self CPU time), so other jobs on the machine matter less than
for wall time.
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
import text  # noqa: E402

KINDS = {"conv": ("conv", "mkldnn_convolution"), "attention": ("attention", "bmm", "softmax", "_flash"),
         "groupnorm": ("group_norm",), "swish": ("silu",), "linear": ("addmm", "aten::mm", "linear", "matmul"),
         "fft": ("fft", "stft", "istft"), "sort/quantile": ("sort", "quantile"),
         "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::cat", "aten::copy_",
                         "aten::pow", "aten::sqrt", "aten::where", "aten::clamp")}


def stage_inputs(stage, name, seconds, batch, encoder):
    """(shape, run_stage keyword arguments) for a stage on random conditioning of `seconds`."""
    spec = stage.spec
    kw = {}
    if spec.has_text:
        tok, enc = encoder
        ids, mask = tok(["a slow piano tune in a minor key, solo"] * batch, spec.token_len)
        with torch.inference_mode():
            kw.update(text=enc(ids, mask).float(), text_mask=mask, unconditional=torch.zeros(batch, dtype=torch.bool))
    if spec.output == "spec":
        return (batch, 80, round(seconds * spec.frame_rate)), kw
    T = round(seconds * spec.sample_rate)
    if spec.cond_rate:
        kw["cond"] = 0.1 * torch.randn(batch, 1, T)
    if spec.aligned:
        kw["aligned"] = torch.rand(batch, 80, T // 160) * 2 - 1
    return (batch, 1, T), kw


def shares(prof, kinds=KINDS):
    """({kind: self CPU time of the aten ops whose name holds one of its keys, "other aten": the rest},
    total self CPU time of aten ops), from a torch.profiler run; an op counts for its first kind."""
    totals, total = {k: 0.0 for k in kinds}, 0.0
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        total += ev.self_cpu_time_total
        for kind, keys in kinds.items():
            if any(k in ev.key for k in keys):
                totals[kind] += ev.self_cpu_time_total
                break
    totals["other aten"] = total - sum(totals.values())
    return totals, total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=0, help="also print the top N aten ops per stage")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    encoder = None
    for name in cascade.STAGES:
        stage = cascade.StageModel(os.path.join(args.ckpt_dir, f"{name}.pt"), stage=name)
        if encoder is None and stage.t5:
            encoder = text.load_t5(stage.t5)
        shape, kw = stage_inputs(stage, name, args.seconds, args.batch, encoder)
        knobs = cascade.Sampling(steps=args.steps)
        with torch.inference_mode():
            cascade.run_stage(stage, cascade.Sampling(steps=1), shape, torch.Generator().manual_seed(0), **kw)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                cascade.run_stage(stage, knobs, shape, torch.Generator().manual_seed(0), **kw)
        totals, total = shares(prof)
        wall_cpu = sum(ev.self_cpu_time_total for ev in prof.key_averages()) / 1e6
        per_step = total / 1e6 / args.steps
        print(f"{name:15s} {per_step * 1000:8.1f} ms aten CPU per step ({shape[-1]} long, batch {args.batch}); "
              + ", ".join(f"{k} {v / max(total, 1):.0%}" for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0.005 * total)
              + f"; all profiled ops {wall_cpu / args.steps * 1000:.1f} ms")
        if args.top:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
