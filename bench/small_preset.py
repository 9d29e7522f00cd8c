"""The `small` preset's sizes beside `toy` and `full`: parameters, FLOPs per example, memory, steps a day.

    python bench/small_preset.py [--tflops 12.5]

Per stage and scale: U-Net parameters; forward + backward FLOPs of one training example at the
longest training length (the whole clip for the generators, the longest crop otherwise), counted
by torch's FLOP counter on the meta device (3 x the forward: the backward costs about twice the
forward); train.py's dry-run memory (fp32 weights, gradients, Adam moments and EMA, plus the
activations of the preset's batch); and the steps a day at the preset's batch after accumulation
for a GPU sustaining `--tflops` (default 12.5: a 24 GB card of ~125 TFLOP/s bfloat16 peak at the
~10% of peak these U-Nets reach on an H100, bench/results_gpu_train_step_h100.txt). An estimate
from counted FLOPs, not a GPU measurement. Results: bench/results_small_preset.md.
"""
import argparse
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cascade  # noqa: E402
import train  # noqa: E402
from unet1d import UNet1D, count_parameters  # noqa: E402


def model_inputs(ucfg, length):
    """Meta tensors for one example: x_t, t and the stage's conditioning routes."""
    kw = {"cond": torch.zeros(1, ucfg.cond_channels, length)} if ucfg.cond_channels else {}
    if ucfg.text_dim:
        kw.update(text=torch.zeros(1, 64, ucfg.text_dim), text_mask=torch.ones(1, 64, dtype=torch.bool))
    if ucfg.aligned_channels:
        kw["aligned"] = torch.zeros(1, ucfg.aligned_channels, length // ucfg.aligned_rate)
    if ucfg.aug_level:
        kw["aug_t"] = torch.zeros(1)
    return torch.zeros(1, ucfg.in_channels, length), torch.zeros(1), kw


def measure(stage, scale):
    spec, ucfg = cascade.stage_spec(stage, scale), cascade.unet_config(stage, scale)
    length = round((spec.crop_seconds[1] if spec.crop_seconds else spec.clip_seconds) * spec.frame_rate)
    with torch.device("meta"):
        model = UNet1D(ucfg)
        x, t, kw = model_inputs(ucfg, length)
        with FlopCounterMode(display=False) as counter:
            model(x, t, **kw)
    n = count_parameters(model)
    memory = n * 20 + spec.batch * train.activation_bytes(model, ucfg, length)
    return n, 3 * counter.get_total_flops(), memory, spec


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=12.5, help="sustained TFLOP/s of the GPU")
    args = parser.parse_args()
    print(f"{'stage':15s} {'scale':5s} {'params':>9s} {'TFLOP/ex':>9s} {'dry-run GiB':>12s} {'batch':>11s} "
          f"{'steps/day':>10s} {'preset steps':>12s}")
    for stage in cascade.STAGES:
        for scale in cascade.SCALES:
            n, flops, memory, spec = measure(stage, scale)
            accumulated = max(spec.batch, spec.accumulate_to)
            per_day = 86400 * args.tflops * 1e12 / (flops * accumulated)
            print(f"{stage:15s} {scale:5s} {n / 1e6:8.1f}M {flops / 1e12:9.3f} {memory / 2**30:12.2f} "
                  f"{spec.batch:4d} x{accumulated // spec.batch:<4d} {per_day:10.0f} {spec.train_steps:12d}")


if __name__ == "__main__":
    main()
