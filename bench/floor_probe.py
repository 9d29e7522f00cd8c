"""Where does the cascader's hiss come from? Its denoising at each noise level, and its sampler, on real input.

    python bench/floor_probe.py [--ckpt-dir checkpoints/toy] [--clips 6] [--steps 8,16,32]
                                [--stage super-res] [--sampler NAME]

Real solo clips of the toy corpus (no drums: their broadband hits set the floor of drum clips) at
16 kHz, x, and their 3.2 kHz versions FFT-up-sampled back, the cascader's conditioning as the wave
generator would give it if it were perfect. Two measurements, each as `audio_measures.noise_floor_db`
(peak bins over the median bin under 8 kHz; larger is cleaner; real clips ~99 dB):

- One step: x noised to time t (x_t = alpha_t x + sigma_t eps) and denoised once by the cascader,
  x0_hat = (x_t - sigma_t eps_hat) / alpha_t, for t from 0.1 down to 0.0005: the floor of x_t / alpha_t
  (how much noise is left at that time), of x0_hat, and the mean squared error of eps_hat (1 = the
  network removes nothing). This is the best the sampler's last steps can do, from perfect earlier steps.
- Sampler: the stage's sampling as the pipeline runs it (cascade.run_stage: the preset's sampler, w and
  clipping) from pure noise to 0 at each of --steps step counts, the conditioning as above.

With --stage super-res the same for super-resolution: real 24 kHz solo clips, conditioned on their 16 kHz
version; the floor is that of the band it invents, 8-12 kHz (`audio_measures.band_floors_db`, the clip's
peak bins under 12 kHz over the band's median bin), since the band below 8 kHz is its input's.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import audio_measures  # noqa: E402
import cascade  # noqa: E402
import data  # noqa: E402
import diffusion  # noqa: E402
import text  # noqa: E402
import train  # noqa: E402

TIMES = (0.1, 0.05, 0.0125, 0.005, 0.002, 0.0005)


def floor(x, rate=16000):
    """Median over clips of the noise floor, dB."""
    return float(np.median([audio_measures.noise_floor_db(w[0].numpy(), rate) for w in x]))


INVENTED = {"cascader": (16000, 3200), "super-res": (24000, 16000)}      # (output rate, input rate)


def band_floor(x, rate=24000, edges=(0.0, 8000.0, 12000.0)):
    """Median over clips of the floor of the 8-12 kHz band, dB."""
    return float(np.median([audio_measures.band_floors_db(w[0].numpy(), rate, edges)[-1] for w in x]))


def real_solo_clips(n, seconds=2.0, rate=16000, low_rate=3200):
    """(x at `rate`, its `low_rate` version up-sampled to `rate`, captions): n solo clips of the toy corpus."""
    manifest = os.path.join(train.TOY_DATA, "manifest.jsonl")
    if not os.path.exists(manifest):
        train.build_toy_corpus()
    entries = [e for e in data.read_manifest(manifest) if not e["attributes"]["drums"]][:n]
    clips, _ = data.load_clips(entries, rate, 4.0, cache_dir=os.path.join(train.TOY_DATA, ".cache"), progress=False)
    n = int(seconds * rate)
    x = torch.from_numpy(np.stack([w for _, w in clips]))[:, None].float()[..., :n]
    low = data.fft_resample(data.fft_resample(x, rate, low_rate), low_rate, rate)[..., :n]
    return x, low, [e["captions"][0] for e in entries]


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--steps", default="8,16,32", help="front-heavy step counts for the sampler rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=tuple(INVENTED), default="cascader")
    p.add_argument("--sampler", default=None, help="the sampler rows' sampler (default: the stage's preset)")
    args = p.parse_args()
    torch.set_num_threads(1)
    stage = cascade.StageModel(os.path.join(args.ckpt_dir, f"{args.stage}.pt"), "cpu")
    spec, sched = stage.spec, stage.spec.schedule
    rate, low_rate = INVENTED[args.stage]
    x, low, captions = real_solo_clips(args.clips, rate=rate, low_rate=low_rate)
    measure = floor if args.stage == "cascader" else band_floor
    tokens, mask = (None, None) if not spec.has_text else cascade.encode_prompts(
        text.load_t5(os.path.join(args.ckpt_dir, "t5")), captions, spec, "cpu")
    route = dict(cond=low, aug_t=torch.zeros(len(x)))
    plain = stage.eps_fn(1.0, tokens, mask, None, **route)
    g = torch.Generator().manual_seed(args.seed)
    print(f"{args.stage} {args.ckpt_dir} (schedule {sched}, step {stage.step}); {len(x)} real solo clips, "
          f"floor {measure(x):.1f} dB (conditioning {measure(low):.1f} dB)\n")
    print("| t | log-SNR | floor of x_t (dB) | floor of x0_hat (dB) | eps_hat error (MSE) |\n|---|---|---|---|---|")
    for t in TIMES:
        tt = torch.full((len(x),), t)
        eps = torch.randn(x.shape, generator=g)
        alpha, sigma = (v[:, None, None] for v in diffusion.alpha_sigma(tt, sched))
        x_t = alpha * x + sigma * eps
        eps_hat = plain(x_t, tt)
        x0_hat = (x_t - sigma * eps_hat) / alpha
        lam = float(diffusion.log_snr(torch.tensor(t), sched))
        print(f"| {t} | {lam:.1f} | {measure(x_t / alpha):.1f} | {measure(x0_hat):.1f} | "
              f"{float(((eps_hat - eps) ** 2).mean()):.2f} |")
    print(f"\n| sampler (w = {spec.w:g}) | last time before 0 | floor of the output (dB) |\n|---|---|---|")
    for n in [int(s) for s in args.steps.split(",")]:      # the pipeline's own stage sampling, at n steps
        knobs = cascade.Sampling(steps=n, sampler=args.sampler)
        deltas = cascade.resolve_sampling(spec, knobs)[0]
        out = cascade.run_stage(stage, knobs, tuple(x.shape), torch.Generator().manual_seed(args.seed), tokens, mask,
                                cond=low)
        print(f"| {cascade.resolve_sampler(spec, knobs)}, {n} {spec.step_schedule} steps | {deltas[0]:.4f} | "
              f"{measure(out):.1f} |")


if __name__ == "__main__":
    main()
