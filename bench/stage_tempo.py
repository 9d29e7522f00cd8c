"""Does each audio-to-audio stage keep a real clip's onsets? (which stage loses tempo)

    python bench/stage_tempo.py [--stages super-res,cascader,vocoder] [--clips 20] [--ckpt-dir checkpoints/toy]

--clips real fast and as many slow toy-corpus clips (seeded picks) go through one stage on their
real input, at its default sampler settings: the cascader gets the clip taken down to 3.2 kHz and
its first caption, the vocoder the clip's log-mel, super-res the clip taken down to 16 kHz (with
and without keep_band, cascade.py). Printed per stage: the share of the clips^2 fast/slow pairs
that audio_measures.onset_rate orders right at the stage's output, against the real clips' own share,
and the mean |onset-rate error| per clip against the real clip. For super-res also the plain
FFT up-sampling (the floor: what resampling alone moves) and the share of energy above 8 kHz.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cascade  # noqa: E402
import data  # noqa: E402
import text  # noqa: E402
from adherence import load_clip, measure, real_groups  # noqa: E402  (bench/, this script's folder)


def real_clips(corpus, n, rate, seed=0):
    """n fast then n slow real clips at `rate`, 4 s each, and their first captions."""
    rng = np.random.default_rng(seed)
    picks = [pool[i] for pool in real_groups(corpus)["tempo"] for i in rng.choice(len(pool), n, replace=False)]
    length = round(cascade.stage_spec("super-res", "toy").clip_seconds * rate)
    return torch.stack([load_clip(e, rate, length) for e in picks])[:, None], [e["captions"][0] for e in picks]


def onset_rates(x, rate):
    return np.array([measure("tempo", v[0].numpy(), rate) for v in x])


def report(name, rates, real, n):
    order = (rates[:n, None] > rates[None, n:]).mean()
    print(f"| {name} | {100 * order:.1f}% | {np.abs(rates - real).mean():.2f} |", flush=True)


def high_share(x, rate, cut=8000):
    spectrum = torch.fft.rfft(x[:, 0].double()).abs() ** 2
    return (spectrum[:, torch.fft.rfftfreq(x.shape[-1], 1 / rate) >= cut].sum() / spectrum.sum()).item()


def run(stage, knobs, shape, batch=8, **route):
    gen = torch.Generator().manual_seed(0)
    return torch.cat([cascade.run_stage(stage, knobs, (min(batch, shape[0] - i), *shape[1:]), gen,
                                        **{k: v[i:i + batch] for k, v in route.items()})
                      for i in range(0, shape[0], batch)])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stages", default="super-res,cascader,vocoder", help="comma-separated")
    p.add_argument("--clips", type=int, default=20, help="real clips of each tempo word")
    p.add_argument("--ckpt-dir", default="checkpoints/toy")
    p.add_argument("--corpus", default="toy_data/corpus")
    args = p.parse_args()
    stages = args.stages.split(",")
    for name in stages:
        if name not in ("super-res", "cascader", "vocoder"):
            p.error(f"--stages: {name!r} is not a stage with an audio input (super-res, cascader or vocoder)")
        if not os.path.isfile(os.path.join(args.ckpt_dir, f"{name}.pt")):
            p.error(f"missing checkpoint {os.path.join(args.ckpt_dir, name + '.pt')}")
    torch.set_num_threads(1)
    n = args.clips
    print("| stage, on real inputs | fast/slow pairs ordered | mean abs onset-rate error (1/s) |\n|---|---|---|")
    for name in stages:
        stage = cascade.StageModel(os.path.join(args.ckpt_dir, f"{name}.pt"))
        rate = stage.spec.sample_rate
        clips, captions = real_clips(args.corpus, n, rate)
        real = onset_rates(clips, rate)
        report(f"real clips ({rate} Hz)", real, real, n)
        if stage.spec.cond_rate:        # super-res and the cascader: the clip taken down and back up
            cond = cascade.low_fidelity(clips.double(), rate, stage.spec.cond_rate).float()
        if name == "super-res":
            report("FFT down to 16 kHz and back up", onset_rates(cond, rate), real, n)
            real_share = 100 * high_share(clips, rate)
            for keep in (0, 1):
                out = run(stage, cascade.Sampling(keep_band=keep), clips.shape, cond=cond)
                report(f"super-res, keep_band {keep} (energy above 8 kHz {100 * high_share(out, rate):.1f}%, "
                       f"real {real_share:.1f}%)", onset_rates(out, rate), real, n)
        elif name == "cascader":
            tokenizer, encoder = text.load_t5(stage.t5)
            ids, mask = tokenizer(captions, stage.spec.token_len)
            with torch.no_grad():
                emb = encoder(ids, mask).float()
            out = run(stage, cascade.Sampling(), clips.shape, cond=cond, text=emb, text_mask=mask)
            report("cascader (real 3.2 kHz input and caption)", onset_rates(out, rate), real, n)
        else:                           # 4 s at 16 kHz: the log-mel's 400 frames x 160 samples each
            mel = torch.stack([data.log_mel(c[0], rate) for c in clips])
            out = run(stage, cascade.Sampling(), clips.shape, aligned=mel)
            report("vocoder (real log-mel)", onset_rates(out, rate), real, n)


if __name__ == "__main__":
    main()
